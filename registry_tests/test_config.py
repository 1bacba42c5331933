"""load_config: safe YAML, inheritance, overrides, errors; every shipped config builds and runs."""
import glob
import os

import pytest
import torch
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins import ConfigError, load_config
from attn_plugins.config import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.yaml'), recursive=True))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('tag', ['!!python/object/apply:os.system ["touch {marker}"]',
                                 '!!python/object/new:os.system ["touch {marker}"]',
                                 '!!python/name:os.system', '!!python/module:os'])
def test_python_tags_never_run(tmp_path, tag):
    marker = tmp_path / 'PWNED'
    path = write(tmp_path, 'evil.yaml', f"model:\n  type: SE\n  x: {tag.format(marker=marker)}\n")
    with pytest.raises(ConfigError, match=r"evil.yaml:3: the YAML tag .*python.* is not allowed"):
        load_config(path)
    assert not marker.exists()


def test_python_tag_in_a_base_is_rejected_too(tmp_path):
    marker = tmp_path / 'PWNED'
    write(tmp_path, 'base.yaml', f'a: !!python/object/apply:os.system ["touch {marker}"]\n')
    path = write(tmp_path, 'child.yaml', "_base_: base.yaml\nb: 1\n")
    with pytest.raises(ConfigError, match='base.yaml:1'):
        load_config(path)
    assert not marker.exists()


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, 'bad.yaml', "model:\n  type: SE\n   channels: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: invalid YAML"):
        load_config(path)


def test_inheritance_delete_and_overrides(tmp_path):
    write(tmp_path, 'base.yaml', "model:\n  type: timm/resnet18\n  head: {a: 1, b: 2}\nlr: 0.1\n")
    path = write(tmp_path, 'child.yaml', "_base_: [base.yaml]\nmodel:\n  head: {_delete_: true, c: 3}\n")
    cfg = load_config(path, ['lr=0.5', 'model.head.d=[1,2]'])
    assert cfg.model.type == 'timm/resnet18' and cfg.model.head == dict(c=3, d=[1, 2]) and cfg.lr == 0.5
    assert cfg.filename == path and set(cfg.keys()) == {'model', 'lr'}
    cfg = load_config(path, {'model.type': 'timm/resnet26'})
    assert cfg.model.type == 'timm/resnet26'
    with pytest.raises(ConfigError, match='expected KEY=VALUE'):
        load_config(path, ['lr'])


def test_duplicate_keys_among_bases_are_rejected_as_in_mmengine(tmp_path):
    write(tmp_path, 'a.yaml', "x: 1\n")
    write(tmp_path, 'b.yaml', "x: 2\n")
    with pytest.raises(ConfigError, match=r"both define \['x'\]"):
        load_config(write(tmp_path, 'c.yaml', "_base_: [a.yaml, b.yaml]\n"))


def test_openmmlab_package_base(tmp_path):
    path = write(tmp_path, 'c.yaml', "_base_: mmseg::_base_/models/danet_r50-d8.py\nmodel:\n  decode_head: {type: DualAttentionHead}\n")
    cfg = load_config(path)
    assert cfg.model.decode_head.type == 'DualAttentionHead' and cfg.model.decode_head.pam_channels == 64
    with pytest.raises(ConfigError, match="not found in the installed mmseg package"):
        load_config(write(tmp_path, 'd.yaml', "_base_: mmseg::_base_/models/nope.py\n"))


def test_py_configs_and_mmdet_bases(tmp_path):
    import mmseg
    py = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs', '_base_', 'models', 'danet_r50-d8.py')
    assert load_config(py, ['model.decode_head.channels=128']).model.decode_head.channels == 128
    path = write(tmp_path, 'det.yml', "_base_: mmdet::_base_/models/faster-rcnn_r50_fpn.py\n"
                 "model:\n  backbone:\n    plugins:\n      - {cfg: {type: CBAM}, stages: [false, true, true, true], "
                 "position: after_conv3}\n")
    cfg = load_config(path)
    assert cfg.model.type == 'FasterRCNN' and cfg.model.backbone.plugins[0]['cfg']['type'] == 'CBAM'
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    backbone = MODELS.build(cfg.model.backbone)
    assert isinstance(backbone.layer2[0].cbam, attn_plugins.CBAM) and not backbone.layer1[0].after_conv3_plugin_names


def test_yaml_model_with_plugins(tmp_path):
    path = write(tmp_path, 'm.yaml', """model:
  type: timm/resnet50
  plugins:
    - {type: CBAM, where: "layer*.*", position: "after:bn3"}
    - {type: NonLocal, where: "layer3.[1,3,5]", position: after}
""")
    model = build_model(load_config(path).model)
    assert len(model.attn_plugins_report) == 19
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_missing_file_and_extension():
    with pytest.raises(ConfigError, match='not found'):
        load_config('nope.yaml')
    with pytest.raises(ConfigError, match=r'expected a \.yaml'):
        load_config('model.json')


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_builds_and_runs(path):
    cfg = load_config(path)
    assert cfg.custom_imports['imports'] == ['attn_plugins']
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    from mmseg.registry import MODELS
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = None                    # never download in tests
    model = MODELS.build(model_cfg)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    if isinstance(logits, tuple):                  # DANet heads: (sum, PAM, CAM) logits
        assert len(logits) == 3
        logits = logits[0]
    assert logits.shape[:2] == (1, 19)

"""load_config: safe YAML, inheritance, overrides, errors; every shipped config builds and runs."""
import glob
import importlib.util
import os
import signal
import sys
import time

import pytest
import torch
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins import ConfigError, load_config
from attn_plugins.config import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.yaml'), recursive=True))
# Segmentation (Cityscapes) configs; det / video / gaze / LTPA configs are built in their own test files.
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'seg', '**', '*.yaml'), recursive=True))


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


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_loads_safely(path):
    """Every shipped config (any task) loads with the safe loader, untrusted, and names a model."""
    cfg = load_config(path)
    if '_base_' not in path.split(os.sep):          # shared bases may hold only data settings
        assert cfg.get('model', {}).get('type'), f'{path}: no model.type'


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


# --- what a YAML config may not do unless trusted (--trust-config / trust=True) -----------------------

def leaves_marker(tmp_path, filename, extra=''):
    """Write a Python file that creates a marker file when it runs; return the marker path."""
    marker = tmp_path / f'{filename}.RAN'
    (tmp_path / filename).write_text(f"open({str(marker)!r}, 'w').close()\n{extra}")
    return marker


def test_a_py_base_is_refused_unless_trusted(tmp_path):
    marker = leaves_marker(tmp_path, 'base.py', 'lr = 0.1\n')
    path = write(tmp_path, 'c.yaml', "a: 1\n_base_: [base.py]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: _base_ 'base.py' is a Python config .*--trust-config"):
        load_config(path)
    assert not marker.exists()
    assert load_config(path, trust=True).lr == 0.1 and marker.exists()


def test_custom_imports_outside_the_allow_list_never_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))           # e.g. the working directory of a notebook
    marker = leaves_marker(tmp_path, 'shipped_helper.py')
    path = write(tmp_path, 'c.yaml', "custom_imports: {imports: [attn_plugins.modules, shipped_helper]}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: custom_imports 'shipped_helper'.*--trust-config"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"custom_imports 'shipped_helper'.*--trust-config"):
        load_config(write(tmp_path, 'd.yaml', "a: 1\n"), ['custom_imports.imports=[shipped_helper]'])
    assert not marker.exists()
    try:
        load_config(path, trust=True)
        assert marker.exists()
    finally:
        sys.modules.pop('shipped_helper', None)


@pytest.mark.parametrize('entry', [
    'model: {type: os.system, command: "echo"}',                            # the registry calls os.system(command=...)
    'model: {type: mmengine.import_modules_from_strings, imports: [x]}',     # a function of a trusted package
    'model: {type: shipped_registry}',                                      # imported when no registry has the name
    'default_scope: shipped_registry',                                      # imports shipped_registry.registry
    'model: {_scope_: shipped_registry, type: EncoderDecoder}',
    'optim_wrapper: {constructor: shipped_registry.Builder}'])
def test_registry_names_that_import_or_call_other_code_are_refused(tmp_path, monkeypatch, entry):
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = leaves_marker(tmp_path, 'shipped_registry.py')
    path = write(tmp_path, 'c.yaml', f"a: 1\n{entry}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: .*--trust-config"):
        load_config(path)
    assert not marker.exists() and 'shipped_registry' not in sys.modules


def test_mmengine_own_yaml_loader_runs_python_tags(tmp_path):
    """What the README says of mmseg's and mmdet's tools/train.py: mmengine's Config.fromfile runs YAML tags."""
    from mmengine.config import Config
    marker = tmp_path / 'RAN'
    Config.fromfile(write(tmp_path, 'c.yaml', f'a: !!python/object/apply:os.system ["touch {marker}"]\n'))
    assert marker.exists()
    with pytest.raises(ConfigError, match='c.yaml:1: the YAML tag'):
        load_config(str(tmp_path / 'c.yaml'))


def test_the_registry_name_check_guards_a_real_shell_command(tmp_path):
    """What the check above prevents: mmengine's registry calls os.system for `type: os.system`."""
    from mmengine.registry import MODELS
    marker = tmp_path / 'RAN'
    path = write(tmp_path, 'c.yaml', f"model: {{type: os.system, command: 'touch {marker}'}}\n")
    with pytest.raises(ConfigError, match=r"'os.system'.*--trust-config"):
        load_config(path)
    MODELS.build(load_config(path, trust=True).model)
    assert marker.exists()


def test_keys_that_would_become_code_in_the_dumped_py_config_are_refused(tmp_path):
    marker = tmp_path / 'RAN'
    key = f"x': __import__('os').system('touch {marker}'), 'y"
    path = write(tmp_path, 'c.yaml', f'model:\n  {{"{key}": 1}}\n')
    with pytest.raises(ConfigError, match=r"c.yaml:2: key .*quotes, backslashes.*--trust-config"):
        load_config(path)
    from mmengine.config import Config        # why: mmengine writes the key as-is into the .py it dumps
    load_config(path, trust=True).dump(str(tmp_path / 'dumped.py'))
    Config.fromfile(str(tmp_path / 'dumped.py'))
    assert marker.exists()


def test_shipped_yaml_features_pass_the_checks(tmp_path):
    """Scoped registry names, OpenMMLab custom_imports and aliases that a real config uses load unchanged."""
    path = write(tmp_path, 'c.yaml', """custom_imports: {imports: [attn_plugins, mmseg.registry], allow_failed_imports: false}
default_scope: mmseg
norm: &norm {type: SyncBN, requires_grad: true}
model:
  type: EncoderDecoder
  backbone: {type: mmseg.ResNetV1c, norm_cfg: *norm, plugins: [{cfg: {type: attn_plugins.CBAM}, position: after_conv3}]}
  decode_head: {type: DualAttentionHead, norm_cfg: *norm}
optim_wrapper: {type: OptimWrapper, constructor: DefaultOptimWrapperConstructor}
collate_fn: {type: default_collate}
""")
    cfg = load_config(path)
    assert cfg.model.backbone.norm_cfg == cfg.model.decode_head.norm_cfg == dict(type='SyncBN', requires_grad=True)


def outside_setup(tmp_path):
    (tmp_path / 'outside').mkdir()
    secret = write(tmp_path / 'outside', 'secret.yaml', "password: hunter2\n")
    (tmp_path / 'cfg').mkdir()
    write(tmp_path / 'cfg', 'secret.txt', "password: hunter2\n")
    write(tmp_path / 'cfg', 'x.json', '{"password": "hunter2"}\n')
    os.symlink(secret, tmp_path / 'cfg' / 'link.yaml')
    return secret


@pytest.mark.parametrize('base, error, trusted', [
    ('{secret}', 'is an absolute path', True),
    ('~/secret.yaml', 'is an absolute path', False),
    ('../outside/secret.yaml', 'outside', True),
    ('link.yaml', 'outside', True),                                   # a symlink out of the tree
    ('x.json', 'not a YAML config', True),
    ('secret.txt', r'not a config file \(.yaml/.yml; .py/.json with --trust-config\)', False)])
def test_bases_stay_yaml_files_inside_the_config_tree(tmp_path, base, error, trusted):
    secret = outside_setup(tmp_path)
    path = write(tmp_path / 'cfg', 'c.yaml', f"_base_: {base.format(secret=secret)}\n")
    with pytest.raises(ConfigError, match=rf"c.yaml:1: _base_ .*{error}"):
        load_config(path)
    if trusted:
        assert load_config(path, trust=True).password == 'hunter2'
    else:
        with pytest.raises(ConfigError):
            load_config(path, trust=True)


def test_bases_may_reach_across_an_enclosing_configs_directory(tmp_path):
    """OpenMMLab's layout (configs/<model>/x.yaml inheriting configs/_base_/...) needs no trust."""
    (tmp_path / 'configs' / '_base_').mkdir(parents=True)
    (tmp_path / 'configs' / 'model').mkdir()
    write(tmp_path / 'configs' / '_base_', 'm.yaml', "lr: 0.1\n")
    write(tmp_path, 'secret.yaml', "password: hunter2\n")
    assert load_config(write(tmp_path / 'configs' / 'model', 'a.yaml', "_base_: ../_base_/m.yaml\n")).lr == 0.1
    with pytest.raises(ConfigError, match=r"b.yaml:1: _base_ '../../secret.yaml' resolves to .* outside"):
        load_config(write(tmp_path / 'configs' / 'model', 'b.yaml', "_base_: ../../secret.yaml\n"))


def test_package_bases_are_openmmlab_configs_inside_the_package(tmp_path, monkeypatch):
    import mmseg
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = leaves_marker(tmp_path, 'shipped_pkg.py')
    leaves_marker(tmp_path, 'evil.py')
    escape = os.path.relpath(str(tmp_path / 'evil.py'), os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs'))
    for base, error in [('shipped_pkg::x.py', "'shipped_pkg' is not one"),
                        (f'mmseg::{escape}', r"a package base is a .py config inside the package \(no absolute path, no '..'\)")]:
        path = write(tmp_path, 'c.yaml', f"_base_: {base}\n")
        with pytest.raises(ConfigError, match=rf"c.yaml:1: _base_ .*{error}.*--trust-config"):
            load_config(path)
    assert not marker.exists() and not (tmp_path / 'evil.py.RAN').exists()


def laughs(levels: int) -> str:
    """The 'billion laughs' YAML: each level lists the previous one 10 times."""
    names = 'abcdefghijklmnop'[:levels]
    lines = [f"a: &a [{', '.join(['lol'] * 10)}]"]
    lines += [f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]" for prev, cur in zip(names, names[1:])]
    return '\n'.join(lines) + '\n'


@pytest.mark.skipif(not hasattr(signal, 'setitimer'), reason='needs SIGALRM')
def test_billion_laughs_is_refused_fast(tmp_path):
    path = write(tmp_path, 'lol.yaml', laughs(9))                      # 10^9 values expanded

    def too_slow(*_):
        raise TimeoutError('load_config took more than 10 s on a 9-level billion laughs file')
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"lol.yaml:5: this value expands to more than 100,000 values "
                                              r"through YAML aliases.*--trust-config"):
            load_config(path)
        assert time.perf_counter() - start < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_alias_bound_is_lifted_by_trust_and_cycles_are_refused(tmp_path, monkeypatch):
    import attn_plugins.config as config
    monkeypatch.setattr(config, 'MAX_ALIAS_EXPANSION', 1000)
    path = write(tmp_path, 'lol.yaml', laughs(3))                      # 1 + 10 * 111 values at line 3
    with pytest.raises(ConfigError, match=r"lol.yaml:3: this value expands to more than 1,000 values"):
        load_config(path)
    assert len(load_config(path, trust=True).c) == 10
    with pytest.raises(ConfigError, match=r"loop.yaml:2: this value contains itself"):
        load_config(write(tmp_path, 'loop.yaml', "a: 1\nb: &b [1, *b]\n"), trust=True)


def test_tuple_tags_build_plain_tuples(tmp_path):
    path = write(tmp_path, 't.yaml', "scale: !!python/tuple [1333, 800]\nnested: !tuple [1, !tuple [2, 3], [4]]\n"
                                     "pipeline: [{type: Resize, scale: !!python/tuple [2048, 512]}]\n")
    cfg = load_config(path)
    assert type(cfg.scale) is tuple and cfg.scale == (1333, 800)
    assert cfg.nested == (1, (2, 3), [4]) and cfg.pipeline[0]['scale'] == (2048, 512)


@pytest.mark.parametrize('value', ['!!python/tuple {a: 1}', '!tuple 5', '[!!python/tuple [!!python/name:os.system ]]'])
def test_tuple_tags_hold_only_plain_values(tmp_path, value):
    with pytest.raises(ConfigError, match=r"t.yaml:2: .*(takes a sequence|is not allowed)"):
        load_config(write(tmp_path, 't.yaml', f"a: 1\nx: {value}\n"))


def test_mmengine_yaml_dump_round_trips(tmp_path):
    from mmengine.config import Config
    data = dict(model=dict(type='EncoderDecoder', size=(512, 1024), scales=[(1, 2), (3, (4, 5))]),
                crop=(512, 512), name='a', lr=0.01, flag=None)
    Config(data).dump(str(tmp_path / 'small.yaml'))
    assert '!!python/tuple' in (tmp_path / 'small.yaml').read_text()
    assert load_config(str(tmp_path / 'small.yaml')).to_dict() == data
    shipped = load_config(os.path.join(ROOT, 'configs', 'seg', 'danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml'))
    shipped.dump(str(tmp_path / 'danet.yaml'))
    assert load_config(str(tmp_path / 'danet.yaml')).to_dict() == shipped.to_dict()


def test_build_runner_is_safe_by_default_and_passes_trust(tmp_path):
    from attn_plugins.runner import build_runner
    marker = leaves_marker(tmp_path, 'base.py')
    path = write(tmp_path, 'c.yaml', "_base_: base.py\n")
    with pytest.raises(ConfigError, match=r"'base.py' is a Python config.*--trust-config"):
        build_runner(path, work_dir=str(tmp_path / 'w'))
    assert not marker.exists()
    with pytest.raises(Exception) as info:     # loaded (the marker), then the Runner finds no model
        build_runner(path, work_dir=str(tmp_path / 'w'), trust_config=True)
    assert marker.exists() and not isinstance(info.value, ConfigError)


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_pass_trust_config_to_the_runner(tool, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(f'_tool_{tool}', os.path.join(ROOT, 'tools', f'{tool}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = []

    def fake_build_runner(config, **kwargs):
        seen.append(kwargs.get('trust_config'))
        raise SystemExit(3)
    import attn_plugins.runner        # the tools run attn_plugins.cli, which calls runner.build_runner
    monkeypatch.setattr(attn_plugins.runner, 'build_runner', fake_build_runner)
    checkpoint = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {}}, checkpoint)
    argv = [CONFIGS[0]] + ([str(checkpoint)] if tool == 'test' else [])
    for flag in ([], ['--trust-config']):
        with pytest.raises(SystemExit):
            module.main(argv + flag)
    assert seen == [False, True]


def test_full_import_paths_to_classes_of_trusted_packages_are_refused(tmp_path):
    """A class of a trusted package can still run code: mmseg's MMSegInferencer reads (runs) the .py
    config named by its `model` argument, reached by its full import path."""
    from mmengine.registry import MODELS
    marker = tmp_path / 'RAN'
    write(tmp_path, 'payload.py', f"_ran = __import__('os').makedirs({str(marker)!r})\nmodel = dict(type='X')\n")
    path = write(tmp_path, 'c.yaml', "a: 1\nmodel: {type: mmseg.apis.MMSegInferencer, "
                                     f"model: {str(tmp_path / 'payload.py')!r}}}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: type 'mmseg.apis.MMSegInferencer': a full import path.*"
                                          r"--trust-config"):
        load_config(path)
    assert not marker.exists()
    assert load_config(write(tmp_path, 'd.yaml', "model: {type: mmseg.EncoderDecoder}\n")).model.type  # scoped: fine
    with pytest.raises(Exception):                # why: with trust, mmengine's registry builds it and runs the file
        MODELS.build(load_config(path, trust=True).model)
    assert marker.exists()

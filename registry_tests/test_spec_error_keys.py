"""Injector spec errors name the config key of the spec list they come from, as the user wrote it."""
import pytest
import torch.nn as nn

from attn_plugins import inject
from attn_plugins.cli import main, train_main
from attn_plugins.registry import ConfigError

# InjectAttention around a TimmBackbone: two spec lists, at model.plugins and model.module.plugins
CONFIG = """\
model:
  type: InjectAttention
  module:
    type: TimmBackbone
    model_name: resnet18
    out_indices: [3]
    plugins:
      - {{type: SE, where: layer1.0}}
      - {{type: SE, where: {inner}}}
  plugins:
    - {{type: CBAM, where: {outer}}}
"""


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1].split('error: ', 1)[1]


@pytest.mark.parametrize('inner, outer, key', [
    ('layer9.0', 'timm_model.layer2.0', 'model.module.plugins[1]'),
    ('layer2.0', 'timm_model.layer7.0', 'model.plugins[0]'),
])
def test_plan_names_the_config_key_of_a_bad_spec(tmp_path, capsys, inner, outer, key):
    path = tmp_path / 'bad.yaml'
    path.write_text(CONFIG.format(inner=inner, outer=outer))
    error = _error(capsys, ['plan', str(path)])
    assert error.startswith(f"{key}: pattern '{outer if key == 'model.plugins[0]' else inner}' matches no module")


def test_train_names_the_same_key_as_plan(tmp_path, capsys):
    path = tmp_path / 'bad.yaml'
    path.write_text(CONFIG.format(inner='layer9.0', outer='timm_model.layer2.0'))
    assert train_main([str(path), '--work-dir', str(tmp_path / 'w')], prog='train.py') == 2
    error = capsys.readouterr().err.strip().splitlines()[-1].split('error: ', 1)[1]
    assert error.startswith("model.module.plugins[1]: pattern 'layer9.0' matches no module")


def test_direct_inject_keeps_plugins_index():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match=r"^plugins\[1\]\.reductio: unknown option for SE"):
        inject(model, [{'type': 'SE', 'where': '0'}, {'type': 'SE', 'where': '0', 'stack': True, 'reductio': 2}])

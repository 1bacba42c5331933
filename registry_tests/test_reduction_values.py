"""A squeeze MLP's `reduction` must be > 0: 0 raised ZeroDivisionError from deep in the block (a
traceback from `attn-plugins plan` / train), a negative one silently gave a 1-channel MLP. Now a
spec says which plugin and option, in one line."""
import pytest

import attn_plugins
from attn_plugins.cli import main
from attn_plugins.registry import ConfigError


@pytest.mark.parametrize('block', ['SE', 'CBAM'])
@pytest.mark.parametrize('reduction', [0, -4])
def test_reduction_below_or_at_zero_is_a_config_error(block, reduction):
    with pytest.raises(ConfigError, match=rf"cannot build {block}\(channels=64, reduction={reduction}\): "
                                          rf"reduction: expected > 0, got {reduction}"):
        attn_plugins.build(dict(type=block, channels=64, reduction=reduction))
    assert attn_plugins.build(dict(type=block, channels=64, reduction=0.5)) is not None    # widening is allowed


def test_plan_names_the_plugin_of_a_zero_reduction(tmp_path, capsys):
    config = tmp_path / 'r.yaml'
    config.write_text("model:\n  type: timm/resnet18\n  plugins:\n"
                      "    - {type: SE, where: 'layer1.*', position: 'after:bn2', reduction: 0}\n")
    assert main(['plan', str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('attn-plugins plan: error: ')
    assert 'plugins[0]: cannot build SE(channels=64, reduction=0): reduction: expected > 0, got 0' in err

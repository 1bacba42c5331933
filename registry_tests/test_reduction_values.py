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


@pytest.mark.parametrize('block, option, value, message', [
    ('NonLocal', 'reduction', 0, 'reduction: expected > 0, got 0'),            # was ZeroDivisionError
    ('NonLocal', 'reduction', -1, 'reduction: expected > 0, got -1'),          # was a silent 1-wide block
    ('NonLocal', 'inter_channels', 0, 'inter_channels: expected a positive int, got 0'),  # was silently C // 2
    ('PositionAttention', 'reduction', 0, 'reduction: expected > 0, got 0'),
    ('DualAttention', 'qk_channels', -2, 'qk_channels: expected a positive int, got -2'),
    ('CBAM', 'spatial_kernel', 4, r'spatial_kernel: expected an odd positive int \(paper: 7\), got 4'),
])
def test_inner_widths_and_kernels_are_checked(block, option, value, message):
    """NonLocal / PAM inner widths and CBAM's spatial kernel: a clear error at build time. An even
    kernel built and then failed in forward with a shape mismatch naming no option."""
    with pytest.raises(ConfigError, match=rf"cannot build {block}\(channels=64, {option}={value}\): {message}"):
        attn_plugins.build(dict(type=block, channels=64, **{option: value}))

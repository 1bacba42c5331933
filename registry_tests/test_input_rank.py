"""One source for a block's input rank: the class's `input_rank`, read by its forward's channel
check and by `inject`'s check of the probed maps (`attn_plugins.registry.input_dims`)."""
import pytest
import torch
import torch.nn as nn

import attn_plugins
from attn_plugins import ConfigError, inject
from attn_plugins.registry import BLOCKS, input_dims

CASES = [('SE', {}), ('CBAM', {}), ('SpatialWeights', {}), ('PositionAttention', {}), ('ChannelAttention', {}),
         ('DualAttention', {}), ('NonLocal', {}), ('NonLocal', dict(dim=1)), ('NonLocal', dict(dim=3)),
         ('PyramidAttention', {}), ('PyramidAttention', dict(dim=3))]


def test_cases_cover_every_one_map_block():
    assert {name for name, _ in CASES} == set(attn_plugins.registry.IN_BLOCK_GATES)


@pytest.mark.parametrize('name,options', CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_forward_takes_the_rank_the_injector_requires(name, options):
    rank = input_dims(name, options)
    assert rank == {'ChannelAttention': 3, 'NonLocal': options.get('dim', 2) + 2,
                    'PyramidAttention': options.get('dim', 2) + 2}.get(name, 4)
    block = attn_plugins.build(dict(type=name, channels=8, **options)).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 8, *[4] * (rank - 2))).shape == (1, 8, *[4] * (rank - 2))
        with pytest.raises(ValueError, match=rf"at least {rank} dims|must be \(B, 8, "):
            block(torch.randn(1, 8, *[4] * (rank - 3)))


def test_the_declared_rank_governs_forward_and_inject(monkeypatch):
    """Changing the one declaration changes both checks (the registry keeps no copy of it)."""
    monkeypatch.setattr(BLOCKS['SE'], 'input_rank', staticmethod(lambda: 5), raising=False)
    with pytest.raises(ValueError, match=r"SE: expected input of shape \(B, 8, \.\.\.\) with at least 5 dims"):
        attn_plugins.build(dict(type='SE', channels=8))(torch.randn(1, 8, 4, 4))
    with pytest.raises(ConfigError, match=r"plugins\[0\]: SE needs 5-dimensional \(B, C, \.\.\.\) feature maps"):
        inject(nn.Sequential(nn.Conv2d(3, 8, 3)), [dict(type='SE', where='0')], example_input=torch.randn(1, 3, 8, 8))


def test_a_bad_dim_is_a_config_error_naming_the_spec_key():
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.dim: NonLocal cannot take dim='2'"):
        inject(nn.Sequential(nn.Conv2d(3, 8, 3)), [dict(type='NonLocal', dim='2', where='0')],
               example_input=torch.randn(1, 3, 8, 8))


def test_channel_error_reads_the_same_eager_and_scripted():
    block = attn_plugins.build(dict(type='SE', channels=8))
    x = torch.randn(2, 7, 4, 5)
    with pytest.raises(ValueError) as eager:
        block(x)
    with pytest.raises(torch.jit.Error) as scripted:
        torch.jit.script(block)(x)
    assert str(eager.value) == "SE: expected input of shape (B, 8, ...) with at least 4 dims, got (2, 7, 4, 5); " \
                               "set `channels` to the input's channel count"
    assert str(eager.value) in str(scripted.value)

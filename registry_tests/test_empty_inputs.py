"""Zero queries, zero keys, empty spatial maps: a correct empty result or a clear error, never a raw one."""
import pytest
import torch
import torch.nn.functional as F

from attn_plugins.modules._flash import chunked_concat_attention, flash_softmax_attention
from attn_plugins.modules.dual_attention import DualAttention
from attn_plugins.modules.non_local import NonLocal
from attn_plugins.modules.position_attention import PositionAttention
from attn_plugins.modules.pyramid_attention import PyramidAttention


def _inputs(num_queries, num_keys, batch=2, qk=4, cv=3):
    return (torch.randn(batch, num_queries, qk, requires_grad=True), torch.randn(batch, qk, num_keys, requires_grad=True),
            torch.randn(batch, cv, num_keys, requires_grad=True))


@pytest.mark.parametrize('num_keys', [5, 0])
def test_flash_zero_queries_is_empty_with_zero_gradients_like_sdpa(num_keys):
    query, key, value = _inputs(0, num_keys)
    out = flash_softmax_attention(query, key, value, scale=0.5, chunk=4)
    sdpa = F.scaled_dot_product_attention(query[:, None], key.transpose(1, 2)[:, None], value.transpose(1, 2)[:, None])
    assert out.shape == (2, 3, 0) == sdpa.squeeze(1).transpose(1, 2).shape
    out.sum().backward()
    for t in (query, key, value):      # every input in the graph (a block's parameters stay "used")
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert flash_softmax_attention(*_inputs(0, num_keys)).dtype == torch.bfloat16


def test_flash_zero_keys_is_a_clear_error():
    with pytest.raises(ValueError, match=r"flash_softmax_attention: softmax over zero keys.*\(2, 4, 0\), \(2, 3, 0\)"):
        flash_softmax_attention(*_inputs(5, 0))


def test_concat_zero_queries_and_zero_keys():
    value = torch.randn(2, 3, 5, requires_grad=True)
    a, b = torch.randn(2, 0, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    out = chunked_concat_attention(a, b, value, chunk=2)
    assert out.shape == (2, 3, 0)
    out.sum().backward()
    assert not b.grad.any() and not value.grad.any()
    # Σ_j over no keys is 0 (a sum, not a softmax: defined)
    out = chunked_concat_attention(torch.randn(2, 4), torch.randn(2, 0), torch.randn(2, 3, 0), chunk=2)
    assert out.shape == (2, 3, 4) and not out.any()


@pytest.mark.parametrize('shape', [(2, 16, 0, 5), (2, 16, 5, 0)])
def test_position_attention_on_an_empty_map_is_empty(shape):
    block = PositionAttention(16)
    x = torch.randn(*shape, requires_grad=True)
    out = block(x)
    assert out.shape == shape
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in block.parameters())
    with torch.no_grad():        # inference too (the no-grad dense path's row max needs a key)
        for blocks in (block.eval(), DualAttention(16).eval()):
            assert blocks(x).shape == shape


@pytest.mark.parametrize('make', [
    lambda: NonLocal(16, mode='gaussian'), lambda: NonLocal(16), lambda: NonLocal(16, sub_sample=True),
    lambda: NonLocal(16, mode='dot_product'), lambda: NonLocal(16, mode='concatenation'),
], ids=['gaussian', 'embedded', 'embedded-subsample', 'dot', 'concat'])
def test_non_local_on_an_empty_map_is_a_clear_error(make):
    block = make()
    for shape in [(2, 16, 0, 5), (2, 16, 5, 0)]:
        with pytest.raises(ValueError, match=rf"NonLocal: expected at least one position.*\({', '.join(map(str, shape))}\)"):
            block(torch.randn(*shape))
    with pytest.raises(ValueError, match=r"NonLocal: expected at least one position"):
        block.query_attention(torch.randn(1, 16, 0, 3), torch.tensor([0]))


def test_pyramid_attention_on_an_empty_map_is_a_clear_error():
    block = PyramidAttention(16, in_channels=[16, 8])
    with pytest.raises(ValueError, match=r"PyramidAttention: input 0: expected at least one position.*\(2, 16, 0, 4\)"):
        block([torch.randn(2, 16, 0, 4), torch.randn(2, 8, 2, 2)])
    with pytest.raises(ValueError, match=r"PyramidAttention: input 1: expected at least one position.*\(2, 8, 2, 0\)"):
        block([torch.randn(2, 16, 4, 4), torch.randn(2, 8, 2, 0)])

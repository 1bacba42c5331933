"""Generic behaviour of every block: gradients, identity at init, shapes, dtypes, layouts."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_plugins import modules as m
from blocks_zoo import (NAMES, SAME_SHAPE, activate, assert_chunked, chunking_modules, make, outputs,
                        set_chunk_rows)


@pytest.mark.parametrize('name', NAMES)
def test_gradcheck_float64(name):
    block = activate(make(name, 4)).double().eval()
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: outputs(block(t))[0], (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('name', ['PositionAttention', 'NonLocal', 'NonLocalConcat'])   # PyramidAttention: no N x N
def test_gradcheck_chunked_path(name, force_chunks, bmm_spy):
    block = activate(make(name, 4)).double().eval()
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    sizes = set_chunk_rows(block, x, rows=2)          # 15 queries: chunks of 2, the last of 1
    bmm_spy.shapes.clear()
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)
    assert_chunked(bmm_spy, sizes, rows=2)


@pytest.mark.parametrize('block', [
    m.PositionAttention(16), m.ChannelAttention(16), m.DualAttention(16),
    m.PyramidAttention(16, in_channels=[16]),
    *[m.NonLocal(16, mode=mode, sub_sample=s) for mode in m.non_local.MODES for s in (False, True)],
    m.NonLocal(16, norm=False), m.NonLocal(16, dim=3), m.NonLocal(16, dim=1)], ids=lambda b: type(b).__name__)
@pytest.mark.parametrize('training', [False, True])
def test_identity_at_init_is_exact(block, training):
    block.train(training)
    shape = {1: (2, 16, 12), 2: (2, 16, 6, 8), 3: (2, 16, 2, 4, 6)}[getattr(block, 'dim', 2)]
    x = torch.randn(*shape) * 3
    assert torch.equal(block(x), x)


def test_spatial_weights_start_near_one():
    block = m.SpatialWeights(64)
    block.record_attention = True
    block(torch.randn(2, 64, 7, 7).relu())
    assert torch.allclose(block.attention_map, torch.ones_like(block.attention_map), atol=0.02)


@pytest.mark.parametrize('name', ['PositionAttention', 'NonLocal', 'NonLocalConcat', 'NonLocalGaussian',
                                  'DualAttention'])
def test_chunked_equals_dense_formula(name, force_chunks, bmm_spy):
    block = activate(make(name, 8)).eval()
    x = torch.randn(2, 8, 9, 11)
    sizes = set_chunk_rows(block, x, rows=7)          # 99 queries: 14 chunks of 7 and one of 1
    bmm_spy.shapes.clear()
    with torch.no_grad():
        chunked = block(x)
        assert_chunked(bmm_spy, sizes, rows=7)
        for mod in chunking_modules(block):
            mod.record_attention = True   # the dense path that keeps the N x N map
        dense = block(x)
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('block', [m.PositionAttention(8), m.NonLocal(8), m.NonLocal(8, mode='concatenation')],
                         ids=lambda b: getattr(b, 'mode', type(b).__name__))
def test_chunks_above_the_real_dense_limit(block, bmm_spy, ours_attention):
    """No monkeypatching: 46x46 positions give 2116² score elements, above DENSE_LIMIT_ELEMENTS."""
    from attn_plugins.modules import _helpers
    block = activate(block).eval()
    x = torch.randn(1, 8, 46, 46)
    assert 2116 ** 2 > _helpers.DENSE_LIMIT_ELEMENTS
    block.chunk_elements = 500 * 2116                 # 500 query rows per chunk: 5 chunks
    with torch.no_grad():
        chunked = block(x)
        assert_chunked(bmm_spy, [(2116, 2116)], rows=500)
        block.record_attention = True
        dense = block(x)
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('shape', [(1, 8, 1, 1), (1, 8, 5, 3), (3, 8, 7, 1), (2, 8, 13, 9)])
def test_shapes_batch1_odd_and_1x1(name, shape):
    block = activate(make(name, 8)).eval()
    x = torch.randn(*shape)
    y = outputs(block(x))
    if name in SAME_SHAPE:
        assert y[0].shape == x.shape and torch.isfinite(y[0]).all()
    else:
        assert y[0].shape == (shape[0], 8) and y[1].shape == (shape[0], 1, *shape[2:])
        if 'Sigmoid' not in name:
            torch.testing.assert_close(y[1].flatten(1).sum(1), torch.ones(shape[0]))


@pytest.mark.parametrize('name', NAMES)
def test_bf16_autocast_close_to_fp32(name):
    block = activate(make(name, 8)).eval()
    x = torch.randn(2, 8, 6, 5)
    ref = outputs(block(x))[0]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = outputs(block(x))[0]
    assert torch.isfinite(low.float()).all()
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize('name', NAMES)
def test_channels_last(name):
    block = activate(make(name, 8)).eval()
    x = torch.randn(2, 8, 6, 5)
    ref = outputs(block(x))[0]
    block = block.to(memory_format=torch.channels_last)
    out = outputs(block(x.to(memory_format=torch.channels_last)))[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_jit_trace(name):
    block = activate(make(name, 8)).eval()
    x = torch.randn(2, 8, 6, 5)
    traced = torch.jit.trace(block, (x,), check_trace=False)
    torch.testing.assert_close(outputs(traced(x))[0], outputs(block(x))[0])


def test_record_attention_exposes_maps():
    x = torch.randn(1, 16, 4, 6)
    expected = {m.SE(16): (1, 16, 1, 1), m.CBAM(16): (1, 1, 4, 6), m.SpatialWeights(16): (1, 1, 4, 6),
                m.PositionAttention(16): (1, 24, 24), m.ChannelAttention(16): (1, 16, 16),
                m.NonLocal(16, sub_sample=True): (1, 24, 6), m.PyramidAttention(16): (1, 1, 4, 6)}
    for block, shape in expected.items():
        assert block.attention_map is None
        block(x)
        assert block.attention_map is None, 'no map is kept unless asked'
        block.record_attention = True
        block(x)
        assert tuple(block.attention_map.shape) == shape, type(block).__name__


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 24), height=st.integers(1, 9), width=st.integers(1, 9), batch=st.integers(1, 3),
       name=st.sampled_from(SAME_SHAPE))
def test_property_output_shape_equals_input(channels, height, width, batch, name):
    block = activate(make(name, channels)).eval()
    x = torch.randn(batch, channels, height, width)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@settings(max_examples=15, deadline=None)
@given(dim=st.sampled_from([1, 2, 3]), mode=st.sampled_from(list(m.non_local.MODES)), sub=st.booleans(),
       size=st.integers(2, 6), channels=st.integers(2, 12))
def test_property_nonlocal_any_dim(dim, mode, sub, size, channels):
    block = activate(m.NonLocal(channels, dim=dim, mode=mode, sub_sample=sub)).eval()
    x = torch.randn(1, channels, *([size] * dim))
    assert block(x).shape == x.shape


def test_wrong_channels_error_names_the_block():
    with pytest.raises(ValueError, match=r'CBAM: expected input of shape \(B, 32'):
        m.CBAM(32)(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match='expected 2 feature maps'):
        m.PyramidAttention(8, in_channels=[8, 4])([torch.randn(1, 8, 4, 4)])

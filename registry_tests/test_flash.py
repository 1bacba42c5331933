"""The memory-bounded softmax attention under autograd (`_flash.FlashSoftmaxAttention`, used by
`softmax_attention` and so by PositionAttention and the NonLocal softmax modes): gradients equal
the dense formula, the backward recomputes only each chunk's scores (no softmax forward and
backward, as checkpointing ran), autograd keeps no N x N map, and bf16 autocast stays close to fp32."""
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attn_plugins.modules import _helpers
from attn_plugins.modules._helpers import softmax_attention
from attn_plugins.modules._flash import BACKWARD_BLOCK_FACTOR
from conftest import OpLog

B, NQ, NK, CK, CV = 2, 23, 19, 4, 7
ROWS = 6                      # query rows per chunk: 4 chunks (6, 6, 6, 5)


def dense(query, key, value, scale):
    return torch.bmm(value, torch.softmax(scale * torch.bmm(query, key), dim=-1).transpose(1, 2))


def inputs(dtype=torch.float64, nq=NQ, nk=NK, ck=CK, cv=CV, requires_grad=True):
    """Channels-first views as the blocks make them (query is a transposed view)."""
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(B, ck, nq, generator=gen, dtype=dtype).transpose(1, 2)
    key = torch.randn(B, ck, nk, generator=gen, dtype=dtype)
    value = torch.randn(B, cv, nk, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (query, key, value)]


def test_gradcheck_float64_several_chunks(force_chunks, bmm_spy):
    query, key, value = inputs()
    fn = lambda q, k, v: softmax_attention(q, k, v, scale=0.7, chunk_elements=ROWS * NK)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (query, key, value))
    rows = Counter(a[1] for a, b in bmm_spy.shapes if a[1:] == (a[1], CK) and b == (B, CK, NK))
    assert set(rows) == {ROWS, NQ % ROWS} and sum(rows.values()) >= 4, f'query chunks seen: {rows}'


@pytest.mark.parametrize('scale', [1.0, 0.35])
def test_backward_recomputes_only_the_scores(force_chunks, scale):
    """Backward FLOPs are the dense backward's (dV, dP, dQ, dK) plus one Q K product per key block,
    with one channel more in Q K and dP (they bring −max and −rowsum(dO ∘ O) in): the
    forward's V Pᵀ product and softmax are not re-run (checkpointing re-ran the softmax)."""
    query, key, value = inputs(torch.float32)
    out = softmax_attention(query, key, value, scale=scale, chunk_elements=ROWS * NK)
    with OpLog() as log:
        out.backward(torch.randn_like(out))
    cols = ROWS * NK // NQ           # key columns per block in float32: as many scores as a query chunk
    flops = sum(2 * a[0] * a[1] * a[2] * b[2] for a, b in log.bmms())
    assert flops == 2 * B * NQ * NK * (2 * CV + 3 * CK + 2), log.bmms()
    score_products = [b[2] for a, b in log.bmms() if a == (B, NQ, CK + 1) and b[1] == CK + 1]
    assert sorted(score_products) == sorted([cols] * (NK // cols) + [NK % cols]), log.bmms()
    assert not any(a == (B, CV, NK) and b[2] != CV for a, b in log.bmms()), 'V Pᵀ was recomputed'
    assert not any('softmax' in name for name, _, _ in log.calls)
    assert sum(name.rstrip('_') in ('exp', 'exp2') for name, _, _ in log.calls) == len(score_products), 'one exp pass per block'
    assert 'CheckpointFunction' not in type(out.grad_fn).__name__


@pytest.mark.parametrize('needs', ['qkv', 'q', 'k', 'v', 'kv'])
def test_equal_to_dense_fp32(force_chunks, needs):
    """Outputs and every gradient equal the dense formula in fp32, also when only some inputs need one."""
    query, key, value = inputs(torch.float32, nq=64, nk=48, ck=8, cv=16, requires_grad=False)
    for name, t in zip('qkv', (query, key, value)):
        t.requires_grad_(name in needs)
    grad = torch.randn(B, 16, 64)
    out = softmax_attention(query, key, value, scale=0.5, chunk_elements=10 * 48)
    want = dense(query, key, value, 0.5)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    wanted = [t for t in (query, key, value) if t.requires_grad]
    grad_before = grad.clone()
    got_grads = torch.autograd.grad(out, wanted, grad)
    assert torch.equal(grad, grad_before), 'backward changed the incoming gradient'
    for got, ref in zip(got_grads, torch.autograd.grad(want, wanted, grad)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def saved(fn):
    """fn()'s result and (shape, dtype, bytes) of each distinct storage autograd saved for backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.dtype, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, list(storages.values())


def test_saves_qkv_output_and_two_statistics_per_query(force_chunks):
    """Training keeps Q, K, V, O (K and V the inputs themselves, no augmented copies) and two float32
    statistics per query (row max, 1 / row sum): O(N·C), no chunk of scores."""
    nq = nk = 400
    query, key, value = inputs(torch.float32, nq=nq, nk=nk, ck=8, cv=16)
    out, kept = saved(lambda: softmax_attention(query, key, value, chunk_elements=50 * nk))
    expected = sum(t.numel() * 4 for t in (query, key, value, out)) + 2 * B * nq * 4
    assert sum(nbytes for _, _, nbytes in kept) == expected, kept
    assert [k for k in kept if k[0] == (B, nq)] == [((B, nq), torch.float32, B * nq * 4)] * 2, kept
    _, dense_kept = saved(lambda: dense(query, key, value, 1.0))
    assert sum(nbytes for _, _, nbytes in dense_kept) >= B * nq * nk * 4, 'the hooks see a dense map'


def test_bf16_autocast_close_to_fp32(force_chunks):
    """Under CPU bf16 autocast the matmuls run in bf16 and the statistics in float32; output and
    gradients stay within bf16 rounding of the fp32 result. Measured here (PAM-like: Ck=8,
    Cv=32, 1024 x 1024, 4 chunks), max error / max |fp32 value|: output 1.4%, dQ 1.3%, dK 0.9%,
    dV 0.8%; the dense formula under the same autocast (as mmseg's PAM): 1.6%, 1.9%, 1.4%, 1.0%."""
    query, key, value = inputs(torch.float32, nq=1024, nk=1024, ck=8, cv=32)
    grad = torch.randn(B, 32, 1024, generator=torch.Generator().manual_seed(4))
    ref = dense(query, key, value, 0.3)
    ref_grads = torch.autograd.grad(ref, (query, key, value), grad)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, kept = saved(lambda: softmax_attention(query, key, value, scale=0.3, chunk_elements=256 * 1024))
    assert out.dtype == torch.bfloat16
    assert Counter(dtype for _, dtype, _ in kept) == {torch.bfloat16: 4, torch.float32: 2}, kept
    grads = torch.autograd.grad(out, (query, key, value), grad.to(out.dtype))
    errors = {}
    for name, got, want in zip(['out', 'dQ', 'dK', 'dV'], (out, *grads), (ref, *ref_grads)):
        assert got.dtype == want.dtype or name == 'out'
        errors[name] = ((got.float() - want).abs().max() / want.abs().max()).item()
    assert max(errors.values()) < 0.03, errors


class BmmLayouts(TorchDispatchMode):
    """Records (dtype, operand layouts) of every bmm: 'plain' (contiguous), 'transposed' (its last
    two dims transposed are contiguous) or 'strided' (anything else)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == 'bmm':
            layouts = ['plain' if t.is_contiguous() else 'transposed' if t.transpose(-1, -2).is_contiguous()
                       else 'strided' for t in args[:2]]
            self.calls.append((args[0].dtype, tuple(args[0].shape), tuple(args[1].shape), *layouts))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('needs', ['qkv', 'v'])
def test_bf16_bmm_operands_need_no_copy(force_chunks, needs):
    """A 16-bit bmm on the CPU (oneDNN) copies each operand that is neither contiguous nor
    transposed-contiguous whole, on every call: V for each query chunk in forward and dO for each
    key block in backward were copied so (slices of the augmented [V; 1] and [dO; −rowsum]), as
    many bytes as the score chunks themselves. Every bmm of forward and backward gets its operands
    in one of the two layouts, queries passed as the blocks make them (a transposed view)."""
    query, key, value = inputs(torch.float32, nq=64, nk=48, ck=8, cv=16, requires_grad=False)
    for name, t in zip('qkv', (query, key, value)):
        t.requires_grad_(name in needs)
    with BmmLayouts() as log:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = softmax_attention(query, key, value, scale=0.5, chunk_elements=10 * 48)
        out.backward(torch.randn(out.shape, dtype=out.dtype))
    assert len(log.calls) >= 2 * 7 + 7 * (1 + 4 * (needs == 'qkv')), log.calls   # 7 chunks, 7 key blocks (Ck = 8)
    assert {dtype for dtype, *_ in log.calls} == {torch.bfloat16}, log.calls
    assert not [call for call in log.calls if 'strided' in call], log.calls


def test_scripted_block_still_trains(force_chunks):
    """TorchScript cannot run an autograd.Function: a scripted PositionAttention trains on its chunk path."""
    from attn_plugins import modules as m
    from blocks_zoo import activate
    block = activate(m.PositionAttention(8, chunk_elements=9 * 36)).train()
    scripted = torch.jit.script(block)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    ours = torch.autograd.grad(block(x).square().sum(), x)[0]
    theirs = torch.autograd.grad(scripted(x).square().sum(), x)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_bad_shapes_name_the_function():
    from attn_plugins.modules._flash import flash_softmax_attention
    query, key, value = inputs(torch.float32)
    with pytest.raises(ValueError, match=r'flash_softmax_attention: expected query \(B, Nq, Ck\)'):
        flash_softmax_attention(query, key.transpose(1, 2), value)
    with pytest.raises(ValueError, match='chunk must be >= 1'):
        flash_softmax_attention(query, key, value, chunk=0)


def test_default_path_is_dense_below_the_limit():
    """Small maps stay on the plain dense autograd path (no chunking), as before."""
    query, key, value = inputs(torch.float32)
    assert NQ * NK <= _helpers.DENSE_LIMIT_ELEMENTS
    out = softmax_attention(query, key, value)
    assert type(out.grad_fn).__name__ == 'BmmBackward0'


def test_training_chunks_are_capped(force_chunks, monkeypatch, bmm_spy):
    """Under autograd a chunk holds at most FLASH_CHUNK_ELEMENTS scores per sample (smaller chunks
    ran faster), whatever larger `chunk_elements` allows; inference keeps `chunk_elements`."""
    monkeypatch.setattr(_helpers, 'FLASH_CHUNK_ELEMENTS', 5 * NK)
    query, key, value = inputs(torch.float32)
    softmax_attention(query, key, value, chunk_elements=ROWS * NK)
    assert {a[1] for a, b in bmm_spy.shapes if b == (B, CK, NK)} == {5, NQ % 5}
    bmm_spy.shapes.clear()
    with torch.no_grad():
        softmax_attention(query, key, value, chunk_elements=ROWS * NK)
    assert {a[1] for a, b in bmm_spy.shapes if b == (B, CK, NK)} == {ROWS, NQ % ROWS}


def concat_dense(a, b, value):
    return torch.bmm(value, torch.relu(b[:, :, None] + a[:, None, :]))


def test_concat_gradcheck_float64_several_chunks():
    from attn_plugins.modules._flash import chunked_concat_attention
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(B, NQ, generator=gen, dtype=torch.float64)
    b = torch.randn(B, NK, generator=gen, dtype=torch.float64)
    value = torch.randn(B, CV, NK, generator=gen, dtype=torch.float64)
    args = [t.requires_grad_() for t in (a, b, value)]
    assert torch.autograd.gradcheck(lambda *t: chunked_concat_attention(*t, chunk=ROWS), args)
    torch.testing.assert_close(chunked_concat_attention(*args, chunk=ROWS), concat_dense(*args))


def test_concat_training_recomputes_only_the_map(force_chunks):
    """NonLocal concatenation under autograd: gradients equal the dense formula, backward does the two
    products of a dense backward (dV, dZ) only, and autograd saves no chunk of the map."""
    from attn_plugins import modules as m
    from blocks_zoo import activate
    block = activate(m.NonLocal(8, mode='concatenation', chunk_elements=10 * 100)).double().train()
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64, requires_grad=True)
    out, kept = saved(lambda: block(x))
    assert not any(len(s) == 3 and 100 in s[1:] and 10 in s[1:] for s, _, _ in kept), kept   # no (Nk x 10) chunk
    with OpLog() as log:
        out.square().sum().backward()
    inter = block.inter_channels
    # not the a / b projections, not θ, φ, g or W_z (products with the block's 8 channels, `pointwise_convs`)
    attention_bmms = [(a, b) for a, b in log.bmms() if min(a[1:] + b[2:]) > 1 and block.channels not in a[1:] + b[1:]]
    assert sum(2 * a[0] * a[1] * a[2] * b[2] for a, b in attention_bmms) == 2 * (2 * 2 * inter * 100 * 100)
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    block.record_attention = True
    block(x).square().sum().backward()
    for got, want in zip(grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_concat_bf16_autocast_close_to_fp32(force_chunks):
    from attn_plugins.modules._flash import chunked_concat_attention
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(B, 300, generator=gen), torch.randn(B, 200, generator=gen)
    value = torch.randn(B, 16, 200, generator=gen)
    args = [t.requires_grad_() for t in (a, b, value)]
    grad = torch.randn(B, 16, 300)
    ref = concat_dense(*args)
    ref_grads = torch.autograd.grad(ref, args, grad)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = chunked_concat_attention(*args, chunk=64)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out, args, grad.to(out.dtype))
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert got.shape == want.shape
        assert ((got.float() - want).abs().max() / want.abs().max()).item() < 0.03


def test_bf16_dq_widened_in_row_groups_is_the_same(force_chunks, monkeypatch):
    """Under bf16 each key block's dQ product is widened into float32 `WIDEN_ROWS` queries at a time
    (a small buffer instead of a whole float32 dQ): any group size gives the same gradients, bit for bit."""
    from attn_plugins.modules import _flash
    query, key, value = inputs(torch.float32, nq=40, nk=48, ck=8, cv=16)
    grad = torch.randn(B, 16, 40)

    def grads():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = softmax_attention(query, key, value, scale=0.5, chunk_elements=10 * 48)
        return torch.autograd.grad(out, (query, key, value), grad.to(out.dtype))

    whole = grads()
    monkeypatch.setattr(_flash, 'WIDEN_ROWS', 7)                    # 40 queries: groups of 7, the last of 5
    for got, want in zip(grads(), whole):
        assert torch.equal(got, want)


def test_bf16_backward_key_blocks_bounded_by_factor_times_a_chunk(force_chunks):
    """Backward's transient score blocks stay O(chunk · Nk): in fp32 a key block holds as many scores
    as a forward chunk; in bf16 `BACKWARD_BLOCK_FACTOR` (2) times as many where Ck >= 128 (dQ's
    widening passes weigh), one chunk's at a smaller Ck (PAM's 64); never the whole map."""
    from attn_plugins.modules._flash import WIDE_BLOCKS_MIN_QK
    assert BACKWARD_BLOCK_FACTOR == 2 and WIDE_BLOCKS_MIN_QK == 128
    widths = {}
    for ck in (8, 128):
        query, key, value = inputs(torch.float32, nq=64, nk=48, ck=ck, cv=16)
        for name, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
            with torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32):
                out = softmax_attention(query, key, value, scale=0.5, chunk_elements=10 * 48)   # 10-query chunks
            with OpLog() as log:
                out.backward(torch.randn(out.shape, dtype=out.dtype))
            rows = ck + (name == 'fp32')    # the scores' product: [Q | −m] [K; 1] in fp32, Q K in bf16
            widths[name, ck] = sorted(b[2] for a, b in log.bmms() if a == (B, 64, rows) and b[1] == rows)
    one_chunk = [6] + [7] * 6                                       # 10 · 48 // 64 = 7 keys: 448 scores <= 480
    assert widths['fp32', 8] == widths['fp32', 128] == widths['bf16', 8] == one_chunk, widths
    assert widths['bf16', 128] == [3] + [15] * 3, widths             # 2 · 10 · 48 // 64
    assert max(widths['bf16', 128]) * 64 <= BACKWARD_BLOCK_FACTOR * 10 * 48
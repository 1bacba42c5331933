"""Training memory of the blocks with an N x N interaction: what autograd keeps for the backward
pass (counted with saved-tensor hooks) stays far below one N x N map in every mode, and the
output and gradients equal the dense formula (the `record_attention` path, which keeps the map).

The chunked paths run in `_flash`'s autograd functions, which save their inputs, output and
per-query statistics through the same hooks: everything autograd saves is counted, by unique storage. Float64, so
that the chunked and dense gradients agree to rounding (in fp32 some, e.g. a key bias under a
softmax, are 0 in exact arithmetic and differ by noise)."""
import pytest
import torch

from attn_plugins import modules as m
from blocks_zoo import activate

SIDE = 46                    # N = 2116: N x N = 4.5M elements, above the dense limit, so the default path chunks
N = SIDE * SIDE
MAP_BYTES = N * N * 8        # one float64 N x N map (36 MB)
CHUNK = N * N // 16          # 16 query chunks


def saved_bytes(fn):
    """fn()'s result and the bytes of the distinct storages autograd saved for backward."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


class Pyramid(torch.nn.Module):
    def __init__(self, c, **kw):
        super().__init__()
        self.block = m.PyramidAttention(c, in_channels=[c, c], **kw)

    def forward(self, x):
        return self.block([x, torch.nn.functional.avg_pool2d(x, 2)])


BLOCKS = {
    **{f'NonLocal-{mode}': (lambda mode=mode: m.NonLocal(8, mode=mode, chunk_elements=CHUNK))
       for mode in m.non_local.MODES},
    'PositionAttention': lambda: m.PositionAttention(8, chunk_elements=CHUNK),
    'DualAttention': lambda: m.DualAttention(8, chunk_elements=CHUNK),
    'PyramidAttention': lambda: Pyramid(8),
}


def run(block, x):
    out, nbytes = saved_bytes(lambda: block(x))
    out.square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)
    return out.detach(), grads, nbytes


def set_record(block, value):
    for mod in block.modules():
        if hasattr(mod, 'record_attention'):
            mod.record_attention = value


@pytest.mark.parametrize('name', list(BLOCKS))
def test_training_keeps_far_less_than_one_n_by_n_map(name):
    block = activate(BLOCKS[name]()).double().train()
    x = torch.randn(1, 8, SIDE, SIDE, dtype=torch.float64, requires_grad=True)
    out, grads, nbytes = run(block, x)
    assert nbytes < MAP_BYTES / 8, f'{name}: {nbytes / 1e6:.1f} MB saved for backward (N x N map: {MAP_BYTES / 1e6:.1f} MB)'
    if name == 'PyramidAttention':     # no N x N map at all; its formula is tested in test_pyramid
        return
    set_record(block, True)
    dense_out, dense_grads, dense_bytes = run(block, x)
    assert dense_bytes >= MAP_BYTES, 'the dense path keeps the map: the hooks do see it'
    torch.testing.assert_close(out, dense_out, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads, dense_grads):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize('mode', m.non_local.MODES)
def test_sub_sampled_nonlocal_stays_bounded(mode, force_chunks):
    """With sub-sampling (N/4 keys) every mode also chunks (and recomputes its chunks in backward) past the dense limit."""
    block = activate(m.NonLocal(8, mode=mode, sub_sample=True, chunk_elements=N * N // 64)).double().train()
    x = torch.randn(1, 8, SIDE, SIDE, dtype=torch.float64, requires_grad=True)
    _, _, nbytes = run(block, x)
    assert nbytes < MAP_BYTES / 4 / 4, f'{nbytes / 1e6:.2f} MB saved; the N x N/4 map is {MAP_BYTES / 4e6:.1f} MB'

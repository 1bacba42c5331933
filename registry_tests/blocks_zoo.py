"""Each block with a small constructor and input maker, shared by the generic block tests."""
import math

import torch
import torch.nn as nn

from attn_plugins import modules as m


class PyramidOf3(nn.Module):
    """PyramidAttention fed a 3-level pyramid made from one input (for single-input harnesses)."""

    def __init__(self, c):
        super().__init__()
        self.block = m.PyramidAttention(c, in_channels=[c, c, c])

    def forward(self, x):
        return self.block([x, torch.nn.functional.max_pool2d(x, 2, ceil_mode=True), x * 0.5])


class PayAttentionPair(nn.Module):
    """PayAttention with the global vector derived from the input (mean over positions)."""

    def __init__(self, c, **kw):
        super().__init__()
        self.block = m.PayAttention(c, 2 * c, **kw)
        self.to_global = nn.Linear(c, 2 * c)

    def forward(self, x):
        attended, attn = self.block(x, self.to_global(x.mean((2, 3))))
        return attended.sum() * 0 + attended, attn


def make(name, c):
    return {
        'SE': lambda: m.SE(c, reduction=4),
        'SpatialWeights': lambda: m.SpatialWeights(c, hidden_channels=8),
        'PositionAttention': lambda: m.PositionAttention(c),
        'ChannelAttention': lambda: m.ChannelAttention(c),
        'DualAttention': lambda: m.DualAttention(c),
        'CBAM': lambda: m.CBAM(c, reduction=4),
        'PyramidAttention': lambda: PyramidOf3(c),
        'NonLocal': lambda: m.NonLocal(c),
        'NonLocalConcat': lambda: m.NonLocal(c, mode='concatenation', sub_sample=True),
        'NonLocalDot': lambda: m.NonLocal(c, mode='dot_product'),
        'NonLocalGaussian': lambda: m.NonLocal(c, mode='gaussian'),
        'PayAttention': lambda: PayAttentionPair(c),
        'PayAttentionDpSigmoid': lambda: PayAttentionPair(c, compatibility='dp', normalize='sigmoid'),
    }[name]()


NAMES = ['SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
         'PyramidAttention', 'NonLocal', 'NonLocalConcat', 'NonLocalDot', 'NonLocalGaussian', 'PayAttention',
         'PayAttentionDpSigmoid']
SAME_SHAPE = [n for n in NAMES if not n.startswith('PayAttention')]


def outputs(y):
    return y if isinstance(y, tuple) else (y,)


def activate(block: nn.Module) -> nn.Module:
    """Non-zero residual scales, so identity-at-init blocks compute something in the tests."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith('gamma'):
                p.fill_(0.5)
        for mod in block.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
                mod.weight.fill_(0.7)
    return block


def chunking_modules(block: nn.Module) -> list:
    return [mod for mod in block.modules() if hasattr(mod, 'chunk_elements')]


def set_chunk_rows(block: nn.Module, *inputs, rows: int) -> list:
    """Make every chunking attention in `block` process `rows` queries per chunk on these inputs.
    Returns each one's (queries, keys), read from a recorded (dense) attention map."""
    modules, training = chunking_modules(block), block.training
    assert modules, f'{type(block).__name__} has no chunked attention'
    block.eval()   # no BN statistics or auxiliary losses from this probe
    for mod in modules:
        mod.record_attention = True
    with torch.no_grad():
        block(*inputs)
    sizes = []
    for mod in modules:
        num_queries, num_keys = mod.attention_map.shape[-2:]
        mod.chunk_elements = rows * num_keys          # chunk = chunk_elements // num_keys query rows
        mod.record_attention, mod.attention_map = False, None
        sizes.append((num_queries, num_keys))
    block.train(training)
    return sizes


def assert_chunked(spy, sizes: list, rows: int) -> None:
    """Every attention ran in several chunks: no torch.bmm saw a whole N x Nk map, and there were at
    least as many calls as chunks."""
    chunks = [math.ceil(n / rows) for n, _ in sizes]
    assert min(chunks) > 1, f'one chunk only: (queries, keys) {sizes}, {rows} rows per chunk'
    assert spy.shapes, 'torch.bmm was never called'
    for n, k in sizes:
        assert not spy.saw_matrix(n, k), f'a whole {n} x {k} attention map was computed'
    assert len(spy.shapes) >= sum(chunks)

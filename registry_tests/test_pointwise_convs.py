"""NonLocal's θ, φ, g and PositionAttention's query, key, value run as one batched product of x
(`_helpers.pointwise_convs`) only while that is what calling the convs computes
(`_helpers.fusable_convs`): a hooked, pruned or replaced conv is called, so its hooks fire and its
weight is the one its pre-hook recomputes."""
import pytest
import torch
import torch.nn.utils.prune as prune
from torch.utils._python_dispatch import TorchDispatchMode

from attn_plugins.modules import CBAM, NonLocal, PositionAttention
from conftest import OpLog

BLOCKS = {
    'CBAM': (lambda: CBAM(8, reduction=2), ('channel_gate.fc1', 'channel_gate.fc2')),
    'NonLocal': (lambda: NonLocal(8, sub_sample=True), ('theta', 'phi', 'g', 'out_conv')),
    'NonLocal concatenation 3d': (lambda: NonLocal(8, dim=3, mode='concatenation'), ('theta', 'phi', 'g', 'out_conv')),
    'PositionAttention': (lambda: PositionAttention(8, qk_channels=2), ('query', 'key', 'value')),
}


def opened(block):
    """Zero-init gates opened, so the projections reach the output."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name == 'gamma' or name == 'out_norm.weight':
                p.fill_(1.0)
    return block


def sample(name):
    return torch.randn((2, 8, 2, 3, 4) if '3d' in name else (2, 8, 4, 6), generator=torch.Generator().manual_seed(0))


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('name', BLOCKS)
def test_plain_convs_run_as_one_product(name):
    make, _ = BLOCKS[name]
    with Ops() as ops:
        opened(make())(sample(name))
    # θ, φ, g, NonLocal's W_z / query, key, value are none. CBAM runs its MLP as convs (timm's ops,
    # test_cbam_cost.py): fc1 and fc2 on each pooled vector, and the 7x7 conv
    expected = 5 if name == 'CBAM' else 0
    assert ops.names.count('convolution') == expected, ops.names


@pytest.mark.parametrize('name', BLOCKS)
def test_hooked_convs_are_called_and_agree(name):
    make, convs = BLOCKS[name]
    block, x = opened(make()).train(), sample(name)
    fused = block(x)
    fired = []
    for conv in convs:
        block.get_submodule(conv).register_forward_hook(lambda module, args, out, conv=conv: fired.append(conv))
    torch.testing.assert_close(block(x), fused, rtol=1e-5, atol=1e-6)
    assert sorted(set(fired)) == sorted(convs)        # CBAM calls its MLP convs once per pooled vector


@pytest.mark.parametrize('name', BLOCKS)
def test_pruned_conv_trains_with_its_masked_weight(name):
    """torch.nn.utils.prune recomputes `weight` in a forward pre-hook: the fused product read the
    weight of the previous call (its graph freed: the 2nd backward failed)."""
    make, convs = BLOCKS[name]
    block, x = opened(make()).train(), sample(name)
    prune.l1_unstructured(block.get_submodule(convs[0]), 'weight', amount=0.5)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        block(x).square().sum().backward()
        optimizer.step()
    state = block.state_dict()
    pruned = f'{convs[0]}.weight'
    state[pruned] = state.pop(pruned + '_orig') * state.pop(pruned + '_mask')
    reference = opened(make())
    reference.load_state_dict(state)                             # the masked weight in a plain conv
    block.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'concatenation'])
def test_training_saves_no_view_of_the_fused_product(mode, force_chunks):
    """The fused θ, φ, g product is one (B, 3 Ci, N) buffer: a saved slice of it (the concatenation
    mode saved g so) kept all of it alive through backward."""
    block = NonLocal(16, mode=mode).train()
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    storages = {}

    def pack(t):
        used, nbytes = storages.get(t.untyped_storage().data_ptr(), (0, t.untyped_storage().nbytes()))
        storages[t.untyped_storage().data_ptr()] = (max(used, t.numel() * t.element_size()), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    fused = 2 * 3 * block.inter_channels * 144 * 4
    assert all(nbytes != fused for _, nbytes in storages.values()), storages
    assert all(used >= nbytes for used, nbytes in storages.values() if nbytes >= 4096), storages   # no pinned slices


@pytest.mark.parametrize('name', ['NonLocal', 'NonLocal sub_sample', 'PositionAttention'])
def test_fused_product_backward_takes_one_pass_per_gradient(name):
    """Backward of the fused projections: the three parts' gradients are concatenated once (sliced
    parts each zero-filled a gradient of the whole product, then summed) and the bias gradient sums
    each sample's positions, then the samples (a sum over dims (0, 2) at once took 18 ms vs 0.8 ms
    for 2x768x8192 bf16)."""
    block = opened(PositionAttention(8, qk_channels=2) if name == 'PositionAttention'
                   else NonLocal(8, sub_sample='sub_sample' in name)).train()
    x = torch.randn(2, 8, 4, 6, requires_grad=True)
    out = block(x)
    fused_channels = 2 + 2 + 8 if name == 'PositionAttention' else 3 * block.inter_channels
    fused = (2, fused_channels, 24)
    with OpLog() as log:
        out.square().sum().backward()
    calls = [(name, shapes, arguments, out_shape) for (name, shapes, out_shape), arguments in zip(log.calls, log.arguments)]
    assert block.theta.bias.grad is not None if name != 'PositionAttention' else block.value.bias.grad is not None
    part = 8 if name == 'PositionAttention' else block.inter_channels          # the largest of the three
    filled = [c for c in calls if c[0] in ('zeros', 'zero_', 'fill_', 'new_zeros', 'full', 'slice_backward')
              and c[3] is not None and len(c[3]) == 3 and c[3][0] == 2 and c[3][1] > part and c[3][2] == 24]
    assert not filled, filled
    sums = [c for c in calls if c[0] == 'sum' and c[1] and c[1][0] == fused]
    assert sums and all(c[2] and list(c[2][0]) == [2] for c in sums), sums
    assert [c for c in calls if c[0] == 'cat' and c[3] == fused]


class LowRankWrapper(torch.nn.Module):
    """A LoRA-style replacement of a 1x1 conv: the base conv plus a zero-init low-rank update, with
    none of a conv's attributes of its own (kernel_size, groups, ...)."""

    def __init__(self, base):
        super().__init__()
        conv = type(base)
        self.base_layer, self.down = base, conv(base.in_channels, 2, 1, bias=False)
        self.up = conv(2, base.out_channels, 1, bias=False)
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base_layer(x) + self.up(self.down(x))


@pytest.mark.parametrize('name', BLOCKS)
def test_conv_replaced_by_a_wrapper_is_called(name):
    """A projection replaced by a module that is not a conv (LoRA / adapter wrappers) is called; the
    check for a plain conv read its `kernel_size` first and raised AttributeError."""
    make, convs = BLOCKS[name]
    for conv in convs:
        block, x = opened(make()).train(), sample(name)
        want = block(x)
        parent, _, child = conv.rpartition('.')
        wrapper = LowRankWrapper(block.get_submodule(conv))
        setattr(block.get_submodule(parent) if parent else block, child, wrapper)
        fired = []
        wrapper.register_forward_hook(lambda module, args, out: fired.append(out.shape))
        torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-6)
        assert fired, conv

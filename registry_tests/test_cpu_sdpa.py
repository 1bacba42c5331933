"""Where SDPA's fused CPU kernel runs instead of ours (issue 12: use `F.scaled_dot_product_attention`
where it has a fused kernel for the shapes, decided by measurement): float32 attention with Ck == Cv
(NonLocal's softmax modes) in eager mode; bf16 autocast, float64, Ck != Cv (PAM), TorchScript and
`CPU_SDPA = False` keep ours. The default path equals the dense formula, forward and gradients, and
keeps no N x N map."""
import pytest
import torch
from torch.profiler import profile

import attn_plugins.modules as m
from attn_plugins.modules import _helpers

FUSED = 'aten::_scaled_dot_product_flash_attention_for_cpu'


def _ops(run) -> set:
    with profile() as prof:
        run()
    return {event.key for event in prof.key_averages()}


def _train(block, x, **autocast):
    def run():
        with torch.autocast('cpu', **autocast) if autocast else torch.autocast('cpu', enabled=False):
            out = block(x)
        out.float().square().sum().backward()
    return run


def test_float32_nonlocal_runs_sdpas_fused_kernel_equal_to_the_dense_formula():
    torch.manual_seed(0)
    block = m.NonLocal(16, mode='embedded_gaussian', norm=False).train()
    torch.nn.init.normal_(block.out_conv.weight, std=0.2)
    x = torch.randn(2, 16, 46, 46, requires_grad=True)          # 2116² scores: above the dense limit
    assert 2116 ** 2 > _helpers.DENSE_LIMIT_ELEMENTS
    ops = _ops(_train(block, x))
    assert FUSED in ops and FUSED + '_backward' in ops, sorted(o for o in ops if 'attention' in o)
    fused_grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]

    x.grad = None
    block.zero_grad()
    block.record_attention = True                                # the dense formula, N x N map kept
    out = block(x)
    out.square().sum().backward()
    block.record_attention = False
    dense_grads = [x.grad] + [p.grad for p in block.parameters()]
    with torch.no_grad():
        torch.testing.assert_close(block(x), out, rtol=1e-4, atol=1e-5)
    for fused, dense in zip(fused_grads, dense_grads):
        torch.testing.assert_close(fused, dense, rtol=1e-3, atol=1e-4)


def test_float32_nonlocal_training_keeps_no_score_map():
    block = m.NonLocal(16, mode='embedded_gaussian', norm=False).train()
    x = torch.randn(1, 16, 64, 64, requires_grad=True)
    n = 64 * 64
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        out = block(x)
    assert max(saved) < n * n * 4 / 64, max(saved)               # the largest saved tensor: far below one map
    out.sum().backward()


@pytest.mark.parametrize('case', ['bf16 autocast', 'float64', 'PAM (Ck != Cv)', 'CPU_SDPA False'])
def test_ours_runs_elsewhere(case, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 46, 46, requires_grad=True)
    block = m.NonLocal(16, mode='embedded_gaussian', norm=False)
    autocast = {}
    if case == 'bf16 autocast':
        autocast = dict(dtype=torch.bfloat16)
    elif case == 'float64':
        block, x = block.double(), x.detach().double().requires_grad_()
    elif case == 'PAM (Ck != Cv)':
        block = m.PositionAttention(16, qk_channels=4)
    else:
        monkeypatch.setattr(_helpers, 'CPU_SDPA', False)
    calls = []
    real = _helpers.flash_softmax_attention
    monkeypatch.setattr(_helpers, 'flash_softmax_attention', lambda *a, **k: calls.append(1) or real(*a, **k))
    ops = _ops(_train(block.train(), x, **autocast))
    assert FUSED not in ops and calls == [1], (case, sorted(o for o in ops if 'attention' in o))


def test_scripted_and_traced_blocks_keep_ours():
    block = m.NonLocal(8, norm=False).eval()
    x = torch.randn(1, 8, 46, 46)           # 2116² scores: above the dense limit, where eager runs SDPA
    assert FUSED in _ops(lambda: block(x))
    scripted = torch.jit.script(block)
    traced = torch.jit.trace(block, x)
    for run in (scripted, traced):
        ops = _ops(lambda: run(x))
        assert FUSED not in ops
        torch.testing.assert_close(run(x), block(x), rtol=1e-4, atol=1e-5)


def test_below_the_dense_limit_training_and_inference_keep_the_dense_formula():
    """Below the dense limit a training step keeps the dense formula, which a gradient penalty (R1 in a
    GAN discriminator) differentiates twice; SDPA's CPU backward cannot be. Inference there keeps it
    too: SDPA was no faster at ResNet-50's non-local shapes (`--suite train --only 'SDPA attention
    R50'`: 1.18x at res3, a tie at res4). Above the limit inference runs SDPA's kernel."""
    block = m.NonLocal(8, norm=False).train()
    torch.nn.init.normal_(block.out_conv.weight, std=0.2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with profile() as prof:
        (grad,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
        grad.square().sum().backward()                        # double backward
    assert FUSED not in {event.key for event in prof.key_averages()}
    assert block.theta.weight.grad is not None and torch.isfinite(block.theta.weight.grad).all()
    with torch.no_grad():
        assert FUSED not in _ops(lambda: block(x))
        large = torch.randn(1, 8, 46, 46)                     # 2116² scores: above the limit
        assert FUSED in _ops(lambda: block(large))
        # a batch's inference keeps at most DENSE_LIMIT_ELEMENTS scores: 5 x 1024² runs SDPA (no map)
        one, batch = torch.randn(1, 8, 32, 32), torch.randn(5, 8, 32, 32)
        assert FUSED not in _ops(lambda: block(one)) and FUSED in _ops(lambda: block(batch))
        torch.testing.assert_close(block(batch)[1:2], block(batch[1:2]), rtol=1e-4, atol=1e-5)


def test_dense_inference_keeps_one_score_buffer():
    """Without a gradient the dense formula normalises the output, not a second (B, N, N) buffer of
    probabilities (`_softmax_chunk_inplace`), and equals the recorded dense formula."""
    torch.manual_seed(0)
    for block in (m.NonLocal(8, norm=False).eval(), m.PositionAttention(16, qk_channels=4).eval()):
        x = torch.randn(2, block.channels, 20, 20)
        with torch.no_grad():
            ops = _ops(lambda: block(x))
            out = block(x)
            block.record_attention = True
            expected = block(x)
            block.record_attention = False
        assert FUSED not in ops and 'aten::_softmax' not in ops, sorted(ops)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_only_no_kernel_errors_turn_sdpa_off(monkeypatch):
    """SDPA's 'No available kernel' sends this signature to ours for the process; any other error
    (a CPU allocation failure is a plain RuntimeError) surfaces instead of silently costing speed."""
    q, k, v = torch.randn(1, 2100, 8), torch.randn(1, 8, 2100), torch.randn(1, 8, 2100)   # above the dense limit
    signature = (torch.float32, torch.float32, torch.float32, 8)
    monkeypatch.setattr(_helpers, '_NO_FUSED_KERNEL', set())

    def fail(message):
        def sdpa(*args):
            raise RuntimeError(message)
        return sdpa

    monkeypatch.setattr(_helpers, '_sdpa', fail('out of memory: cannot allocate 4 GB'))
    with pytest.raises(RuntimeError, match='cannot allocate'):
        _helpers.softmax_attention(q, k, v)
    assert signature not in _helpers._NO_FUSED_KERNEL
    monkeypatch.setattr(_helpers, '_sdpa', fail('No available kernel.  Aborting execution.'))
    out = _helpers.softmax_attention(q, k, v)                  # ours
    assert signature in _helpers._NO_FUSED_KERNEL
    monkeypatch.setattr(_helpers, '_NO_FUSED_KERNEL', set())
    monkeypatch.undo()
    torch.testing.assert_close(out, _helpers.softmax_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_above_the_dense_limit_double_backward_needs_record_attention():
    """README: above the dense limit a double backward raises (SDPA's CPU backward, like our flash
    backward, is once differentiable); `record_attention = True` gives the twice-differentiable dense formula."""
    block = m.NonLocal(8, norm=False).train()
    torch.nn.init.normal_(block.out_conv.weight, std=0.2)
    x = torch.randn(1, 8, 46, 46, requires_grad=True)             # 2116² scores: above the dense limit
    (grad,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='not implemented|once_differentiable|does not require grad'):
        grad.square().sum().backward()
    block.record_attention = True
    (grad,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    grad.square().sum().backward()
    assert torch.isfinite(block.theta.weight.grad).all() and block.theta.weight.grad.abs().sum() > 0

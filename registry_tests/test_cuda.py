"""The blocks on a CUDA device: the same numbers as on the CPU (fp32, forward and backward, dense and
chunked), sane mixed precision (bf16 / fp16 autocast), float64 gradcheck of the flash backward, bounded
training memory, and injection into a timm model. Skipped where no GPU is visible (CI); run on a GPU
machine with `pytest registry_tests/test_cuda.py` (it needs torch and timm only)."""
import copy

import pytest
import torch

import blocks_zoo as zoo
from conftest import randomize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

CUDA = torch.device('cuda')


@pytest.fixture(autouse=True)
def _exact_fp32():
    """No TF32: CUDA fp32 matmuls must match the CPU's to fp32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pair(name, channels=16):
    cpu = zoo.activate(randomize(zoo.make(name, channels))).train()
    return cpu, copy.deepcopy(cpu).to(CUDA)


def _run(block, x, autocast_dtype=None):
    x = x.clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        outs = zoo.outputs(block(x))
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
               for o in outs if o.requires_grad)
    loss.backward()
    grads = {n: p.grad for n, p in block.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], x.grad, grads


def _close(a, b, tol, floor=1e-6):
    """max |a - b| below tol x max |b| (or x floor, for values that are rounding noise of larger sums)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    err = (a - b).abs().max().item() / max(b.abs().max().item(), floor)
    assert err < tol, f'relative max error {err:.2e} >= {tol}'


@pytest.mark.parametrize('chunked', [False, True], ids=['dense', 'chunked'])
@pytest.mark.parametrize('name', zoo.NAMES)
def test_cuda_matches_cpu_in_training(name, chunked, monkeypatch):
    cpu, gpu = _pair(name)
    x = torch.randn(2, 16, 12, 10)
    if chunked:
        from attn_plugins.modules import _helpers
        if not zoo.chunking_modules(cpu):
            pytest.skip('no chunked attention in this block')
        monkeypatch.setattr(_helpers, 'DENSE_LIMIT_ELEMENTS', 0)
        zoo.set_chunk_rows(cpu, x, rows=7)
        zoo.set_chunk_rows(gpu, x.to(CUDA), rows=7)
    out_c, gx_c, gp_c = _run(cpu, x)
    out_g, gx_g, gp_g = _run(gpu, x.to(CUDA))
    assert all(o.is_cuda for o in out_g)
    for a, b in zip(out_g, out_c):
        _close(a, b, 1e-4)
    _close(gx_g, gx_c, 1e-4)
    assert gp_g.keys() == gp_c.keys()
    largest = max(g.abs().max().item() for g in gp_c.values())
    for key in gp_c:     # a gradient that sums to ~0 is compared at the scale of the block's largest
        _close(gp_g[key], gp_c[key], 1e-4, floor=1e-2 * largest)


def _relative(a, b):
    """||a - b|| / ||b||: a max-norm would be decided by the few positions where a ReLU flips between
    precisions (SpatialWeights' input gradient under bf16: max 0.19 on an H200 against 0.004 on the
    CPU, with outputs within 0.009 and 0.006 of fp32)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return (a - b).norm().item() / max(b.norm().item(), 1e-12)


KNOWN_GPU_BF16_GAP = pytest.mark.xfail(strict=True, reason=(
    "open: SpatialWeights' input gradient under CUDA bf16 autocast is 0.06 (L2) from fp32 against 0.004 on the "
    "CPU (H200, torch 2.11; the same with cuDNN off; fp16 matches the CPU); outputs agree (0.009 vs 0.006)"))


@pytest.mark.parametrize('name, dtype', [
    pytest.param(n, d, id=f'{n}-{tag}', marks=[KNOWN_GPU_BF16_GAP] if (n, tag) == ('SpatialWeights', 'bf16') else [])
    for n in zoo.NAMES for d, tag in ((torch.bfloat16, 'bf16'), (torch.float16, 'fp16'))])
def test_cuda_autocast_no_worse_than_cpu_autocast(name, dtype, monkeypatch):
    """Mixed precision on the GPU departs from fp32 no more than the same autocast on the CPU does
    (same weights, same input; outputs and input gradients, training mode, chunked paths)."""
    from attn_plugins.modules import _helpers
    monkeypatch.setattr(_helpers, 'DENSE_LIMIT_ELEMENTS', 0)    # the flash path, where there is one
    cpu, gpu = _pair(name)
    x = torch.randn(2, 16, 12, 10)
    if zoo.chunking_modules(cpu):
        zoo.set_chunk_rows(cpu, x, rows=16)
        zoo.set_chunk_rows(gpu, x.to(CUDA), rows=16)
    errors = {}
    for device, block in (('cpu', cpu), ('cuda', gpu)):
        ref_out, ref_gx, _ = _run(block, x.to(device))
        block.zero_grad()
        out, gx, grads = _run(block, x.to(device), dtype)
        assert all(torch.isfinite(g).all() for g in grads.values())
        errors[device] = (max(_relative(a, b) for a, b in zip(out, ref_out)), _relative(gx, ref_gx))
    for what, cpu_err, gpu_err in zip(('output', 'input grad'), errors['cpu'], errors['cuda']):
        assert gpu_err <= max(4 * cpu_err, 2e-2), f'{what}: cuda {gpu_err:.3g} vs cpu {cpu_err:.3g} from fp32'


def test_cuda_flash_gradcheck_multichunk_float64():
    from attn_plugins.modules._flash import flash_softmax_attention
    q = torch.randn(2, 23, 5, device=CUDA, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 19, device=CUDA, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 7, 19, device=CUDA, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: flash_softmax_attention(a, b, c, 0.7, chunk=6), (q, k, v))


def test_cuda_concat_gradcheck_multichunk_float64():
    from attn_plugins.modules._flash import chunked_concat_attention
    a = torch.randn(2, 17, device=CUDA, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 13, device=CUDA, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 13, device=CUDA, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, z: chunked_concat_attention(x, y, z, chunk=5), (a, b, v))


def _training_step_extra_memory(block, shape, dtype):
    """Peak CUDA memory of one training step beyond what was allocated before it, and the input."""
    x = torch.randn(*shape, device=CUDA, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        block(x).float().square().mean().backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, x


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_cuda_position_attention_training_memory_is_bounded(dtype):
    """PAM on 1x128x128x256 (N = 32768): a dense score map is 32768² x 4 B = 4 GiB per copy in fp32;
    a training step must stay far below one copy beyond its inputs, activations and weights (CUDA
    chunks are 64M scores: 256 MiB in fp32)."""
    from attn_plugins.modules import PositionAttention
    block = zoo.activate(PositionAttention(128)).to(CUDA).train()
    extra, x = _training_step_extra_memory(block, (1, 128, 128, 256), dtype)
    assert extra < 0.2 * 32768 ** 2 * 4, f'peak {extra / 2**20:.0f} MiB beyond the inputs (one dense map: 4096 MiB)'
    assert torch.isfinite(x.grad).all()


def test_cuda_injected_timm_resnet_channels_last_autocast():
    timm = pytest.importorskip('timm')
    from attn_plugins import inject
    model = timm.create_model('resnet18', num_classes=10)
    inject(model, [dict(type='CBAM', where='layer*.*', position='after:bn2'),
                   dict(type='NonLocal', where='layer3.0', position='after')])
    model = model.to(CUDA).to(memory_format=torch.channels_last).train()
    assert len(model.attn_plugins_report) == 9
    x = torch.randn(4, 3, 96, 96, device=CUDA).to(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        logits = model(x)
    logits.float().logsumexp(1).mean().backward()
    assert logits.shape == (4, 10) and logits.is_cuda
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    cpu = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        _close(model.eval()(x.float()), cpu(x.float().cpu()), 1e-3)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_cuda_non_local_training_memory_is_bounded(dtype):
    """NonLocal (Ck = Cv: SDPA's fused kernels on CUDA) on 1x128x128x128: far below one dense map."""
    from attn_plugins.modules import NonLocal
    block = zoo.activate(NonLocal(128)).to(CUDA).train()
    extra, _ = _training_step_extra_memory(block, (1, 128, 128, 128), dtype)
    assert extra < 0.25 * 16384 ** 2 * 4, f'peak {extra / 2**20:.0f} MiB beyond the inputs (one dense map: 1024 MiB)'


def test_cuda_fused_kernel_used_for_equal_widths_and_chunks_otherwise(monkeypatch):
    """Ck == Cv goes to a fused SDPA kernel; PAM's Ck != Cv to our chunks of >= CUDA_CHUNK_ELEMENTS."""
    from attn_plugins.modules import _helpers
    calls = []
    real_sdpa, real_flash = torch.nn.functional.scaled_dot_product_attention, _helpers.flash_softmax_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append('sdpa') or real_sdpa(*a, **k))
    monkeypatch.setattr(_helpers, 'flash_softmax_attention',
                        lambda q, k, v, s, rows: calls.append(('flash', rows)) or real_flash(q, k, v, s, rows))
    n = 4096
    q = torch.randn(2, n, 32, device=CUDA, requires_grad=True)
    k = torch.randn(2, 32, n, device=CUDA, requires_grad=True)
    _helpers.softmax_attention(q, k, torch.randn(2, 32, n, device=CUDA, requires_grad=True)).sum().backward()
    assert calls == ['sdpa']
    calls.clear()
    _helpers.softmax_attention(q, k, torch.randn(2, 256, n, device=CUDA, requires_grad=True)).sum().backward()
    assert calls == [('flash', _helpers.CUDA_CHUNK_ELEMENTS // n)]

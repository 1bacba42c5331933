"""SDPA's fused CPU kernel (`_helpers._fused_cpu_attention`) is tried on CPU tensors only: a float32
NonLocal on the meta device (shape inference, deferred init) runs ours as before SDPA was used, and
another device's failure does not turn SDPA off for the CPU (`_NO_FUSED_KERNEL` has no device key)."""
import torch

import attn_plugins.modules as m
from attn_plugins.modules import _helpers


def test_meta_tensors_run_ours_and_leave_the_cpu_kernel_on(monkeypatch):
    tried = []
    real = _helpers._sdpa
    monkeypatch.setattr(_helpers, '_sdpa', lambda q, *a: tried.append(q.device.type) or real(q, *a))
    monkeypatch.setattr(_helpers, '_NO_FUSED_KERNEL', set())
    block = m.NonLocal(16, norm=False).eval()
    with torch.no_grad():
        # 2116² scores: above the dense limit, where a CPU float32 NonLocal runs SDPA's kernel
        out = block.to('meta')(torch.empty(2, 16, 46, 46, device='meta'))
        assert out.shape == (2, 16, 46, 46) and out.device.type == 'meta'
        assert tried == [] and _helpers._NO_FUSED_KERNEL == set()
        x = torch.randn(2, 16, 46, 46)
        block = block.to_empty(device='cpu')
        torch.nn.init.normal_(block.out_conv.weight, std=0.2)
        block(x)
    assert tried == ['cpu']


def test_benchmarks_ours_attention_leaves_cpu_sdpa_on():
    """tools/benchmark.py's 'SDPA attention' rows pin ours to our own path for its call only: the
    tests exec its helpers in pytest's process, where a module-wide CPU_SDPA = False had turned SDPA
    off for every later test (test_cpu_sdpa.py failed after test_benchmark.py in `make test`)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
    import benchmark
    from torch.profiler import profile

    scope = {}
    exec('import torch\n' + benchmark.TRAIN_HELPERS, scope)
    q, k, v = (torch.randn(1, 8, 50, requires_grad=True) for _ in range(3))
    with profile() as prof:
        scope['ours_attention'](q, k, v, 0.5).sum().backward()
    assert not any('scaled_dot_product' in event.key for event in prof.key_averages())
    assert _helpers.CPU_SDPA is True

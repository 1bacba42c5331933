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
        out = block.to('meta')(torch.empty(2, 16, 10, 12, device='meta'))   # 120² scores: ours is dense
        assert out.shape == (2, 16, 10, 12) and out.device.type == 'meta'
        assert tried == [] and _helpers._NO_FUSED_KERNEL == set()
        x = torch.randn(2, 16, 10, 12)
        block = block.to_empty(device='cpu')
        torch.nn.init.normal_(block.out_conv.weight, std=0.2)
        block(x)
    assert tried == ['cpu']

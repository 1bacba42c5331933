"""attn_plugins.analysis (plan, bench --suite models) counts F.scaled_dot_product_attention's fused
CPU kernel as the attention it computes: the same macs and 'other' FLOPs as the explicit formula
(scale, Q Kᵀ, softmax, P V); it was an uncounted op, so a NonLocal block running it lost its products."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attn_plugins.analysis import count_flops


@pytest.mark.parametrize('scale', [0.25, None, 1.0])
def test_fused_sdpa_counts_as_its_formula(scale):
    b, nq, nk, ck, cv = 2, 10, 12, 4, 4          # the CPU kernel takes Ck == Cv only
    q, k, v = torch.randn(b, 1, nq, ck), torch.randn(b, 1, nk, ck), torch.randn(b, 1, nk, cv)

    def fused():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def formula():
        factor = ck ** -0.5 if scale is None else scale
        scaled = q if factor == 1.0 else q * factor
        return torch.softmax(scaled @ k.transpose(-1, -2), -1) @ v
    fused_count, out = count_flops(fused)
    formula_count, expected = count_flops(formula)
    torch.testing.assert_close(out, expected)
    assert fused_count.uncounted == {} and formula_count.uncounted == {}
    assert fused_count.total == formula_count.total
    scaling = 0 if scale == 1.0 else b * nq * ck
    assert fused_count.total == dict(macs=b * nq * nk * (ck + cv), other=5 * b * nq * nk + scaling)

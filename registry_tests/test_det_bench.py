"""The det benchmark compares like for like, and the attention chunks are shaped for fast products.

At Faster R-CNN's res4 on an 800x1333 image (padded to 800x1344: 50x84 = 4200 positions) our
NonLocal used to chunk the queries by 2**24 // 4200 = 3994 rows and a rest of 206; `value @ probsᵀ`
with a (Cv x 3994) output was ~1.4x slower per row than with 3992 or 4000 rows (see
`_helpers.chunk_rows`), which made ours slower than mmcv's NonLocal2d in the detector."""
import math
import os
import sys

import pytest
import torch

from attn_plugins.modules import _helpers
from attn_plugins.modules.non_local import NonLocal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES4 = (50, 84)          # 800x1333 padded to a multiple of 32, stride 16


def _query_rows(spy, num_keys: int, channels: int) -> list[int]:
    """Query rows of each chunk's Q K product (B, rows, Ck) x (B, Ck, Nk)."""
    return [a[1] for a, b in spy.shapes if b == (1, channels, num_keys) and a[2] == channels]


@pytest.mark.parametrize('max_rows', [1, 5, 31, 32, 33, 100, 998, 3994, 4199, 4200, 5000])
@pytest.mark.parametrize('num_queries', [1, 31, 100, 2116, 4200, 4201, 8192])
def test_chunk_rows_bounded_balanced_aligned(num_queries, max_rows):
    rows = _helpers.chunk_rows(num_queries, max_rows)
    assert 1 <= rows <= max(max_rows, 1)
    if num_queries <= max_rows:
        assert rows == num_queries                                # one chunk
        return
    assert math.ceil(num_queries / rows) >= math.ceil(num_queries / max_rows)
    if max_rows >= 32:
        assert rows % 32 == 0, rows
        # no more chunks than needed unless the multiple of 32 did not fit
        if math.ceil(math.ceil(num_queries / math.ceil(num_queries / max_rows)) / 32) * 32 <= max_rows:
            assert math.ceil(num_queries / rows) == math.ceil(num_queries / max_rows)


def test_res4_chunks_of_a_detector_image_are_aligned(bmm_spy, ours_attention):
    """Inference at 50x84 (N = 4200): two chunks of 2112 and 2088 rows, not 3994 and 206; the result
    is the dense formula's."""
    block = NonLocal(16).eval()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(1, 16, *RES4)
    with torch.no_grad():
        out = block(x)
        rows = _query_rows(bmm_spy, 4200, 8)
        block.record_attention = True
        dense = block(x)
    assert rows == [2112, 2088], rows
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)


def test_res4_training_chunks_are_aligned(bmm_spy, ours_attention):
    """Under autograd (the flash path, 2**22 // 4200 = 998 rows at most) the chunks are 864 rows and
    a rest, not 998."""
    block = NonLocal(16).train()
    x = torch.randn(1, 16, *RES4, requires_grad=True)
    block(x).sum().backward()
    rows = _query_rows(bmm_spy, 4200, 8)
    assert rows[:4] == [864] * 4 and sum(rows[:5]) == 4200, rows


def _bench_build():
    """The benchmark child's `build` and DET_CASES, in this process."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import bench_det
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))
    namespace = {}
    code = bench_det.BUILD.format(threads=torch.get_num_threads(), shape=bench_det.QUICK_SHAPE,
                                  base=bench_det.DET_CASES[bench_det.BASE])
    exec(compile(code, 'bench_det.BUILD', 'exec'), namespace)
    return bench_det, namespace['build']


def test_det_bench_nonlocal_pairs_have_the_same_layers():
    """Each pair: the same six res4 positions, the same parameter shapes (conv, norm) in each block."""
    bench_det, build = _bench_build()
    assert bench_det.PAIRS == (('NonLocal res4 + BN', 'mmcv NonLocal2d res4 + BN'),
                               ('NonLocal res4 no BN', 'mmcv NonLocal2d res4 no BN'))
    for ours, peer in bench_det.PAIRS:
        sides = []
        for name in (ours, peer):
            model = build(bench_det.DET_CASES[name], None)
            blocks = {n.rsplit('.', 1)[0]: m for n, m in model.backbone.named_modules()
                      if type(m).__name__ in ('NonLocal', 'NonLocal2d')}
            assert sorted(blocks) == [f'layer3.{i}' for i in range(6)], (name, sorted(blocks))
            block = next(iter(blocks.values()))
            shapes = sorted((tuple(p.shape), 'bn' if isinstance(mod, torch.nn.BatchNorm2d) else 'conv')
                            for mod in block.modules() for p in mod.parameters(recurse=False))
            sides.append((shapes, sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in block.modules())))
        assert sides[0] == sides[1], (ours, peer, sides)
        assert sides[0][1] == (1 if '+ BN' in ours else 0)
    assert 'norm_cfg' in bench_det.describe('mmcv NonLocal2d res4 + BN')


@pytest.mark.parametrize('norm', [True, False], ids=['bn', 'no-bn'])
@pytest.mark.parametrize('cpu_sdpa', [False, True], ids=['ours', 'sdpa'])
def test_res4_nonlocal_flops_equal_mmcv(norm, cpu_sdpa, monkeypatch):
    """At the res4 shape of a 800x1333 image ours and mmcv's NonLocal2d (same norm) count the same
    matrix FLOPs (ours runs θ, φ and g as one bmm): no extra matrix work there, chunked or in SDPA's
    fused CPU kernel (float32, Ck = Cv: the default)."""
    from mmcv.cnn import NonLocal2d
    from torch.utils.flop_counter import FlopCounterMode
    from attn_plugins.modules import _helpers
    monkeypatch.setattr(_helpers, 'CPU_SDPA', cpu_sdpa)
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import benchmark
    sys.path.pop(0)
    exec(benchmark.CPU_SDPA_FLOPS, {'torch': torch})    # the formula torch's counter lacks for the CPU kernel
    x = torch.randn(1, 1024, *RES4)
    counts = []
    for block in (NonLocal(1024, norm=norm), NonLocal2d(1024, norm_cfg=dict(type='BN') if norm else None)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block.eval()(x)
        counts.append({str(op): n for op, n in counter.get_flop_counts()['Global'].items()})
    ours, mmcv = counts
    if cpu_sdpa:   # the attention's two products inside SDPA's kernel, the projections as products
        sdpa = ours.pop('aten._scaled_dot_product_flash_attention_for_cpu')
        assert sdpa == mmcv['aten.bmm'], counts
        ours['aten.bmm'] += sdpa
    # θ, φ, g and W_z: products in ours (`pointwise_convs`), convolutions in mmcv
    projections = 2 * 4200 * 1024 * 512 * 4
    assert sum(ours.values()) == sum(mmcv.values()), counts
    assert mmcv['aten.bmm'] == 2 * 2 * 4200 * 4200 * 512 and ours['aten.bmm'] == mmcv['aten.bmm'] + projections, counts
    assert mmcv['aten.convolution'] == projections and 'aten.convolution' not in ours, counts

#!/usr/bin/env python
"""Training-step time and peak memory of softmax attention on a CUDA GPU: our PositionAttention /
NonLocal (flash-style chunked autograd) against the dense formula of mmseg's PAM / mmcv's NonLocal2d
and against torch's fused `scaled_dot_product_attention`, all on the same (q, k, v) shapes.

    python tools/bench_cuda.py [--shapes 2x512x64x128 ...] [--repeats 10] [--json PATH]

Needs torch only (runs on a GPU machine without the OpenMMLab stack). Each row: median milliseconds
of forward + backward (CUDA events; the variants interleaved, after warm-up) and peak memory beyond
the inputs; 'OOM' where the variant does not fit. Ratios are against the dense formula measured in
the same run. The `sdpa` row runs q, k, v in SDPA's (B, heads=1, N, C) layout with the backend torch
picks, and says which fused kernels accept the shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_plugins.modules._helpers import softmax_attention  # noqa: E402


def dense(q, k, v):
    """mmseg PAM / mmcv NonLocal2d: energy = Q K, softmax over keys, out = V Pᵀ (N x N kept for backward)."""
    return torch.bmm(v, torch.softmax(torch.bmm(q, k), dim=-1).transpose(1, 2))


def ours(q, k, v):
    return softmax_attention(q, k, v)


def sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.transpose(1, 2).contiguous().unsqueeze(1),
                                         v.transpose(1, 2).contiguous().unsqueeze(1), scale=1.0)
    return out.squeeze(1).transpose(1, 2)


def sdpa_kernels(q, k, v) -> list[str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    ok = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(backend):
                sdpa(q, k, v).sum().backward()
            ok.append(backend.name.lower())
        except RuntimeError:
            pass
    return ok


def ours_chunks(elements):
    """Ours with a given chunk size in score elements (the CPU default, 4M, is cache-sized)."""
    def run(q, k, v):
        from attn_plugins.modules._flash import flash_softmax_attention
        return flash_softmax_attention(q, k, v, 1.0, max(1, elements // k.shape[-1]))
    return run


VARIANTS = {'dense': dense, 'ours': ours, 'ours16M': ours_chunks(1 << 24), 'ours32M': ours_chunks(1 << 25),
            'ours64M': ours_chunks(1 << 26), 'sdpa': sdpa}


def make_inputs(batch, cv, h, w, ck, dtype):
    n = h * w
    gen = torch.Generator(device='cuda').manual_seed(0)
    q = torch.randn(batch, n, ck, device='cuda', generator=gen) / ck ** 0.5
    k = torch.randn(batch, ck, n, device='cuda', generator=gen)
    v = torch.randn(batch, cv, n, device='cuda', generator=gen)
    return [t.to(dtype).requires_grad_(True) for t in (q, k, v)]


def step(fn, inputs, grad):
    for t in inputs:
        t.grad = None
    fn(*inputs).backward(grad)


def measure(shape: str, ck: int, dtype, repeats: int, warmup: int) -> list[dict]:
    batch, cv, h, w = map(int, shape.split('x'))
    inputs = make_inputs(batch, cv, h, w, ck, dtype)
    grad = torch.randn(batch, cv, h * w, device='cuda', dtype=dtype)
    base = torch.cuda.memory_allocated()
    rows, live = {}, {}
    for name, fn in VARIANTS.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(warmup):
                step(fn, inputs, grad)
            torch.cuda.synchronize()
            rows[name] = dict(peak_mib=(torch.cuda.max_memory_allocated() - base) / 2 ** 20, ms=[])
            live[name] = fn
        except torch.OutOfMemoryError:
            rows[name] = dict(peak_mib=None, ms=None, note='OOM')
        for t in inputs:
            t.grad = None
        torch.cuda.empty_cache()
    for _ in range(repeats):                      # interleaved: each repeat runs every variant once
        for name, fn in live.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(fn, inputs, grad)
            end.record()
            torch.cuda.synchronize()
            rows[name]['ms'].append(start.elapsed_time(end))
    ref = rows['dense']
    out = []
    for name, row in rows.items():
        med = statistics.median(row['ms']) if row['ms'] else None
        ref_med = statistics.median(ref['ms']) if ref['ms'] else None
        out.append(dict(shape=shape, ck=ck, dtype=str(dtype).replace('torch.', ''), variant=name,
                        ms=med, ms_min=min(row['ms']) if row['ms'] else None,
                        ms_max=max(row['ms']) if row['ms'] else None, peak_mib=row['peak_mib'],
                        time_vs_dense=(med / ref_med) if med and ref_med else None,
                        mem_vs_dense=(row['peak_mib'] / ref['peak_mib']) if row['peak_mib'] and ref['peak_mib'] else None,
                        note=row.get('note', '')))
    small = make_inputs(1, cv, 8, 8, ck, dtype)
    kernels = sdpa_kernels(*small)
    for row in out:
        if row['variant'] == 'sdpa':
            row['note'] = (row['note'] + ' ' if row['note'] else '') + 'fused: ' + (','.join(kernels) or 'none (math)')
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shapes', nargs='+', default=['2x512x64x128', '2x512x128x256', '2x64x64x128'],
                        help='B x Cv x H x W of the value map (PAM at 1/8 of a 512x1024 crop: 2x512x64x128)')
    parser.add_argument('--ck', type=int, nargs='+', default=[64], help='query/key channels (PAM: Cv / 8)')
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error('needs a CUDA device')
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'shape':>15} {'ck':>3} {'dtype':>8} {'variant':>8} {'ms':>9} {'min-max':>15} {'peak MiB':>9} "
          f"{'t/dense':>7} {'m/dense':>7}  note")
    for shape in args.shapes:
        for ck in args.ck:
            for dtype in args.dtypes:
                for r in measure(shape, ck, getattr(torch, dtype), args.repeats, args.warmup):
                    rows.append(r)
                    fmt = lambda v, f: format(v, f) if v is not None else '-'  # noqa: E731
                    spread = f"{fmt(r['ms_min'], '.2f')}-{fmt(r['ms_max'], '.2f')}"
                    print(f"{r['shape']:>15} {r['ck']:>3} {r['dtype']:>8} {r['variant']:>8} {fmt(r['ms'], '9.2f')} "
                          f"{spread:>15} {fmt(r['peak_mib'], '9.0f')} {fmt(r['time_vs_dense'], '7.2f')} "
                          f"{fmt(r['mem_vs_dense'], '7.2f')}  {r['note']}", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())

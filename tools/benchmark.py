#!/usr/bin/env python
"""Benchmark attention blocks against their peers (timm, mmcv, mmsegmentation).

    python tools/benchmark.py --suite blocks [--quick] [--out work_dirs/benchmark]

Times: ours and the peer run in one process on the same input, alternating which goes first;
the median of `repeats` forward passes after a warm-up (one pass each for the large attention
cases). Peak memory: each implementation in its own process (ru_maxrss cannot be reset),
peak RSS of the forward pass minus RSS just before it (inputs and weights already built). Results are printed as ratios, peer / ours (> 1 means ours is better), and
written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# name -> (ours factory, peer factory, input shape, repeats); factories are source snippets run in
# the child process with `c` = channels.
CASES = {
    'SE r50-layer1': ('SE(c)', 'SEModule(c, rd_divisor=1)', (8, 256, 56, 56), 40),
    'SE r50-layer4': ('SE(c)', 'SEModule(c, rd_divisor=1)', (8, 2048, 7, 7), 40),
    'CBAM r50-layer1': ('CBAM(c, mlp_bias=False, pool_order="mean_max")', 'CbamModule(c)', (8, 256, 56, 56), 40),
    'CBAM r50-layer4': ('CBAM(c, mlp_bias=False, pool_order="mean_max")', 'CbamModule(c)', (8, 2048, 7, 7), 40),
    'CAM danet-512x1024': ('ChannelAttention(c)', 'CAM()', (2, 512, 64, 128), 10),
    'PAM 128x256': ('PositionAttention(c, qk_channels=64)', 'PAM(c, 64)', (1, 512, 128, 256), 1),
    'NonLocal2d 128x256': ('NonLocal(c, norm=False)', 'NonLocal2d(c)', (1, 512, 128, 256), 1),
}
# Whole-image inference of a full-size model (suite 'seg'): (ours config, peer decode head type).
SEG_CASES = {
    'DANet R50-D8 1024x2048': ('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml', 'DAHead', (1, 3, 1024, 2048)),
}
SEG_QUICK = {'DANet R50-D8 1024x2048': (1, 3, 256, 512)}
QUICK = {'PAM 128x256': (1, 512, 64, 128), 'NonLocal2d 128x256': (1, 512, 64, 128),
         'CAM danet-512x1024': (2, 512, 32, 64)}

PRELUDE = r"""
import json, resource, statistics, sys, time, torch
torch.set_num_threads({threads})
from attn_plugins.modules import *
from timm.layers.squeeze_excite import SEModule
from timm.layers.cbam import CbamModule
from mmcv.cnn import NonLocal2d
from mmseg.models.decode_heads.da_head import CAM, PAM
torch.manual_seed(0)
shape = {shape}
c = shape[1]
x = torch.randn(*shape)
"""

# Times: ours and the peer in one process, alternating which runs first, median per side.
TIME_CHILD = PRELUDE + r"""
impls = dict(ours=({ours}).eval(), peer=({peer}).eval())
times = dict(ours=[], peer=[])
with torch.no_grad():
    if {repeats} > 1:
        for m in impls.values():
            m(x)
    for i in range({repeats}):
        order = ('ours', 'peer') if i % 2 else ('peer', 'ours')
        for name in order:
            t = time.perf_counter(); y = impls[name](x); times[name].append(time.perf_counter() - t)
            del y
print(json.dumps({{k: statistics.median(v) for k, v in times.items()}}))
"""

# Peak memory: one implementation per process (ru_maxrss cannot be reset), forward only.
MEMORY_CHILD = PRELUDE + r"""
block = ({factory}).eval()
def rss_kb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
with torch.no_grad():
    block(x[:1, :, :2, :2].contiguous())
    base = rss_kb()
    block(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(peak_mb=max(peak - base, 0) / 1024, process_peak_mb=peak / 1024)))
"""


SEG_MODEL = r"""
import attn_plugins
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
def build_segmentor(config, head_type):
    cfg = attn_plugins.load_config(config)
    init_default_scope('mmseg')
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = None
    model_cfg.backbone.norm_cfg = model_cfg.decode_head.norm_cfg = model_cfg.auxiliary_head.norm_cfg = dict(type='BN')
    if head_type == 'DAHead':
        model_cfg.decode_head = {{k: v for k, v in model_cfg.decode_head.items() if k not in ('loss_weights', 'chunk_elements')}}
        model_cfg.decode_head['type'] = 'DAHead'
    model = MODELS.build(model_cfg)
    model.eval()
    return lambda t: model(t, mode='tensor')
"""

SEG_TIME_CHILD = PRELUDE + SEG_MODEL + r"""
impls = dict(ours=build_segmentor({config!r}, 'ours'), peer=build_segmentor({config!r}, 'DAHead'))
times = {{}}
with torch.no_grad():
    for name in ('peer', 'ours'):
        t = time.perf_counter(); impls[name](x); times[name] = time.perf_counter() - t
print(json.dumps(times))
"""

SEG_MEMORY_CHILD = PRELUDE + SEG_MODEL + r"""
block = build_segmentor({config!r}, {head!r})
def rss_kb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
with torch.no_grad():
    base = rss_kb()
    block(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(peak_mb=max(peak - base, 0) / 1024, process_peak_mb=peak / 1024)))
"""


def run_child(code: str) -> dict:
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def result_row(name, shape, ours, peer, times: dict, mem_ours: dict, mem_peer: dict) -> dict:
    """One result: absolute numbers of both sides and the peer/ours ratios."""
    return dict(case=name, shape=list(shape), ours=ours, peer=peer, ours_time_s=times['ours'],
                peer_time_s=times['peer'], ours_peak_mb=mem_ours['peak_mb'], peer_peak_mb=mem_peer['peak_mb'],
                ours_process_peak_mb=mem_ours['process_peak_mb'], peer_process_peak_mb=mem_peer['process_peak_mb'],
                speedup=times['peer'] / times['ours'],
                memory_ratio=mem_peer['peak_mb'] / max(mem_ours['peak_mb'], 1e-3))


def run_blocks(args) -> list[dict]:
    rows = []
    for name, (ours, peer, shape, repeats) in CASES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        if args.quick:
            shape = QUICK.get(name, shape)
        print(f"[bench] {name} {tuple(shape)} ...", flush=True)
        fmt = dict(shape=tuple(shape), threads=args.threads, repeats=repeats)
        times = run_child(TIME_CHILD.format(ours=ours, peer=peer, **fmt))
        mem_ours = run_child(MEMORY_CHILD.format(factory=ours, **fmt))
        mem_peer = run_child(MEMORY_CHILD.format(factory=peer, **fmt))
        rows.append(result_row(name, shape, ours, peer, times, mem_ours, mem_peer))
    return rows


def run_seg(args) -> list[dict]:
    rows = []
    for name, (config, peer_head, shape) in SEG_CASES.items():
        if args.quick:
            shape = SEG_QUICK[name]
        print(f"[bench] {name} {tuple(shape)} (whole-image inference, our head vs mmseg {peer_head}) ...", flush=True)
        fmt = dict(shape=tuple(shape), threads=args.threads, config=config)
        times = run_child(SEG_TIME_CHILD.format(**fmt))
        mem_ours = run_child(SEG_MEMORY_CHILD.format(head='ours', **fmt))
        mem_peer = run_child(SEG_MEMORY_CHILD.format(head=peer_head, **fmt))
        rows.append(result_row(name, shape, config, f'mmseg {peer_head}', times, mem_ours, mem_peer))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', choices=['blocks', 'seg'], default='blocks',
                        help="blocks: each block vs its peer; seg: whole-image DANet inference vs mmseg")
    parser.add_argument('--quick', action='store_true', help='smaller attention maps (minutes -> seconds)')
    parser.add_argument('--only', nargs='*', help='case names (substring match)')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--out', default='work_dirs/benchmark')
    args = parser.parse_args(argv)

    rows = run_seg(args) if args.suite == 'seg' else run_blocks(args)
    header = f"{'case':<22}{'shape':<22}{'ms ours/peer':>20}{'speedup':>9}{'peak MB ours/peer':>20}{'mem ratio':>10}"
    print(header)
    print('-' * len(header))
    for r in rows:
        print(f"{r['case']:<22}{str(tuple(r['shape'])):<22}"
              f"{r['ours_time_s'] * 1e3:>10.1f}/{r['peer_time_s'] * 1e3:<9.1f}{r['speedup']:>8.2f}x"
              f"{r['ours_peak_mb']:>10.0f}/{r['peer_peak_mb']:<9.0f}{r['memory_ratio']:>9.1f}x")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.suite}{'_quick' if args.quick else ''}.json")
    with open(path, 'w') as f:
        json.dump(dict(suite=args.suite, threads=args.threads, rows=rows), f, indent=2)
    print(f"[bench] wrote {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

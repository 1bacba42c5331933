#!/usr/bin/env python
"""Benchmark attention blocks against their peers (timm, mmcv, mmsegmentation).

    python tools/benchmark.py --suite blocks|seg|train [--quick] [--only NAME ...] [--json PATH]

Times: ours and the peer run in one process on the same input, interleaved in rounds
(ours, peer | peer, ours | ...: the side that goes first alternates), after `warmup` rounds
that are not timed; `repeats` timed rounds per case. Every case, small blocks, PAM, NonLocal
and the whole-image segmentor alike, runs this way. Reported per side: median, min/max and
quartiles of the forward times; the ratio is peer median / ours median, with the spread of the
per-round ratios (peer_i / ours_i). Peak memory: each implementation in its own process
(ru_maxrss cannot be reset), peak RSS of the forward pass minus RSS just before it (inputs and
weights already built). Ratios are peer / ours (> 1 means ours is better). `--quick` runs tiny
shapes with 1 warm-up and 3 repeats (a smoke test of the harness, not a measurement).

Suite 'train' times a training step (forward, loss, backward, fp32 or under CPU bf16 autocast on
both sides) of PAM and NonLocal against mmseg's PAM and mmcv's NonLocal2d the same way; its peak
memory is the step's (saved activations, gradients) above the RSS before it. Its 'bmm ceiling'
rows put our step beside plain bmm calls with the FLOPs of its attention matmuls (the flash
recipe's 2·B·N²·(3·Cv + 4·Ck)) in the same precision: their speedup is the share of the
machine's matmul throughput our whole step reaches. Train rows also give ours / peer ratios
(time and memory, < 1 means ours is better), the form of the goals in issue 12.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TIMM_SE = 'from timm.layers.squeeze_excite import SEModule'
TIMM_CBAM = 'from timm.layers.cbam import CbamModule'
MMSEG_DA = 'from mmseg.models.decode_heads.da_head import CAM, PAM'
MMCV_NL = 'from mmcv.cnn import NonLocal2d'

# name -> (ours factory, peer import, peer factory, input shape, quick shape); factories are source
# snippets run in the child process with `c` = channels.
CASES = {
    'SE r50-layer1': ('SE(c)', TIMM_SE, 'SEModule(c, rd_divisor=1)', (8, 256, 56, 56), (2, 64, 8, 8)),
    'SE r50-layer4': ('SE(c)', TIMM_SE, 'SEModule(c, rd_divisor=1)', (8, 2048, 7, 7), (2, 256, 4, 4)),
    'CBAM r50-layer1': ('CBAM(c, mlp_bias=False, pool_order="mean_max")', TIMM_CBAM, 'CbamModule(c)',
                        (8, 256, 56, 56), (2, 64, 8, 8)),
    'CBAM r50-layer4': ('CBAM(c, mlp_bias=False, pool_order="mean_max")', TIMM_CBAM, 'CbamModule(c)',
                        (8, 2048, 7, 7), (2, 256, 4, 4)),
    'CAM danet-512x1024': ('ChannelAttention(c)', MMSEG_DA, 'CAM()', (2, 512, 64, 128), (1, 32, 8, 16)),
    'PAM 128x256': ('PositionAttention(c, qk_channels=64)', MMSEG_DA, 'PAM(c, 64)', (1, 512, 128, 256),
                    (1, 32, 8, 16)),
    'NonLocal2d 128x256': ('NonLocal(c, norm=False)', MMCV_NL, 'NonLocal2d(c)', (1, 512, 128, 256),
                           (1, 32, 8, 16)),
}
# (warm-up rounds, timed rounds) for the block cases; the attention maps of PAM, NonLocal and the
# whole-image segmentor take seconds per pass, so they get fewer rounds.
SCHEDULE = {'SE r50-layer1': (5, 40), 'SE r50-layer4': (5, 40), 'CBAM r50-layer1': (5, 40),
            'CBAM r50-layer4': (5, 40), 'CAM danet-512x1024': (2, 10), 'PAM 128x256': (1, 5),
            'NonLocal2d 128x256': (1, 5)}
QUICK_SCHEDULE = (1, 3)

# Whole-image inference of a full-size model (suite 'seg'): (ours config, peer decode head type, shape, quick shape).
SEG_CASES = {
    'DANet R50-D8 1024x2048': ('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml', 'DAHead',
                               (1, 3, 1024, 2048), (1, 3, 64, 128)),
}
SEG_SCHEDULE = (1, 3)

# Training step (suite 'train'): name -> (ours, peer import, peer, shape, quick shape). Factories
# are snippets giving a callable of x; `train_step(block, bf16)` and `Ceiling` are defined in the child.
# Quick shapes have 48 x 48 positions: 2304² scores, above the dense limit, so ours chunks.
TRAIN_CASES = {
    'PAM train fp32': ('train_step(PositionAttention(c, qk_channels=64), False)', MMSEG_DA,
                       'train_step(PAM(c, 64), False)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'PAM train bf16': ('train_step(PositionAttention(c, qk_channels=64), True)', MMSEG_DA,
                       'train_step(PAM(c, 64), True)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'NonLocal2d train fp32': ('train_step(NonLocal(c, norm=False), False)', MMCV_NL,
                              'train_step(NonLocal2d(c), False)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'NonLocal2d train bf16': ('train_step(NonLocal(c, norm=False), True)', MMCV_NL,
                              'train_step(NonLocal2d(c), True)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'PAM train fp32 vs bmm ceiling': ('train_step(PositionAttention(c, qk_channels=64), False)', '',
                                      'Ceiling(shape, 64, c, torch.float32)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'PAM train bf16 vs bmm ceiling': ('train_step(PositionAttention(c, qk_channels=64), True)', '',
                                      'Ceiling(shape, 64, c, torch.bfloat16)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'NonLocal2d train fp32 vs bmm ceiling': ('train_step(NonLocal(c, norm=False), False)', '',
                                             'Ceiling(shape, c // 2, c // 2, torch.float32)', (2, 512, 64, 128),
                                             (1, 16, 48, 48)),
}
TRAIN_SCHEDULE = (1, 3)

PRELUDE = r"""
import json, resource, time, torch
torch.set_num_threads({threads})
{imports}
torch.manual_seed(0)
shape = {shape}
c = shape[1]
x = torch.randn(*shape)
"""

# Interleaved timing of impls['ours'] and impls['peer']; `order` records the calls as they ran.
TIME_LOOP = r"""
def timed(name):
    t = time.perf_counter(); y = impls[name](x); dt = time.perf_counter() - t
    del y
    return dt
times, order, warmup_order = dict(ours=[], peer=[]), [], []
with torch.no_grad():
    for i in range({warmup} + {repeats}):
        pair = ('ours', 'peer') if i % 2 == 0 else ('peer', 'ours')
        for name in pair:
            dt = timed(name)
            if i >= {warmup}:
                times[name].append(dt)
        (order if i >= {warmup} else warmup_order).append(list(pair))
print(json.dumps(dict(times=times, order=order, warmup_order=warmup_order)))
"""

BLOCK_IMPORTS = 'from attn_plugins.modules import *\n{peer_import}'
TIME_CHILD = PRELUDE + r"""
impls = dict(ours=({ours}).eval(), peer=({peer}).eval())
""" + TIME_LOOP

# Peak memory: one implementation per process (ru_maxrss cannot be reset), forward only.
RSS = r"""
def rss_kb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
def report(base):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(peak_mb=max(peak - base, 0) / 1024, process_peak_mb=peak / 1024)))
"""
MEMORY_CHILD = PRELUDE + RSS + r"""
block = ({factory}).eval()
with torch.no_grad():
    block(x[:1, :, :2, :2].contiguous())
    base = rss_kb()
    block(x)
report(base)
"""

TRAIN_HELPERS = r"""
import math
def train_step(block, bf16):
    block.train()
    def step(inp):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            out = block(inp)
        out.float().square().mean().backward()
        block.zero_grad(set_to_none=True)
        inp.grad = None
    return step
class Ceiling:
    # bmm calls with the FLOPs of the attention matmuls of a flash training step on `shape`
    def __init__(self, shape, ck, cv, dtype):
        b, n = shape[0], math.prod(shape[2:])
        rows = math.gcd(n, 512)
        self.a = torch.randn(b, rows, 3 * cv + 4 * ck, dtype=dtype)
        self.w = torch.randn(b, 3 * cv + 4 * ck, n, dtype=dtype)
        self.calls = n // rows
    def __call__(self, inp):
        for _ in range(self.calls):
            torch.bmm(self.a, self.w)
x.requires_grad_()
"""
TRAIN_TIME_CHILD = PRELUDE + TRAIN_HELPERS + r"""
impls = dict(ours={ours}, peer={peer})
""" + TIME_LOOP.replace('with torch.no_grad():', 'with torch.enable_grad():')
TRAIN_MEMORY_CHILD = PRELUDE + RSS + TRAIN_HELPERS + r"""
step = {factory}
step(x[:1, :, :2, :2].detach().requires_grad_())
base = rss_kb()
step(x)
report(base)
"""

SEG_IMPORTS = r"""
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
        model_cfg.decode_head = {k: v for k, v in model_cfg.decode_head.items() if k not in ('loss_weights', 'chunk_elements')}
        model_cfg.decode_head['type'] = 'DAHead'
    model = MODELS.build(model_cfg)
    model.eval()
    return lambda t: model(t, mode='tensor')
"""
SEG_TIME_CHILD = PRELUDE + r"""
impls = dict(ours=build_segmentor({config!r}, 'ours'), peer=build_segmentor({config!r}, {head!r}))
""" + TIME_LOOP
SEG_MEMORY_CHILD = PRELUDE + RSS + r"""
block = build_segmentor({config!r}, {head!r})
with torch.no_grad():
    base = rss_kb()
    block(x)
report(base)
"""


def run_child(code: str) -> dict:
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(samples: list[float]) -> dict:
    """Median, min/max and quartiles of timing samples (seconds), with the samples themselves."""
    s = sorted(samples)
    q1, _, q3 = statistics.quantiles(s, n=4, method='inclusive') if len(s) > 1 else (s[0],) * 3
    return dict(median=statistics.median(s), min=s[0], max=s[-1], q1=q1, q3=q3, samples=samples)


def result_row(name, shape, ours, peer, timing: dict, mem_ours: dict, mem_peer: dict, warmup: int) -> dict:
    """One result: both sides' timing spread, the peer/ours ratios and how the calls were ordered."""
    t_ours, t_peer = spread(timing['times']['ours']), spread(timing['times']['peer'])
    paired = [p / o for o, p in zip(timing['times']['ours'], timing['times']['peer'])]
    return dict(case=name, shape=list(shape), ours=ours, peer=peer, warmup=warmup, repeats=len(paired),
                order=timing['order'], warmup_order=timing['warmup_order'],
                ours_time_s=t_ours, peer_time_s=t_peer,
                speedup=dict(ratio=t_peer['median'] / t_ours['median'], paired_median=statistics.median(paired),
                             paired_min=min(paired), paired_max=max(paired)),
                ours_peak_mb=mem_ours['peak_mb'], peer_peak_mb=mem_peer['peak_mb'],
                ours_process_peak_mb=mem_ours['process_peak_mb'], peer_process_peak_mb=mem_peer['process_peak_mb'],
                memory_ratio=mem_peer['peak_mb'] / max(mem_ours['peak_mb'], 1e-3))


def schedule(args, default: tuple[int, int]) -> tuple[int, int]:
    warmup, repeats = QUICK_SCHEDULE if args.quick else default
    return (args.warmup if args.warmup is not None else warmup,
            args.repeats if args.repeats is not None else repeats)


def selected(args, names):
    return [n for n in names if not args.only or any(o in n for o in args.only)]


def run_blocks(args) -> list[dict]:
    rows = []
    for name in selected(args, CASES):
        ours, peer_import, peer, shape, quick_shape = CASES[name]
        shape = quick_shape if args.quick else shape
        warmup, repeats = schedule(args, SCHEDULE[name])
        print(f"[bench] {name} {tuple(shape)}: {warmup} warm-up + {repeats} interleaved rounds ...", flush=True)
        fmt = dict(shape=tuple(shape), threads=args.threads,
                   imports=BLOCK_IMPORTS.format(peer_import=peer_import))
        timing = run_child(TIME_CHILD.format(ours=ours, peer=peer, warmup=warmup, repeats=repeats, **fmt))
        mem_ours = run_child(MEMORY_CHILD.format(factory=ours, **fmt))
        mem_peer = run_child(MEMORY_CHILD.format(factory=peer, **fmt))
        rows.append(result_row(name, shape, ours, peer, timing, mem_ours, mem_peer, warmup))
    return rows


def run_seg(args) -> list[dict]:
    rows = []
    for name in selected(args, SEG_CASES):
        config, peer_head, shape, quick_shape = SEG_CASES[name]
        shape = quick_shape if args.quick else shape
        warmup, repeats = schedule(args, SEG_SCHEDULE)
        print(f"[bench] {name} {tuple(shape)} (whole-image inference, our head vs mmseg {peer_head}): "
              f"{warmup} warm-up + {repeats} interleaved rounds ...", flush=True)
        fmt = dict(shape=tuple(shape), threads=args.threads, imports=SEG_IMPORTS, config=config)
        timing = run_child(SEG_TIME_CHILD.format(head=peer_head, warmup=warmup, repeats=repeats, **fmt))
        mem_ours = run_child(SEG_MEMORY_CHILD.format(head='ours', **fmt))
        mem_peer = run_child(SEG_MEMORY_CHILD.format(head=peer_head, **fmt))
        rows.append(result_row(name, shape, config, f'mmseg {peer_head}', timing, mem_ours, mem_peer, warmup))
    return rows


def run_train(args) -> list[dict]:
    rows = []
    for name in selected(args, TRAIN_CASES):
        ours, peer_import, peer, shape, quick_shape = TRAIN_CASES[name]
        shape = quick_shape if args.quick else shape
        warmup, repeats = schedule(args, TRAIN_SCHEDULE)
        print(f"[bench] {name} {tuple(shape)} (training step): {warmup} warm-up + {repeats} interleaved rounds ...",
              flush=True)
        fmt = dict(shape=tuple(shape), threads=args.threads, imports=BLOCK_IMPORTS.format(peer_import=peer_import))
        timing = run_child(TRAIN_TIME_CHILD.format(ours=ours, peer=peer, warmup=warmup, repeats=repeats, **fmt))
        mem_ours = run_child(TRAIN_MEMORY_CHILD.format(factory=ours, **fmt))
        mem_peer = run_child(TRAIN_MEMORY_CHILD.format(factory=peer, **fmt))
        row = result_row(name, shape, ours, peer, timing, mem_ours, mem_peer, warmup)
        row['ours_over_peer'] = dict(time=1 / row['speedup']['ratio'],
                                     memory=mem_ours['peak_mb'] / max(mem_peer['peak_mb'], 1e-3))
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'case':<24}{'shape':<20}{'ours ms median [min-max]':>28}{'peer ms median [min-max]':>28}"
              f"{'speedup [round min-max]':>26}{'peak MB ours/peer':>19}{'mem ratio':>10}")
    print(header)
    print('-' * len(header))
    for r in rows:
        t = {side: r[f'{side}_time_s'] for side in ('ours', 'peer')}
        cell = {side: f"{v['median'] * 1e3:.4g} [{v['min'] * 1e3:.4g}-{v['max'] * 1e3:.4g}]" for side, v in t.items()}
        s = r['speedup']
        print(f"{r['case']:<24}{str(tuple(r['shape'])):<20}{cell['ours']:>28}{cell['peer']:>28}"
              f"{s['ratio']:>10.2f}x [{s['paired_min']:.2f}-{s['paired_max']:.2f}]  "
              f"{r['ours_peak_mb']:>9.0f}/{r['peer_peak_mb']:<9.0f}{r['memory_ratio']:>9.1f}x")
    for r in rows:
        if 'ours_over_peer' in r:
            print(f"  {r['case']}: ours / peer time {r['ours_over_peer']['time']:.2f}x, "
                  f"extra memory {r['ours_over_peer']['memory']:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', choices=['blocks', 'seg', 'train'], default='blocks',
                        help="blocks: each block vs its peer; seg: whole-image DANet inference vs mmseg; "
                             "train: training steps of PAM / NonLocal vs mmseg / mmcv and the bmm ceiling")
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes, 1 warm-up and 3 timed rounds (checks the harness; not a measurement)')
    parser.add_argument('--only', nargs='*', help='case names (substring match)')
    parser.add_argument('--warmup', type=int, help='untimed rounds per case (default: per case)')
    parser.add_argument('--repeats', type=int, help='timed rounds per case (default: per case)')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--out', default='work_dirs/benchmark', help='folder of the default JSON path')
    parser.add_argument('--json', help='write the results here (default: OUT/SUITE[_quick].json)')
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup < 0:
        parser.error(f'--warmup: expected >= 0, got {args.warmup}')
    if args.repeats is not None and args.repeats < 1:
        parser.error(f'--repeats: expected >= 1, got {args.repeats}')
    cases = {'seg': SEG_CASES, 'train': TRAIN_CASES}.get(args.suite, CASES)
    if not selected(args, cases):
        parser.error(f"--only {' '.join(args.only)}: no {args.suite} case matches; cases: {list(cases)}")

    load_before = os.getloadavg()
    rows = {'seg': run_seg, 'train': run_train}.get(args.suite, run_blocks)(args)
    print_table(rows)
    path = args.json or os.path.join(args.out, f"{args.suite}{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    machine = dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                   loadavg_before=load_before, loadavg_after=os.getloadavg())
    with open(path, 'w') as f:
        json.dump(dict(suite=args.suite, quick=args.quick, threads=args.threads, machine=machine,
                       date=time.strftime('%Y-%m-%d %H:%M:%S'), rows=rows), f, indent=2)
    print(f"[bench] wrote {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark attention blocks against their peers (timm, mmcv, mmsegmentation).

    python tools/benchmark.py --suite blocks|seg|train|models [--quick] [--only NAME ...] [--json PATH]
    python tools/benchmark.py --paper [--quick] [--json PATH]       # the papers' params / GFLOPs rows
    python tools/benchmark.py --readme JSON                         # README results section from a JSON
    attn-plugins bench ...                                          # the same command

The measurement behind README's results section (quiet machine, 42 min in session 7):
    python tools/benchmark.py --suite models --paper --json work_dirs/benchmark/models.json
    python tools/benchmark.py --readme work_dirs/benchmark/models.json          (= make bench-full)
`make bench` runs a quick subset: ResNet-50 + SE / + CBAM against timm's at 224x224 (their goals),
no resolution sweep, and --paper; `--quick` (tiny shapes) only checks the harness.

Suite 'models' (tools/bench_models.py): whole models, base vs ours vs peer (params, FLOPs with
the gate ops mmengine skips (tools/bench_flops.py), CPU latency and peak memory as ratios to the
base, goals, a resolution sweep of PAM / NonLocal / CAM against their peers with the peer's
out-of-memory points, PNG plots, a rich table and a progress bar). `--paper`
(tools/bench_paper.py): parameter counts and GFLOPs next to the papers' tables.

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
both sides) of PAM and NonLocal against mmseg's PAM and mmcv's NonLocal2d the same way, their
inference in fp32 and under bf16 autocast (both sides in the same precision), and a whole DANet
R50-D8 against the same model with mmseg's DAHead: a training iteration (loss, backward, SGD step;
512x1024, batch 2) in fp32 and bf16, and bf16 whole-image inference. Peak memory is the step's
(saved activations, gradients) above the RSS before it. Every row has the bmm ceiling: each side's
FLOPs (torch's FlopCounterMode: matmuls and convolutions, forward and backward) over the
throughput of a plain bmm in the same precision, probed in every timed round: the share of the
machine's matmul speed the step reaches. Train rows also give ours / peer ratios (time and
memory, < 1 means ours is better), the form of the goals in issue 12; the four block training rows
run 15 rounds and print each goal's verdict (`train_goal`: the 95% interval of the per-round
median against the time goal).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

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

# Training step and inference (suite 'train'): name -> (ours, peer import, peer, shape, quick shape).
# Factories are snippets giving a callable of x; `train_step(block, bf16)` and `infer_step(block,
# bf16)` are defined in the child. The precision is the name's last word (fp32, or bf16 autocast on
# both sides). Quick shapes have 48 x 48 positions: 2304² scores, above the dense limit, so ours chunks.
TRAIN_CASES = {
    'PAM train fp32': ('train_step(PositionAttention(c, qk_channels=64), False)', MMSEG_DA,
                       'train_step(PAM(c, 64), False)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'PAM train bf16': ('train_step(PositionAttention(c, qk_channels=64), True)', MMSEG_DA,
                       'train_step(PAM(c, 64), True)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'NonLocal2d train fp32': ('train_step(NonLocal(c, norm=False), False)', MMCV_NL,
                              'train_step(NonLocal2d(c), False)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'NonLocal2d train bf16': ('train_step(NonLocal(c, norm=False), True)', MMCV_NL,
                              'train_step(NonLocal2d(c), True)', (2, 512, 64, 128), (1, 16, 48, 48)),
    'PAM infer fp32': ('infer_step(PositionAttention(c, qk_channels=64), False)', MMSEG_DA,
                       'infer_step(PAM(c, 64), False)', (1, 512, 128, 256), (1, 16, 48, 48)),
    'PAM infer bf16': ('infer_step(PositionAttention(c, qk_channels=64), True)', MMSEG_DA,
                       'infer_step(PAM(c, 64), True)', (1, 512, 128, 256), (1, 16, 48, 48)),
    'NonLocal2d infer fp32': ('infer_step(NonLocal(c, norm=False), False)', MMCV_NL,
                              'infer_step(NonLocal2d(c), False)', (1, 512, 128, 256), (1, 16, 48, 48)),
    'NonLocal2d infer bf16': ('infer_step(NonLocal(c, norm=False), True)', MMCV_NL,
                              'infer_step(NonLocal2d(c), True)', (1, 512, 128, 256), (1, 16, 48, 48)),
    # The attention function alone, ours against F.scaled_dot_product_attention (issue 12: use SDPA where
    # it has a fused kernel for the shapes, decided by measurement): NonLocal's shapes, Ck = Cv = 256
    # (the input's three channel thirds as Q, K, V), where the CPU has SDPA's fused flash kernel.
    **{f'SDPA attention {step} {precision}': (
        f"{step}_step(AttentionOnly(ours_attention, c // 3, c // 3), {precision == 'bf16'})", '',
        f"{step}_step(AttentionOnly(sdpa_attention, c // 3, c // 3), {precision == 'bf16'})", shape, (1, 48, 48, 48))
       for step, shape in (('train', (2, 768, 64, 128)), ('infer', (1, 768, 128, 256))) for precision in ('fp32', 'bf16')},
    # below the dense limit, where ours keeps the dense formula in inference too: the non-local blocks of
    # ResNet-50 at 224x224 (res3: 28x28 positions, Ck = Cv = 256; res4: 14x14, 512), one image
    **{f'SDPA attention R50 {stage} infer fp32': (
        f"infer_step(AttentionOnly(ours_attention, c // 3, c // 3), False)", '',
        f"infer_step(AttentionOnly(sdpa_attention, c // 3, c // 3), False)", shape, quick)
       for stage, shape, quick in (('res3', (1, 768, 28, 28), (1, 48, 8, 8)), ('res4', (1, 1536, 14, 14), (1, 96, 4, 4)))},
}
# Whole DANet R50-D8 (suite 'train'): name -> (ours config, peer decode head, training?, shape, quick
# shape). A training iteration is loss (decode + auxiliary heads on random Cityscapes labels),
# backward and an SGD step; inference is one whole image (fp32 inference: suite 'seg').
TRAIN_SEG_CASES = {
    'DANet R50-D8 train fp32': ('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml', 'DAHead', True,
                                (2, 3, 512, 1024), (1, 3, 64, 128)),
    'DANet R50-D8 train bf16': ('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml', 'DAHead', True,
                                (2, 3, 512, 1024), (1, 3, 64, 128)),
    'DANet R50-D8 infer bf16': ('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml', 'DAHead', False,
                                (1, 3, 1024, 2048), (1, 3, 64, 128)),
}
TRAIN_SCHEDULE = (1, 3)
# Issue 12's goals for the block training steps: (time, extra memory), ours / peer, at most. The time
# goal is judged on the per-round ratios ours / peer: met when the 95% interval of their median lies
# at or below the goal, not met when it lies above, else inconclusive (`train_goal`). 15 rounds give
# an interval from the 3rd smallest to the 3rd largest ratio (with 7, the whole range).
TRAIN_GOALS = {'PAM train fp32': (1.0, 0.25), 'PAM train bf16': (0.9, 0.3),
               'NonLocal2d train fp32': (1.0, 0.25), 'NonLocal2d train bf16': (0.9, 0.3)}
TRAIN_GOAL_SCHEDULE = (1, 15)
SDPA_SCHEDULE = (1, 5)
SDPA_SMALL_SCHEDULE = (5, 201)     # the 'R50' rows: a millisecond or so per call, one call per round

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

# torch's FlopCounterMode has no formula for SDPA's fused CPU kernel (ours runs float32 attention with
# Ck = Cv in it, as does the 'SDPA' rows' peer): the formulas of its CUDA flash kernel, registered once
CPU_SDPA_FLOPS = r"""
from torch.utils import flop_counter
if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu not in flop_counter.flop_registry:
    @flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)
    @flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                 **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
"""
TRAIN_HELPERS = CPU_SDPA_FLOPS + r"""
from torch.utils.flop_counter import FlopCounterMode
def train_step(block, bf16):
    block.train()
    def step(inp):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            out = block(inp)
        out.float().square().mean().backward()
        block.zero_grad(set_to_none=True)
        inp.grad = None
    return step
def infer_step(block, bf16):
    block.eval()
    def step(inp):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            return block(inp)
    return step
def step_flops(step, inp):
    # FLOPs of one call as torch counts them (matmuls and convolutions, forward and backward)
    with FlopCounterMode(display=False) as counter:
        step(inp)
    return counter.get_total_flops()
class AttentionOnly(torch.nn.Module):
    # the attention function alone on channel groups of the input (B, C, H, W): Q and K the first two
    # groups of `qk` channels, V the last `v` channels; softmax scale 1 / sqrt(qk)
    def __init__(self, fn, qk, v):
        super().__init__()
        self.fn, self.qk, self.v = fn, qk, v
    def forward(self, x):
        f = x.flatten(2)
        return self.fn(f[:, :self.qk], f[:, self.qk:2 * self.qk], f[:, -self.v:], self.qk ** -0.5)
def ours_attention(q, k, v, scale):   # (B, C, N) each -> (B, Cv, N): our own path, never SDPA's CPU kernel
    from attn_plugins.modules import _helpers
    saved, _helpers.CPU_SDPA = _helpers.CPU_SDPA, False    # (float32 would run SDPA's kernel: what these
    try:                                                    # rows decide); for this call only (tests exec this)
        return _helpers.softmax_attention(q.transpose(1, 2), k, v, scale)
    finally:
        _helpers.CPU_SDPA = saved
def sdpa_attention(q, k, v, scale):   # the same in SDPA's (B, heads, N, C) layout, one head, contiguous
    # (its fused CPU kernel takes only a contiguous last dimension, else it runs the N x N math path)
    q, k, v = (t.transpose(1, 2).contiguous().unsqueeze(1) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale).squeeze(1).transpose(1, 2)
class Ceiling:
    # one plain bmm in the step's precision: the machine's matmul throughput (the best of 3 calls)
    def __init__(self, dtype):
        self.a, self.b = torch.randn(1, 1024, 1024, dtype=dtype), torch.randn(1, 1024, 2048, dtype=dtype)
        self.flops = 2 * 1024 * 1024 * 2048
    def __call__(self):
        best = float('inf')
        for _ in range(3):
            t = time.perf_counter(); torch.bmm(self.a, self.b); best = min(best, time.perf_counter() - t)
        return best
"""
# TIME_LOOP with gradients on, the ceiling probe after each round's pair (`order` keeps the pairs)
# and the FLOPs of one call of each side.
TRAIN_TIME_LOOP = r"""
def timed(name):
    t = time.perf_counter(); y = impls[name](x); dt = time.perf_counter() - t
    del y
    return dt
ceiling = Ceiling(torch.{dtype})
times, order, warmup_order, ceiling_times = dict(ours=[], peer=[]), [], [], []
for i in range({warmup} + {repeats}):
    pair = ('ours', 'peer') if i % 2 == 0 else ('peer', 'ours')
    for name in pair:
        dt = timed(name)
        if i >= {warmup}:
            times[name].append(dt)
    probe = ceiling()
    if i >= {warmup}:
        ceiling_times.append(probe)
    (order if i >= {warmup} else warmup_order).append(list(pair))
flops = dict(ours=step_flops(impls['ours'], x), peer=step_flops(impls['peer'], x))
print(json.dumps(dict(times=times, order=order, warmup_order=warmup_order, flops=flops,
                      ceiling=dict(times=ceiling_times, flops=ceiling.flops))))
"""
TRAIN_TIME_CHILD = PRELUDE + TRAIN_HELPERS + r"""
x.requires_grad_()
impls = dict(ours={ours}, peer={peer})
""" + TRAIN_TIME_LOOP
TRAIN_MEMORY_CHILD = PRELUDE + RSS + TRAIN_HELPERS + r"""
x.requires_grad_()
step = {factory}
step(x[:1, :, :2, :2].detach().requires_grad_())
base = rss_kb()
step(x)
report(base)
"""
SEG_TRAIN_HELPERS = r"""
import attn_plugins
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
def seg_step(config, head_type, bf16, training):
    # ours (the config) or the same model with mmseg's decode head `head_type`; BN for SyncBN
    cfg = attn_plugins.load_config(config)
    init_default_scope('mmseg')
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = None
    model_cfg.backbone.norm_cfg = model_cfg.decode_head.norm_cfg = model_cfg.auxiliary_head.norm_cfg = dict(type='BN')
    if head_type != 'ours':
        model_cfg.decode_head = {{k: v for k, v in model_cfg.decode_head.items() if k not in ('loss_weights', 'chunk_elements')}}
        model_cfg.decode_head['type'] = head_type
    model = MODELS.build(model_cfg)
    if not training:
        model.eval()
        def infer(inp):
            with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                return model(inp, mode='tensor')
        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)   # the config's
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(shape[0]):
        sample = SegDataSample(metainfo=dict(img_shape=shape[2:], pad_shape=shape[2:], ori_shape=shape[2:]))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, *shape[2:]), generator=gen))
        samples.append(sample)
    def step(inp):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            losses = model.loss(inp, samples)
        loss, _ = model.parse_losses(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step
"""
SEG_TRAIN_TIME_CHILD = PRELUDE + TRAIN_HELPERS + SEG_TRAIN_HELPERS + r"""
impls = dict(ours=seg_step({config!r}, 'ours', {bf16}, {training}), peer=seg_step({config!r}, {head!r}, {bf16}, {training}))
""" + TRAIN_TIME_LOOP
SEG_TRAIN_MEMORY_CHILD = PRELUDE + RSS + TRAIN_HELPERS + SEG_TRAIN_HELPERS + r"""
step = seg_step({config!r}, {head!r}, {bf16}, {training})
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


def ceiling_info(timing: dict) -> dict:
    """Each side's FLOPs (torch's count of one call) against plain bmm timed in the same rounds:
    `*_ceiling_s` is how long bmm takes for those FLOPs, `*_share` that over the side's median time
    (1.0 = the step runs at the machine's matmul throughput)."""
    probe = spread(timing['ceiling']['times'])
    flops_per_s = timing['ceiling']['flops'] / probe['median']
    info = dict(bmm_flops_per_s=flops_per_s, probe_s=probe)
    for side in ('ours', 'peer'):
        flops = timing['flops'][side]
        info.update({f'{side}_flops': flops, f'{side}_ceiling_s': flops / flops_per_s,
                     f'{side}_share': flops / flops_per_s / statistics.median(timing['times'][side])})
    return info


def run_train(args) -> list[dict]:
    rows = []
    for name in selected(args, {**TRAIN_CASES, **TRAIN_SEG_CASES}):
        seg = name in TRAIN_SEG_CASES
        precision = name.rsplit(' ', 1)[-1]
        assert precision in ('fp32', 'bf16'), name
        warmup, repeats = schedule(args, TRAIN_GOAL_SCHEDULE if name in TRAIN_GOALS else
                                   SDPA_SMALL_SCHEDULE if name.startswith('SDPA attention R50') else
                                   SDPA_SCHEDULE if name.startswith('SDPA ') else TRAIN_SCHEDULE)
        if seg:
            config, peer_head, training, shape, quick_shape = TRAIN_SEG_CASES[name]
            shape = quick_shape if args.quick else shape
            ours, peer = config, f'mmseg {peer_head}'
            fmt = dict(shape=tuple(shape), threads=args.threads, imports='', config=config, training=training,
                       bf16=precision == 'bf16')
            time_child = SEG_TRAIN_TIME_CHILD.format(head=peer_head, warmup=warmup, repeats=repeats,
                                                     dtype='bfloat16' if precision == 'bf16' else 'float32', **fmt)
            memory_children = [SEG_TRAIN_MEMORY_CHILD.format(head=head, **fmt) for head in ('ours', peer_head)]
            what = 'training iteration' if training else 'whole-image inference'
        else:
            ours, peer_import, peer, shape, quick_shape = TRAIN_CASES[name]
            shape = quick_shape if args.quick else shape
            fmt = dict(shape=tuple(shape), threads=args.threads, imports=BLOCK_IMPORTS.format(peer_import=peer_import))
            time_child = TRAIN_TIME_CHILD.format(ours=ours, peer=peer, warmup=warmup, repeats=repeats,
                                                 dtype='bfloat16' if precision == 'bf16' else 'float32', **fmt)
            memory_children = [TRAIN_MEMORY_CHILD.format(factory=factory, **fmt) for factory in (ours, peer)]
            what = 'inference' if ' infer ' in name else 'training step'
        print(f"[bench] {name} {tuple(shape)} ({what}): {warmup} warm-up + {repeats} interleaved rounds ...",
              flush=True)
        timing = run_child(time_child)
        mem_ours, mem_peer = (run_child(child) for child in memory_children)
        row = result_row(name, shape, ours, peer, timing, mem_ours, mem_peer, warmup)
        row['ours_over_peer'] = dict(time=1 / row['speedup']['ratio'],
                                     memory=mem_ours['peak_mb'] / max(mem_peer['peak_mb'], 1e-3))
        row['ceiling'] = ceiling_info(timing)
        if name in TRAIN_GOALS:
            row['goal'] = dict(train_goal(row, *TRAIN_GOALS[name]), quick=args.quick)
        rows.append(row)
    return rows


def train_goal(row: dict, max_time: float, max_memory: float) -> dict:
    """Issue 12's goal for a training row: the per-round time ratios ours / peer (paired by round),
    their median with its distribution-free 95% interval against `max_time`, and the extra-memory
    ratio (one measurement per side, each in its own process) against `max_memory`."""
    import bench_models
    per_round = [o / p for o, p in zip(row['ours_time_s']['samples'], row['peer_time_s']['samples'])]
    median, low, high = bench_models.median_ci(per_round)
    time_verdict = 'met' if high <= max_time else 'not met' if low > max_time else 'inconclusive'
    memory = row['ours_over_peer']['memory']
    return dict(max_time=max_time, max_memory=max_memory, time_per_round=dict(median=median, low=low, high=high),
                time=time_verdict, memory=memory, memory_verdict='met' if memory <= max_memory else 'not met')


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
        if 'goal' in r:
            g, t = r['goal'], r['goal']['time_per_round']
            print(f"    goal (issue 12{', --quick: tiny shapes, not a measurement' if g['quick'] else ''}): time <= {g['max_time']}x {g['time'].upper()}: per-round median {t['median']:.3f} "
                  f"[95% interval {t['low']:.3f}-{t['high']:.3f}] (met: interval top <= goal; not met: bottom > goal); "
                  f"extra memory <= {g['max_memory']}x {g['memory_verdict'].upper()} ({g['memory']:.2f}x)")
        if 'ceiling' in r:
            c = r['ceiling']
            print(f"    bmm ceiling ({c['bmm_flops_per_s'] / 1e9:.0f} GFLOP/s): ours {c['ours_flops'] / 1e9:.1f} GFLOP "
                  f"= {c['ours_ceiling_s'] * 1e3:.4g} ms as bmm, {c['ours_share']:.0%} of it; "
                  f"peer {c['peer_flops'] / 1e9:.1f} GFLOP = {c['peer_ceiling_s'] * 1e3:.4g} ms, {c['peer_share']:.0%}")


# Suites: name -> dict(run=f(args) -> rows (or a dict with 'rows' and more), cases=f(args) -> names,
# table=f(result) printing it, help=str). The modules in SUITE_MODULES (in tools/) each define
# SUITE = dict(name=..., run=..., cases=..., table=..., help=...); add yours there.
SUITE_MODULES = ('bench_models', 'bench_det')


def load_suites() -> dict[str, dict]:
    suites = {
        'blocks': dict(run=run_blocks, cases=lambda args: selected(args, CASES), table=print_table,
                       help='each block vs its peer'),
        'seg': dict(run=run_seg, cases=lambda args: selected(args, SEG_CASES), table=print_table,
                    help='whole-image DANet inference vs mmseg'),
        'train': dict(run=run_train, cases=lambda args: selected(args, {**TRAIN_CASES, **TRAIN_SEG_CASES}),
                      table=print_table,
                      help='training steps and fp32 / bf16 inference of PAM / NonLocal vs mmseg / mmcv, a DANet '
                           'R50-D8 training iteration vs mmseg, each with the bmm ceiling of its FLOPs'),
    }
    for module in SUITE_MODULES:
        suite = importlib.import_module(module).SUITE
        suites[suite['name']] = suite
    return suites


def machine_info() -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count())
    try:
        import bench_models
        info['mem_total_bytes'] = bench_models.mem_total_bytes()
    except (OSError, RuntimeError):
        pass
    return info


def main(argv=None, prog: str = 'benchmark.py') -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    suites = load_suites()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', choices=list(suites),
                        help='; '.join(f"{name}: {suite['help']}" for name, suite in suites.items()) +
                             ' (default: blocks, or none with --paper)')
    parser.add_argument('--paper', action='store_true',
                        help="the papers' parameter counts and GFLOPs next to ours (SE, CBAM, non-local C2D); "
                             'with --quick the C2D video rows give parameters only')
    parser.add_argument('--readme', metavar='JSON',
                        help="write README's generated results section from a --suite models / --paper JSON")
    parser.add_argument('--readme-file', default=os.path.join(ROOT, 'README.md'), help='the README --readme edits')
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes, 1 warm-up and 3 timed rounds (checks the harness; not a measurement)')
    parser.add_argument('--only', nargs='*', help='case names (substring match)')
    parser.add_argument('--warmup', type=int, help='untimed rounds per case (default: per case)')
    parser.add_argument('--repeats', type=int, help='timed rounds per case (default: per case)')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--no-sweep', action='store_true', help='models: skip the resolution sweep')
    parser.add_argument('--mem-limit-gb', type=float,
                        help='models sweep: memory the peers must fit in (default: MemTotal of /proc/meminfo)')
    parser.add_argument('--plots', help='models: folder of the PNG plots (default: next to the JSON)')
    parser.add_argument('--out', default='work_dirs/benchmark', help='folder of the default JSON path')
    parser.add_argument('--json', help='write the results here (default: OUT/SUITE[_quick].json)')
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup < 0:
        parser.error(f'--warmup: expected >= 0, got {args.warmup}')
    if args.repeats is not None and args.repeats < 1:
        parser.error(f'--repeats: expected >= 1, got {args.repeats}')
    if args.mem_limit_gb is not None and args.mem_limit_gb <= 0:
        parser.error(f'--mem-limit-gb: expected > 0, got {args.mem_limit_gb}')
    if args.threads < 1:
        parser.error(f'--threads: expected >= 1, got {args.threads}')
    if args.readme:
        if args.suite or args.paper:
            parser.error('--readme JSON only writes README from an existing JSON; run the benchmark first')
        import bench_models
        try:
            bench_models.update_readme(args.readme, args.readme_file)
        except (OSError, ValueError) as err:
            parser.exit(2, f'{prog}: error: --readme: {err}\n')
        print(f"[bench] wrote the results section of {args.readme_file} from {args.readme}")
        return 0
    suite_name = args.suite or (None if args.paper else 'blocks')
    suite = suites.get(suite_name)
    if suite is not None and not suite['cases'](args):
        parser.error(f"--only {' '.join(args.only)}: no {suite_name} case matches; cases: "
                     f"{suite['cases'](argparse.Namespace(**{**vars(args), 'only': None}))}")

    # where the results go, checked before the run (a folder or an unwritable place failed after it)
    name = suite_name or 'paper'
    path = args.json or os.path.join(args.out, f"{name}{'_quick' if args.quick else ''}.json")
    if os.path.isdir(path):
        parser.error(f"--json {path}: is a directory; give a file path, e.g. {os.path.join(path, name + '.json')}")
    for what, target, folder in (('--json', path, os.path.dirname(os.path.abspath(path))),
                                 ('--plots', args.plots, args.plots and os.path.abspath(args.plots))):
        if folder is None:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            parser.error(f"{what} {target}: cannot create its folder ({err.strerror}: {err.filename})")
        if not os.access(folder, os.W_OK):
            parser.error(f"{what} {target}: {folder} is not writable")

    load_before = os.getloadavg()
    result = {}
    if suite is not None:
        out = suite['run'](args)
        result = out if isinstance(out, dict) else dict(rows=out)
        suite['table'](result if isinstance(out, dict) else out)
    if args.paper:
        import bench_models
        import bench_paper
        total = len(bench_paper.image_models()) + len(bench_paper.C2D_MODELS)
        with bench_models.progress_bar(total, 'paper rows (tracing each model)') as step:
            result['paper'] = bench_paper.paper_rows(flops=True, video_flops=not args.quick, progress=step)
        bench_models.print_paper(result['paper'])
    if suite_name == 'models':
        import bench_models
        result['plots'] = bench_models.write_plots(result, args.plots or os.path.dirname(os.path.abspath(path)))
    machine = dict(machine_info(), loadavg_before=load_before, loadavg_after=os.getloadavg())
    command = ' '.join(['python tools/benchmark.py', *map(shlex.quote, argv)])
    with open(path, 'w') as f:
        json.dump(dict(suite=name, quick=args.quick, threads=args.threads, machine=machine, command=command,
                       date=time.strftime('%Y-%m-%d %H:%M:%S'), **result), f, indent=2)
    print(f"[bench] wrote {path}")
    for plot in result.get('plots', []):
        print(f"[bench] wrote {plot}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Suite 'det' of tools/benchmark.py: Faster R-CNN R50-FPN inference on one 800x1333 image (CPU),
the detector without attention against each attention config of configs/det at the same places.

    python tools/benchmark.py --suite det [--quick] [--only NonLocal ...] [--json PATH]

Variants: mmdet's own faster-rcnn_r50_fpn_1x_coco (base); + SE / + CBAM (every bottleneck, after
conv3), + our NonLocal (the paper's one block after layer3.4), + DANet on C5 (AttentionNeck); our
NonLocal and mmcv's NonLocal2d / GeneralizedAttention in every res4 bottleneck after conv3, and
mmcv's ContextBlock in every bottleneck after conv3 (the SE / CBAM places). The NonLocal pairs are
like for like: ours (the paper's BN after W_z, γ = 0) against NonLocal2d with norm_cfg=BN, and
ours with norm=False against NonLocal2d's default (a biased W_z, zero-init); the benchmark sets
these options on the plugins of the two res4 configs. `--only` takes substrings: 'res4 + BN' or
'res4 no BN' runs one pair (and the base), both pairs with more rounds (about 6 minutes on a quiet
2-core machine):

    python tools/benchmark.py --suite det --only 'NonLocal res4' 'NonLocal2d res4' --warmup 1 --repeats 8

Every variant starts
from the same base weights (seeded; the blocks keep their own init), so the RPN keeps the same
number of proposals where a block starts as the identity.

Times: all variants are built in one process and timed there in interleaved rounds after untimed
warm-up rounds (round i starts with variant i mod n, so no variant always runs first or last);
each row gives the median, min/max and quartiles of its times, the ratio of its median to the
base's and the spread of the per-round ratios. Peak memory: each variant in its own process, peak
RSS of the forward pass over RSS just before it (weights built). The pair rows put our NonLocal
beside mmcv's NonLocal2d at the same positions, with the same layers, with benchmark.py's `result_row` (peer / ours:
> 1 means ours is faster or smaller). `--quick` runs a 128x224 image, 1 warm-up and 3 rounds
(checks the harness; its numbers mean nothing).
"""
from __future__ import annotations

import os
import statistics

from benchmark import RSS, run_child, schedule, spread, result_row

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)

BASE = 'base'
# name -> config (mmdet's base config for 'base')
DET_CASES = {
    BASE: 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'SE': 'configs/det/faster-rcnn_r50-se_fpn_1x_coco.yaml',
    'CBAM': 'configs/det/faster-rcnn_r50-cbam_fpn_1x_coco.yaml',
    'NonLocal paper (1 block)': 'configs/det/faster-rcnn_r50-nonlocal_fpn_1x_coco.yaml',
    'DANet C5 (neck)': 'configs/det/faster-rcnn_r50_danet-c5-fpn_1x_coco.yaml',
    'NonLocal res4 + BN': 'configs/det/faster-rcnn_r50-nonlocal-res4_fpn_1x_coco.yaml',
    'mmcv NonLocal2d res4 + BN': ('configs/det/faster-rcnn_r50-nl2d-res4_fpn_1x_coco.yaml', {'norm_cfg': {'type': 'BN'}}),
    'NonLocal res4 no BN': ('configs/det/faster-rcnn_r50-nonlocal-res4_fpn_1x_coco.yaml', {'norm': False}),
    'mmcv NonLocal2d res4 no BN': 'configs/det/faster-rcnn_r50-nl2d-res4_fpn_1x_coco.yaml',
    'mmcv GeneralizedAttention res4': 'configs/det/faster-rcnn_r50-gen-attn-0010-res4_fpn_1x_coco.yaml',
    'mmcv ContextBlock': 'configs/det/faster-rcnn_r50-gcb-r16_fpn_1x_coco.yaml',
}
# (ours, peer) at the same positions with the same layers: the paper's BN after W_z in both (ours'
# default, mmcv's norm_cfg=BN), and neither (ours norm=False, mmcv's default: a biased W_z)
PAIRS = (('NonLocal res4 + BN', 'mmcv NonLocal2d res4 + BN'), ('NonLocal res4 no BN', 'mmcv NonLocal2d res4 no BN'))
SHAPE, QUICK_SHAPE = (1, 3, 800, 1333), (1, 3, 128, 224)
SCHEDULE = (1, 5)


# ----------------------------------------------------------------------------- building (shared)
# The det suite's children and the models suite's detector cases (tools/bench_models.py) build
# their detectors and inputs with these, so both suites measure the same models.
def detector_config(path: str):
    """The config at `path`: mmdet's own ('mmdet::...') or ours (YAML through `load_config`;
    relative to the repository root)."""
    from mmengine.config import Config

    from attn_plugins.config import load_config
    if '::' in path:
        return Config.fromfile(Config._get_cfg_path(path, '')[0])
    return load_config(path if os.path.isabs(path) else os.path.join(ROOT, path))


def build_detector(case, base_state=None):
    """The detector (eval mode) of a DET_CASES value: a config path, or (path, options set on the
    config of each of its backbone's mmdet plugins); with the weights of `base_state` where it has
    them (the attention blocks keep their own init)."""
    import attn_plugins  # noqa: F401  - our blocks in mmengine's MODELS
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    path, block_options = (case, {}) if isinstance(case, str) else case
    model_cfg = detector_config(path).model
    for plugin in model_cfg.backbone.get('plugins') or []:       # mmdet ResNet plugins: options of each block
        plugin['cfg'].update(block_options)
    model = MODELS.build(model_cfg)
    if base_state is not None:
        missing = model.load_state_dict(base_state, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
    return model.eval()


def base_detector(base_case):
    """The base detector built with seed 0: its weights are the ones every variant starts from."""
    import torch
    torch.manual_seed(0)
    return build_detector(base_case)


def detector_sample(height: int, width: int, batch: int = 1):
    """The padded size of an image (a multiple of 32, the data preprocessor's pad_size_divisor)
    and `batch` data samples with its metainfo, as `model(x, samples, mode=...)` takes them."""
    from mmdet.structures import DetDataSample
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=padded,
                                         batch_input_shape=padded, scale_factor=(1.0, 1.0)))
    return padded, [sample.clone() for _ in range(batch)]


BUILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads({threads})
sys.path.insert(0, %r)
from bench_det import base_detector, build_detector as build, detector_sample

def base_state():
    return base_detector({base!r}).state_dict()

shape = {shape}
padded, samples = detector_sample(shape[2], shape[3], shape[0])
x = torch.randn(shape[0], 3, *padded)
def detect(model):
    return lambda: model(x, [sample.clone() for sample in samples], mode='predict')
""" % TOOLS.replace('{', '{{').replace('}', '}}')

TIME_CHILD = BUILD + r"""
state = base_state()
names = {names!r}
impls = {{name: detect(build(path, state)) for name, path in zip(names, {paths!r})}}
times = {{name: [] for name in names}}
order, warmup_order = [], []
with torch.no_grad():
    for i in range({warmup} + {repeats}):
        start = i % len(names)
        round_names = names[start:] + names[:start]
        for name in round_names:
            t = time.perf_counter(); out = impls[name](); dt = time.perf_counter() - t
            del out
            if i >= {warmup}:
                times[name].append(dt)
        (order if i >= {warmup} else warmup_order).append(round_names)
print(json.dumps(dict(times=times, order=order, warmup_order=warmup_order)))
"""

MEMORY_CHILD = BUILD + RSS + r"""
state = base_state()
model = build({path!r}, state)
del state
with torch.no_grad():
    base = rss_kb()
    detect(model)()
report(base)
"""


def describe(name: str) -> str:
    """A variant's config, with the block options the benchmark sets on each of its plugins."""
    case = DET_CASES[name]
    if isinstance(case, str):
        return case
    path, options = case
    return f"{path} with {', '.join(f'{k}={v!r}' for k, v in options.items())} in every plugin"


def case_names(args) -> list[str]:
    """Selected variants (--only: substring match); the base is always timed, the ratios need it."""
    names = [n for n in DET_CASES if not args.only or any(o in n for o in args.only)]
    return names if not names or names == [BASE] else [BASE] + [n for n in names if n != BASE]


def _pair_timing(timing: dict, ours: str, peer: str) -> dict:
    """The interleaved timing of two variants in the form benchmark.result_row reads."""
    def pairs(rounds):
        return [['ours' if n == ours else 'peer' for n in names if n in (ours, peer)] for names in rounds]
    return dict(times=dict(ours=timing['times'][ours], peer=timing['times'][peer]),
                order=pairs(timing['order']), warmup_order=pairs(timing['warmup_order']))


def run_det(args) -> dict:
    names = case_names(args)
    shape = QUICK_SHAPE if args.quick else SHAPE
    warmup, repeats = schedule(args, SCHEDULE)
    print(f"[bench] det: Faster R-CNN R50-FPN inference {tuple(shape)}, {len(names)} variants: {warmup} warm-up + "
          f"{repeats} interleaved rounds ...", flush=True)
    fmt = dict(threads=args.threads, shape=tuple(shape), base=DET_CASES[BASE])
    timing = run_child(TIME_CHILD.format(names=names, paths=[DET_CASES[n] for n in names], warmup=warmup,
                                         repeats=repeats, **fmt))
    memory = {}
    for name in names:
        print(f"[bench] det: peak memory of {name} ...", flush=True)
        memory[name] = run_child(MEMORY_CHILD.format(path=DET_CASES[name], **fmt))
    base_times, base_mb = timing['times'][BASE], memory[BASE]['peak_mb']
    rows = []
    for name in names:
        t = spread(timing['times'][name])
        per_round = [v / b for v, b in zip(timing['times'][name], base_times)]
        rows.append(dict(case=name, config=describe(name), shape=list(shape), warmup=warmup, repeats=repeats,
                         time_s=t, time_over_base=dict(ratio=t['median'] / statistics.median(base_times),
                                                       paired_median=statistics.median(per_round),
                                                       paired_min=min(per_round), paired_max=max(per_round)),
                         peak_mb=memory[name]['peak_mb'], process_peak_mb=memory[name]['process_peak_mb'],
                         memory_over_base=memory[name]['peak_mb'] / max(base_mb, 1e-3)))
    pairs = [result_row(f'{ours} vs {peer}', shape, describe(ours), describe(peer), _pair_timing(timing, ours, peer),
                        memory[ours], memory[peer], warmup)
             for ours, peer in PAIRS if ours in names and peer in names]
    return dict(rows=rows, pairs=pairs, order=timing['order'], warmup_order=timing['warmup_order'])


def print_det_table(result: dict) -> None:
    header = (f"{'variant':<32}{'ms median [min-max]':>28}{'time / base [round min-max]':>30}"
              f"{'peak MB':>10}{'mem / base':>12}")
    print(header)
    print('-' * len(header))
    for r in result['rows']:
        t, s = r['time_s'], r['time_over_base']
        print(f"{r['case']:<32}{t['median'] * 1e3:>12.5g} [{t['min'] * 1e3:.5g}-{t['max'] * 1e3:.5g}]"
              f"{s['ratio']:>16.3f}x [{s['paired_min']:.3f}-{s['paired_max']:.3f}]"
              f"{r['peak_mb']:>10.0f}{r['memory_over_base']:>11.2f}x")
    for p in result['pairs']:
        s = p['speedup']
        print(f"  {p['case']}: peer / ours time {s['ratio']:.3f}x [rounds {s['paired_min']:.3f}-{s['paired_max']:.3f}], "
              f"peak memory {p['peer_peak_mb']:.0f} / {p['ours_peak_mb']:.0f} MB = {p['memory_ratio']:.2f}x "
              "(> 1: ours faster / smaller)")


SUITE = dict(name='det', run=run_det, cases=case_names, table=print_det_table,
             help='Faster R-CNN R50-FPN inference at 800x1333: each attention config (ours, mmcv peers at the same '
                  'places) against the detector without attention, interleaved in one process')

#!/usr/bin/env python
"""How far CPU bf16 autocast moves attention and a trained model (issue 12's bf16 report).

    python tools/bf16_report.py [--quick] [--json PATH] [--iters N] [--data DIR] [--threads N]

1. Attention. PositionAttention (DANet's PAM) and NonLocal (embedded gaussian) with their own
   init (zero-init gates opened: PAM's γ and the BN weight set to 1) on a unit-normal input large
   enough for the chunked (flash) path, run in fp32 and under `torch.autocast('cpu',
   torch.bfloat16)`: the error of the output and of every gradient (input and each parameter)
   against fp32, as max / mean absolute error and relative error (max abs error / max |fp32
   value|, mean abs error / mean |fp32 value|). 'sharp' multiplies the query weights by 4 (score
   spread x4, a peaked softmax, where bf16's rounding of the scores weighs most). The dense
   formula (the `record_attention` path, as mmseg's PAM and mmcv's NonLocal2d compute it) under
   the same autocast is reported beside ours. Gradients that are 0 in exact arithmetic (a key or
   value bias that a softmax or a training-mode BN cancels) are marked and left out of the worst
   relative error.
2. A trained toy DANet. configs/seg/toy/danet_r50-d8_toy.yaml trained in fp32 on generated
   Cityscapes data (tools/make_toy_cityscapes.py), then every val image predicted in fp32 and
   under bf16 autocast: the share of pixels whose predicted class is unchanged (goal >= 99%), at
   the val scale (the attention's map is small: dense) and with the chunked attention path forced.

Prints a table and writes JSON (default work_dirs/bf16_report[_quick].json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TOY_CONFIG = os.path.join(ROOT, 'configs', 'seg', 'toy', 'danet_r50-d8_toy.yaml')
GOAL = 0.99
CHUNK_ELEMENTS = 1 << 15     # scores per chunk where the chunked path is forced: 64 query rows at 16 x 32 keys
# name -> (block factory, input shape, quick shape); 48 x 48 = 2304 positions: 2304² scores, above
# the dense limit, so training and inference take the chunked path.
BLOCKS = {
    'PositionAttention': (lambda c: _modules().PositionAttention(c), (2, 64, 48, 48), (1, 16, 48, 48)),
    'NonLocal embedded_gaussian': (lambda c: _modules().NonLocal(c, mode='embedded_gaussian'),
                                   (2, 64, 48, 48), (1, 16, 48, 48)),
}


def _modules():
    from attn_plugins import modules
    return modules


def error_stats(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """Error of `got` against the reference `ref` (same shape), computed in float64:
    max_abs, mean_abs, rel_max = max_abs / max |ref|, rel_mean = mean_abs / mean |ref|."""
    if got.shape != ref.shape:
        raise ValueError(f"error_stats: shapes differ, got {tuple(got.shape)} vs reference {tuple(ref.shape)}")
    err = (got.detach().double() - ref.detach().double()).abs()
    scale = ref.detach().double().abs()
    max_abs, mean_abs = err.max().item(), err.mean().item()
    return dict(max_abs=max_abs, mean_abs=mean_abs, rel_max=max_abs / max(scale.max().item(), 1e-30),
                rel_mean=mean_abs / max(scale.mean().item(), 1e-30))


def unchanged_share(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of positions where the predicted class `pred` equals `ref` (integer maps of one shape)."""
    if pred.shape != ref.shape:
        raise ValueError(f"unchanged_share: shapes differ, got {tuple(pred.shape)} vs {tuple(ref.shape)}")
    if pred.numel() == 0:
        raise ValueError("unchanged_share: empty prediction")
    return (pred == ref).double().mean().item()


def opened(module: torch.nn.Module, sharpness: float = 1.0) -> torch.nn.Module:
    """The block's own init with its zero-init gates opened (γ and BN weights 1), the query
    weights multiplied by `sharpness`."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('gamma') or (name.endswith('weight') and 'norm' in name):
                p.fill_(1.0)
            elif name.split('.')[0] in ('query', 'theta') and name.endswith('weight'):
                p.mul_(sharpness)
    return module


def _step(block: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool) -> dict:
    """Output and gradients (input, each parameter) of one training-mode pass, in float32."""
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = block(x)
    out.float().backward(grad)
    tensors = {'output': out.detach().float(), 'grad input': x.grad.float()}
    tensors.update({f'grad {name}': p.grad.float() for name, p in block.named_parameters() if p.grad is not None})
    return tensors


def attention_errors(name: str, quick: bool = False, sharpness: float = 1.0, seed: int = 0) -> dict:
    """bf16-vs-fp32 errors of one block, ours (chunked / flash) and the dense formula, and the
    worst relative error (max, mean) over the tensors whose fp32 value is not 0 in exact arithmetic."""
    factory, shape, quick_shape = BLOCKS[name]
    shape = quick_shape if quick else shape
    torch.manual_seed(seed)
    block = opened(factory(shape[1]), sharpness).train()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    result = dict(block=name, shape=list(shape), sharpness=sharpness)
    for path in ('ours', 'dense'):
        for mod in block.modules():
            if hasattr(mod, 'record_attention'):
                mod.record_attention = path == 'dense'
        ref, got = _step(block, x, grad, False), _step(block, x, grad, True)
        largest = max(t.abs().max().item() for t in ref.values())
        stats = {}
        for key in ref:
            stats[key] = error_stats(got[key], ref[key])
            # a gradient 0 in exact arithmetic is rounding noise in fp32 too: no relative error
            stats[key]['zero_in_exact_arithmetic'] = bool(ref[key].abs().max().item() < 1e-4 * largest)
        result[path] = stats
        kept = [v for v in stats.values() if not v['zero_in_exact_arithmetic']]
        result[f'{path}_worst'] = dict(rel_max=max(v['rel_max'] for v in kept),
                                       rel_mean=max(v['rel_mean'] for v in kept))
    return result


def _toy_data(data: str | None, quick: bool) -> str:
    if data:
        return data
    out = os.path.join(tempfile.mkdtemp(prefix='bf16_report_'), 'toy_cityscapes')
    import importlib.util
    spec = importlib.util.spec_from_file_location('make_toy_cityscapes', os.path.join(ROOT, 'tools',
                                                                                     'make_toy_cityscapes.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(['--out', out, '--train', '12' if quick else '24', '--val', '6' if quick else '8'])
    return out


def toy_options(data_root: str, iters: int) -> list[str]:
    """--cfg-options of the toy config: the data location and a schedule of `iters` iterations
    (no validation pass: the report predicts the val images itself)."""
    return [f'train_dataloader.dataset.data_root={data_root}', f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}', f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters + 1}', f'param_scheduler.0.end={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'log_level=WARNING']


def train_toy(data_root: str, work_dir: str, iters: int, config: str = TOY_CONFIG):
    """The toy DANet trained `iters` iterations in fp32; returns the mmengine runner."""
    from attn_plugins.runner import build_runner
    runner = build_runner(config, work_dir=work_dir, cfg_options=toy_options(data_root, iters))
    runner.train()
    return runner


@contextlib.contextmanager
def forced_chunks(model: torch.nn.Module, elements: int = CHUNK_ELEMENTS):
    """Every softmax attention in `model` takes the chunked path, whatever its size, `elements`
    scores per chunk (a few query rows: many chunks)."""
    from attn_plugins.modules import _helpers
    blocks = [m for m in model.modules() if hasattr(m, 'chunk_elements')]
    saved = _helpers.DENSE_LIMIT_ELEMENTS, [m.chunk_elements for m in blocks]
    _helpers.DENSE_LIMIT_ELEMENTS = 0
    for m in blocks:
        m.chunk_elements = elements
    try:
        yield len(blocks)
    finally:
        _helpers.DENSE_LIMIT_ELEMENTS = saved[0]
        for m, value in zip(blocks, saved[1]):
            m.chunk_elements = value


def prediction_agreement(runner, chunked: bool = False) -> dict:
    """Predict every val image in fp32 and under bf16 autocast: the share of pixels whose class is
    unchanged (overall and worst image)."""
    model = runner.model
    model.eval()
    same = total = 0
    worst = 1.0
    classes = set()
    with torch.no_grad(), (forced_chunks(model) if chunked else contextlib.nullcontext()) as blocks:
        if chunked and not blocks:
            raise ValueError(f"prediction_agreement: {type(model).__name__} has no chunked attention to force")
        for batch in runner.val_dataloader:
            ref = model.test_step(batch)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                got = model.test_step(batch)
            for r, g in zip(ref, got):
                a, b = g.pred_sem_seg.data, r.pred_sem_seg.data
                classes.update(b.unique().tolist())
                share = unchanged_share(a, b)
                worst = min(worst, share)
                same += (a == b).sum().item()
                total += a.numel()
    # how much the attention weighs in the prediction: PAM's γ starts at 0 and grows with training
    gammas = {name: p.item() for name, p in model.named_parameters() if name.endswith('gamma') and p.numel() == 1}
    return dict(unchanged=same / total, worst_image=worst, pixels=total, goal=GOAL, chunked=chunked,
                classes_predicted=len(classes), attention_gammas=gammas)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small inputs and a 20-iteration toy model (a check)')
    parser.add_argument('--iters', type=int, help='toy DANet training iterations (default 200, --quick 20)')
    parser.add_argument('--data', help='toy Cityscapes folder (default: generate one in a temp folder)')
    parser.add_argument('--work-dir', help='toy training work dir (default: a temp folder)')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--json', help='write the results here (default work_dirs/bf16_report[_quick].json)')
    args = parser.parse_args(argv)
    iters = args.iters if args.iters is not None else (20 if args.quick else 200)
    if iters < 1:
        parser.error(f'--iters: expected >= 1, got {iters}')
    if args.data and not os.path.isdir(args.data):
        parser.error(f'--data: {args.data!r} is not a folder (make one with tools/make_toy_cityscapes.py)')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    report = dict(date=time.strftime('%Y-%m-%d %H:%M:%S'), quick=args.quick, threads=args.threads, attention=[])
    print(f"{'block':<34}{'tensor':<22}{'ours max|mean abs':>22}{'ours rel max|mean':>20}{'dense rel max|mean':>20}")
    for name in BLOCKS:
        for sharpness in (1.0, 4.0):
            res = attention_errors(name, args.quick, sharpness)
            report['attention'].append(res)
            label = name + (' (sharp)' if sharpness != 1.0 else '')
            for key, ours in res['ours'].items():
                dense = res['dense'][key]
                mark = '  (0 exactly)' if ours['zero_in_exact_arithmetic'] else ''
                print(f"{label:<34}{key:<22}{ours['max_abs']:>11.2e}|{ours['mean_abs']:<10.2e}"
                      f"{ours['rel_max']:>10.2%}|{ours['rel_mean']:<9.2%}"
                      f"{dense['rel_max']:>10.2%}|{dense['rel_mean']:<9.2%}{mark}")
            print(f"{label:<34}{'worst (rel)':<22}{'':>22}{res['ours_worst']['rel_max']:>10.2%}|"
                  f"{res['ours_worst']['rel_mean']:<9.2%}{res['dense_worst']['rel_max']:>10.2%}|"
                  f"{res['dense_worst']['rel_mean']:<9.2%}")

    data = _toy_data(args.data, args.quick)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix='bf16_report_train_')
    print(f"[bf16] training {os.path.relpath(TOY_CONFIG, ROOT)} for {iters} iterations in fp32 on {data} ...",
          flush=True)
    runner = train_toy(data, work_dir, iters)
    report['toy_danet'] = dict(config=os.path.relpath(TOY_CONFIG, ROOT), iters=iters, data=data,
                               dense=prediction_agreement(runner), chunked=prediction_agreement(runner, chunked=True))
    for path in ('dense', 'chunked'):
        r = report['toy_danet'][path]
        print(f"toy DANet ({path} attention): {r['unchanged']:.3%} of {r['pixels']} val pixels unchanged under bf16 "
              f"(worst image {r['worst_image']:.3%}; goal >= {GOAL:.0%}); attention scales γ: "
              + ', '.join(f'{k} {v:.3g}' for k, v in r['attention_gammas'].items()))
    path = args.json or os.path.join(ROOT, 'work_dirs', f"bf16_report{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
    print(f"[bf16] wrote {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

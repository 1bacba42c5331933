#!/usr/bin/env python
"""The main job: train an attention-injected segmentation model from a YAML config, on CPU.

    python tools/demo.py [--iters 1500] [--work-dir work_dirs/demo] [--data-root data/toy_cityscapes]

Relative paths are taken from the current directory (`make demo` runs in the repository root).

1. writes the toy Cityscapes dataset (tools/make_toy_cityscapes.py) to --data-root if it is missing;
2. trains configs/seg/toy/cbam_danet_r50-d8_toy.yaml (ResNet-50-D8 at 1/4 width with CBAM in
   every bottleneck, our DANet head) with mmengine's Runner for `--iters` iterations;
3. evaluates the final checkpoint with mmseg's IoUMetric (tools/test.py's path);
4. writes metrics.json and attention pictures (input, ground truth, prediction, DANet position
   attention of one query pixel, CBAM spatial gate of the last block) to the work dir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')   # mmengine's import, not ours

CONFIG = os.path.join(ROOT, 'configs', 'seg', 'toy', 'cbam_danet_r50-d8_toy.yaml')


def attention_pictures(model, dataset, out_dir: str, count: int = 3) -> list[str]:
    """Run `count` val images with attention recording on and save one figure per image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    import torch.nn.functional as F
    from mmengine.dataset import pseudo_collate

    palette = np.array(dataset.metainfo['palette'], dtype=np.uint8)
    colour = lambda seg: np.where(seg[..., None] == 255, 0, palette[np.clip(seg, 0, 18)])  # noqa: E731
    pam = model.decode_head.pam
    cbam = model.backbone.layer4[-1].cbam
    paths = []
    model.eval()
    for idx in range(min(count, len(dataset))):
        sample = dataset[idx]
        pam.record_attention = cbam.record_attention = True
        with torch.no_grad():
            result = model.test_step(pseudo_collate([sample]))[0]
        pam.record_attention = cbam.record_attention = False
        image = sample['inputs'].permute(1, 2, 0).numpy()[..., ::-1]          # BGR -> RGB
        gt = result.gt_sem_seg.data[0].numpy()
        pred = result.pred_sem_seg.data[0].numpy()
        h, w = gt.shape
        feat_h, feat_w = cbam.attention_map.shape[-2:]
        # query: the car pixel (id 13) nearest to the cars' centroid, else the image centre
        ys, xs = np.nonzero(gt == 13)
        if len(ys):
            nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
            qy, qx = int(ys[nearest]), int(xs[nearest])
        else:
            qy, qx = h // 2, w // 2
        q = (qy * feat_h // h) * feat_w + (qx * feat_w // w)
        pam_map = pam.attention_map[0, q].view(1, 1, feat_h, feat_w)
        pam_map = F.interpolate(pam_map, size=(h, w), mode='bilinear', align_corners=False)[0, 0].numpy()
        cbam_map = F.interpolate(cbam.attention_map, size=(h, w), mode='bilinear', align_corners=False)[0, 0].numpy()
        fig, axes = plt.subplots(1, 5, figsize=(20, 3.2))
        panels = [(image, 'input'), (colour(gt), 'ground truth'), (colour(pred), 'prediction'),
                  (pam_map, 'DANet position attention\nof the marked pixel'), (cbam_map, 'CBAM spatial gate (layer4)')]
        for ax, (data, title) in zip(axes, panels):
            ax.imshow(data, cmap='inferno' if data.ndim == 2 else None)
            ax.set_title(title, fontsize=10)
            ax.axis('off')
        axes[3].plot([qx], [qy], marker='x', color='cyan', markersize=10, mew=2)
        fig.tight_layout()
        path = os.path.join(out_dir, f'attention_{idx}.png')
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=1500, help='training iterations (~0.07 s each on 2 cores)')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/toy_cityscapes',
                        help='the toy dataset (written there if missing)')
    from attn_plugins.runner import run_tool
    return run_tool('demo.py', demo, parser.parse_args(argv))


def demo(args) -> int:
    from attn_plugins.runner import build_runner
    from tools.make_toy_cityscapes import main as make_data

    if not os.path.isdir(os.path.join(args.data_root, 'gtFine')):
        make_data(['--out', args.data_root])
    iters = args.iters
    options = [f'{loader}.dataset.data_root={args.data_root}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}', f'param_scheduler.0.end={iters}',
                f'default_hooks.checkpoint.interval={iters}', 'log_level=WARNING']
    config = CONFIG if os.path.relpath(CONFIG).startswith('..') else os.path.relpath(CONFIG)
    print(f"[demo] training {config} for {iters} iterations on the CPU (work dir {args.work_dir}) ...", flush=True)
    start = time.time()
    runner = build_runner(CONFIG, work_dir=args.work_dir, cfg_options=options, progress_interval=max(iters // 15, 1))
    runner.train()
    train_s = time.time() - start
    print(f"[demo] trained in {train_s:.0f} s; evaluating the last checkpoint ...", flush=True)
    metrics = {k: float(v) for k, v in runner.test().items()}
    os.makedirs(args.work_dir, exist_ok=True)
    report = dict(config=config, iterations=iters, train_seconds=round(train_s, 1), metrics=metrics,
                  checkpoint=os.path.join(args.work_dir, f'iter_{iters}.pth'))
    with open(os.path.join(args.work_dir, 'metrics.json'), 'w') as f:
        json.dump(report, f, indent=2)
    pictures = attention_pictures(runner.model, runner.test_dataloader.dataset, args.work_dir)
    print("[demo] val metrics: " + ', '.join(f"{k}={v:.2f}" for k, v in metrics.items()))
    print(f"[demo] wrote {os.path.join(args.work_dir, 'metrics.json')}")
    for p in pictures:
        print(f"[demo] wrote {p}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

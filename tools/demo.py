#!/usr/bin/env python
"""The main job: train attention-injected models from YAML configs, on CPU.

    python tools/demo.py [--parts seg det] [--iters 1500] [--det-epochs 10] [--work-dir work_dirs/demo]
        [--data-root data/toy_cityscapes] [--det-data-root data/toy_coco]

Relative paths are taken from the current directory (`make demo` runs in the repository root).

Segmentation (`seg`):
1. writes the toy Cityscapes dataset (tools/make_toy_cityscapes.py) to --data-root if it is missing;
2. trains configs/seg/toy/cbam_danet_r50-d8_toy.yaml (ResNet-50-D8 at 1/4 width with CBAM in
   every bottleneck, our DANet head) with mmengine's Runner for `--iters` iterations;
3. evaluates the final checkpoint with mmseg's IoUMetric (tools/test.py's path);
4. writes metrics.json and attention pictures (input, ground truth, prediction, DANet position
   attention of one query pixel, CBAM spatial gate of the last block) to the work dir.

Detection (`det`):
1. writes the toy COCO dataset (tools/make_toy_coco.py) to --det-data-root if it is missing;
2. trains configs/det/toy/faster-rcnn_r50-cbam_fpn_toy-coco.yaml (Faster R-CNN, ResNet-50 at 1/8
   width with CBAM in every bottleneck, FPN) for `--det-epochs` epochs, then evaluates it with
   mmdet's CocoMetric (pycocotools) on the val split;
3. writes det/metrics.json and det/detections.png (val images: ground-truth boxes dashed, predicted
   boxes solid with class and score) to the work dir.
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
DET_CONFIG = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-cbam_fpn_toy-coco.yaml')


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
    parser.add_argument('--parts', nargs='+', choices=('seg', 'det'), default=['seg', 'det'],
                        help='segmentation and/or detection')
    parser.add_argument('--det-epochs', type=int, default=10, help='detection training epochs (~6 s each on 2 cores)')
    parser.add_argument('--det-data-root', default='data/toy_coco', help='the toy COCO dataset (written there if missing)')
    from attn_plugins.runner import run_tool
    return run_tool('demo.py', demo, parser.parse_args(argv))


def demo(args) -> int:
    if 'seg' in args.parts:
        segmentation_demo(args)
    if 'det' in args.parts:
        detection_demo(args)
    return 0


def segmentation_demo(args) -> None:
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


def detection_picture(model, dataset, path: str, count: int = 4, score_thr: float = 0.3) -> str:
    """Predicted boxes (solid, class and score) vs ground truth (dashed) on `count` val images
    that hold objects; one figure."""
    import cv2
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle
    from mmengine.dataset import pseudo_collate

    classes = dataset.metainfo['classes']
    colours = ('tab:red', 'tab:green', 'tab:blue', 'tab:orange', 'tab:purple')
    chosen = [i for i in range(len(dataset)) if dataset.get_data_info(i)['instances']][:count]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 4.2), squeeze=False)
    model.eval()
    for ax, idx in zip(axes[0], chosen):
        sample = dataset[idx]
        with torch.no_grad():
            result = model.test_step(pseudo_collate([sample]))[0]
        ax.imshow(cv2.imread(result.img_path)[..., ::-1])
        gt_boxes = result.gt_instances.bboxes
        gt_boxes = getattr(gt_boxes, 'tensor', gt_boxes)           # mmdet's HorizontalBoxes or a tensor
        for box, label in zip(gt_boxes.tolist(), result.gt_instances.labels.tolist()):
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, lw=1.5, ls='--',
                                   ec=colours[label % len(colours)]))
        pred = result.pred_instances[result.pred_instances.scores >= score_thr]
        for box, label, score in zip(pred.bboxes.tolist(), pred.labels.tolist(), pred.scores.tolist()):
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, lw=2,
                                   ec=colours[label % len(colours)]))
            ax.text(box[0], box[1] - 1, f'{classes[label]} {score:.2f}', fontsize=8, color='white',
                    bbox=dict(facecolor=colours[label % len(colours)], alpha=0.8, pad=1, lw=0))
        ax.set_title(f'val image {result.img_id}', fontsize=10)
        ax.axis('off')
    fig.suptitle(f'Faster R-CNN + CBAM (toy): predictions (solid, score >= {score_thr}) vs ground truth (dashed)',
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def detection_demo(args) -> None:
    from attn_plugins.config import parse_overrides
    from attn_plugins.runner import build_runner
    from tools.make_toy_coco import make_toy_coco

    root = args.det_data_root
    if not os.path.isfile(os.path.join(root, 'annotations', 'instances_val2017.json')):
        make_toy_coco(root)
        print(f"[demo] wrote the toy COCO dataset to {root}")
    epochs = args.det_epochs
    ann_file = os.path.join(root, 'annotations', 'instances_val2017.json')
    options = [f'{loader}.dataset.data_root={root}/' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}',
                f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}', f'param_scheduler.1.end={epochs}',
                f'param_scheduler.1.milestones=[{max(1, (3 * epochs) // 4)}]',
                f'default_hooks.checkpoint.interval={epochs}', 'log_level=WARNING']
    work_dir = os.path.join(args.work_dir, 'det')
    config = DET_CONFIG if os.path.relpath(DET_CONFIG).startswith('..') else os.path.relpath(DET_CONFIG)
    print(f"[demo] training {config} for {epochs} epochs on the CPU (work dir {work_dir}) ...", flush=True)
    start = time.time()
    runner = build_runner(DET_CONFIG, work_dir=work_dir, cfg_options=parse_overrides(options),
                          progress_interval=50)
    runner.train()
    train_s = time.time() - start
    print(f"[demo] trained in {train_s:.0f} s; evaluating the last checkpoint with CocoMetric ...", flush=True)
    metrics = {k: float(v) for k, v in runner.test().items()}
    if 'coco/bbox_mAP' not in metrics:
        from attn_plugins.registry import RunFailed
        raise RunFailed(f"demo: CocoMetric gave no bbox metrics for {work_dir} (the detector predicted nothing)")
    report = dict(config=config, epochs=epochs, iterations=runner.iter, train_seconds=round(train_s, 1),
                  metrics=metrics, checkpoint=os.path.join(work_dir, f'epoch_{epochs}.pth'))
    with open(os.path.join(work_dir, 'metrics.json'), 'w') as f:
        json.dump(report, f, indent=2)
    picture = detection_picture(runner.model, runner.test_dataloader.dataset, os.path.join(work_dir, 'detections.png'))
    print(f"[demo] detection val: bbox mAP={metrics['coco/bbox_mAP']:.3f}, mAP_50={metrics['coco/bbox_mAP_50']:.3f}, "
          f"mAP_75={metrics['coco/bbox_mAP_75']:.3f}")
    print(f"[demo] wrote {os.path.join(work_dir, 'metrics.json')}")
    print(f"[demo] wrote {picture}")


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Write a small dataset in the real Cityscapes layout (deterministic for a seed).

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (19 train ids, 255 ignore)

Scenes have a street layout (sky, buildings, road, sidewalk) with objects (cars, people,
poles, signs, vegetation, trains, two-wheelers with riders, ...), each class drawn with its own
colour and texture and a one-pixel ignore border around objects, so mmseg's CityscapesDataset,
its pipeline and IoUMetric run unchanged and a small model can learn the classes. All 19
classes are drawn: the rarer ones appear at random and each image also features two of them
in turn, so every split of at least 5 images holds all 19 (an absent class would make its IoU
NaN or 0 and bias mIoU).

    python tools/make_toy_cityscapes.py --out data/toy_cityscapes --train 24 --val 8 --size 128 256
"""
from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

# Cityscapes train ids
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, \
    TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(19)
IGNORE = 255
# Cityscapes palette (RGB) per train id, used as each class's base colour
PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
CITIES = {'train': ['aachen', 'bremen', 'jena'], 'val': ['frankfurt', 'lindau']}
# classes not in every street scene; each image features two of them in turn (see make_scene)
FEATURED = [WALL, TRAIN, MOTORCYCLE, BICYCLE, TRUCK, BUS, RIDER, FENCE, TERRAIN, VEGETATION]


def _texture(rng, h, w, kind: int) -> np.ndarray:
    """A per-class texture in [-1, 1]: stripes, checks, speckle or smooth noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if kind % 4 == 0:
        return np.sin(xx / 2.0 + phase)
    if kind % 4 == 1:
        return np.sign(np.sin(yy / 3.0 + phase) * np.sin(xx / 3.0))
    if kind % 4 == 2:
        return rng.uniform(-1, 1, (h, w)).astype(np.float32)
    return cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), 3) * 3


def make_scene(rng: np.random.RandomState, h: int, w: int, featured=()):
    """One street scene: (RGB image, train-id label). Classes in `featured` are always drawn."""
    featured = set(featured)

    def want(cls: int, p: float) -> bool:
        return cls in featured or rng.rand() < p

    label = np.full((h, w), ROAD, np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.5))
    label[:horizon] = SKY
    roof = (horizon * rng.uniform(0.2, 0.6, size=8)).astype(int)
    for i, top in enumerate(roof):                                   # building skyline
        label[top:horizon, i * w // 8:(i + 1) * w // 8] = BUILDING
    walk = int(horizon + (h - horizon) * rng.uniform(0.15, 0.3))
    label[horizon:walk] = SIDEWALK
    if want(VEGETATION, 0.6):                                        # vegetation blobs
        for _ in range(rng.randint(1, 3)):
            cx, cy, r = rng.randint(0, w), rng.randint(horizon // 2, horizon), rng.randint(h // 12, h // 6)
            cv2.circle(label, (cx, cy), r, VEGETATION, -1)
    if want(WALL, 0.35):                                             # low wall in front of the buildings
        ww, wh = rng.randint(w // 6, w // 3), rng.randint(h // 16 + 2, h // 8 + 3)
        x0 = rng.randint(0, w - ww)
        label[horizon - wh:horizon, x0:x0 + ww] = WALL
    if want(FENCE, 0.3):                                             # fence along the back of the sidewalk
        fw = rng.randint(w // 4, w // 2)
        x0 = rng.randint(0, w - fw)
        label[horizon:horizon + 4, x0:x0 + fw] = FENCE
    if want(TERRAIN, 0.3):                                           # grass verge between sidewalk and road
        label[walk - 4:walk, :] = TERRAIN
    objects = []
    if want(TRAIN, 0.2):                                             # a tram on the far side of the road
        tw, th = rng.randint(2 * w // 5, 7 * w // 10), rng.randint(h // 6, h // 4)
        x0, y1 = rng.randint(0, w - tw), rng.randint(walk + 2, walk + max(3, (h - walk) // 3))
        objects.append(('rect', TRAIN, (x0, max(0, y1 - th), x0 + tw, y1)))
    vehicles = [CAR if rng.rand() < 0.7 else (TRUCK if rng.rand() < 0.5 else BUS) for _ in range(rng.randint(2, 6))]
    vehicles += [cls for cls in (TRUCK, BUS) if cls in featured and cls not in vehicles]
    for cls in vehicles:                                             # cars, trucks, buses on the road
        cw, ch = rng.randint(w // 10, w // 5), rng.randint(h // 12, h // 6)
        x0, y0 = rng.randint(0, w - cw), rng.randint(walk, h - ch)
        objects.append(('rect', cls, (x0, y0, x0 + cw, y0 + ch)))
    riders = 0
    for cls in (MOTORCYCLE, BICYCLE):                                # two-wheelers, most with a rider
        if not want(cls, 0.3):
            continue
        bw, bh = rng.randint(w // 25 + 3, w // 12 + 4), rng.randint(h // 16 + 3, h // 10 + 4)
        x0, y0 = rng.randint(0, w - bw), rng.randint(walk, h - bh)
        objects.append(('ellipse' if cls == BICYCLE else 'rect', cls, (x0, y0, x0 + bw, y0 + bh)))
        if rng.rand() < 0.7:
            rh = int(bh * rng.uniform(1.2, 1.8))
            objects.append(('ellipse', RIDER, (x0 + bw // 4, max(0, y0 - rh), x0 + 3 * bw // 4 + 1, y0 + 2)))
            riders += 1
    people = [PERSON if rng.rand() < 0.8 else RIDER for _ in range(rng.randint(1, 4))]
    if RIDER in featured and not riders and RIDER not in people:
        people.append(RIDER)
    for cls in people:                                               # people on the sidewalk
        pw, ph = rng.randint(3, max(4, w // 40)), rng.randint(h // 10, h // 5)
        x0, y0 = rng.randint(0, w - pw), max(0, walk - ph + rng.randint(0, 4))
        objects.append(('ellipse', cls, (x0, y0, x0 + pw, y0 + ph)))
    for _ in range(rng.randint(1, 3)):                               # poles with signs or lights
        x0 = rng.randint(0, w - 2)
        top = rng.randint(horizon // 3, horizon)
        objects.append(('rect', POLE, (x0, top, x0 + 2, walk)))
        objects.append(('rect', SIGN if rng.rand() < 0.5 else LIGHT, (max(0, x0 - 3), top, x0 + 5, top + 6)))
    border = np.zeros((h, w), np.uint8)
    for shape, cls, (x0, y0, x1, y1) in objects:
        mask = np.zeros((h, w), np.uint8)
        if shape == 'rect':
            cv2.rectangle(mask, (x0, y0), (x1, y1), 1, -1)
        else:
            cv2.ellipse(mask, ((x0 + x1) // 2, (y0 + y1) // 2), (max(1, (x1 - x0) // 2), max(1, (y1 - y0) // 2)), 0, 0, 360, 1, -1)
        label[mask > 0] = cls
        border |= cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    image = np.zeros((h, w, 3), np.float32)
    for cls in np.unique(label):
        region = label == cls
        tex = _texture(rng, h, w, int(cls))
        colour = np.array(PALETTE[cls], np.float32) * rng.uniform(0.85, 1.15)
        image[region] = colour + 25 * tex[region, None]
    image += rng.normal(0, 6, image.shape)
    gt = label.copy()
    gt[border > 0] = IGNORE
    return np.clip(image, 0, 255).astype(np.uint8), gt


def write_split(out: str, split: str, count: int, size, rng) -> None:
    h, w = size
    cities = CITIES[split]
    for i in range(count):
        city = cities[i % len(cities)]
        stem = f"{city}_{i // len(cities):06d}_{19 + i:06d}"
        featured = (FEATURED[2 * i % len(FEATURED)], FEATURED[(2 * i + 1) % len(FEATURED)])
        image, gt = make_scene(rng, h, w, featured)
        img_dir = os.path.join(out, 'leftImg8bit', split, city)
        gt_dir = os.path.join(out, 'gtFine', split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        cv2.imwrite(os.path.join(img_dir, f"{stem}_leftImg8bit.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"), gt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy_cityscapes')
    parser.add_argument('--train', type=int, default=24)
    parser.add_argument('--val', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 256), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(args.seed)
    write_split(args.out, 'train', args.train, args.size, rng)
    write_split(args.out, 'val', args.val, args.size, rng)
    print(f"[toy cityscapes] wrote {args.train} train + {args.val} val images of {args.size[0]}x{args.size[1]} "
          f"to {args.out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

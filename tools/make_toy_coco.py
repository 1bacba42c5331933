#!/usr/bin/env python
"""Write a small detection / instance-segmentation dataset in the real COCO layout.

    <root>/train2017/<image id:012d>.jpg, <root>/val2017/...
    <root>/annotations/instances_{train,val}2017.json

The JSON holds what real COCO files hold, awkward parts included: `info`, `licenses`, `images`
(id, file_name, width, height, license, date_captured; ids not contiguous), `annotations` (id,
image_id, category_id, bbox [x, y, w, h] in float pixels, area, iscrowd, segmentation) and
`categories` (id, name, supercategory) with ids that are not contiguous: square 2, disc 5,
triangle 11 (as COCO's 1..90 with gaps). Objects are flat-coloured shapes of their class's hue
on a muted textured background (learnable by a small detector). Some objects are crossed by an
occluding bar and so annotated as several polygons; some are cut by the image border; some
images hold a crowd (a cluster of small shapes annotated once, `iscrowd=1`, as an uncompressed
RLE `{"counts": [...], "size": [h, w]}` as real COCO crowd annotations are); some images have no
objects at all; like real train2017, the train split holds one degenerate annotation (area 0, a
box of height 0), which mmdet's CocoDataset drops from training. As in COCO, `area` is the
polygon area (shoelace sum of the parts) for polygons and the pixel count for RLE, and `bbox`
is the tight box of the outline. Each image's pixels are painted from the pycocotools raster
of its annotations, so masks match the image.

In every split the first image holds all three classes and an occluded (multi-polygon) object,
the second a crowd and the third (if any) no object. Deterministic for a seed.

    python tools/make_toy_coco.py --out data/toy_coco [--train 64] [--val 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

CLASSES = ('square', 'disc', 'triangle')
CATEGORY_IDS = (2, 5, 11)
CATEGORIES = [dict(supercategory='shape', id=cat_id, name=name) for cat_id, name in zip(CATEGORY_IDS, CLASSES)]
SQUARE, DISC, TRIANGLE = range(3)
COLOURS = ((215, 55, 45), (55, 175, 70), (45, 85, 215))    # RGB base colour of each class
BAR_COLOUR = (120, 95, 70)                                  # occluders: brown
SIDES = (96, 160)                                           # image sides (px) drawn from this range


# ---------------------------------------------------------------- geometry
def clip_polygon(points: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of a convex polygon ((N, 2) array) with a*x + b*y <= c."""
    out = []
    n = len(points)
    for i in range(n):
        p, q = points[i], points[(i + 1) % n]
        fp, fq = a * p[0] + b * p[1] - c, a * q[0] + b * q[1] - c
        if fp <= 0:
            out.append(p)
        if fp * fq < 0:
            t = fp / (fp - fq)
            out.append(p + t * (q - p))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def shape_polygon(cls: int, cx: float, cy: float, size: float, aspect: float = 1.0) -> np.ndarray:
    """The outline of one shape: an axis-aligned square, a disc (32-gon) or an upward triangle."""
    half_w, half_h = size / 2 * aspect, size / 2 / aspect
    if cls == SQUARE:
        return np.array([[cx - half_w, cy - half_h], [cx + half_w, cy - half_h],
                         [cx + half_w, cy + half_h], [cx - half_w, cy + half_h]])
    if cls == DISC:
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([cx + size / 2 * np.cos(t), cy + size / 2 * np.sin(t)], 1)
    return np.array([[cx, cy - half_h], [cx + half_w, cy + half_h], [cx - half_w, cy + half_h]])


def clip_to_image(points: np.ndarray, w: int, h: int) -> np.ndarray:
    for a, b, c in ((-1, 0, 0), (1, 0, w), (0, -1, 0), (0, 1, h)):
        points = clip_polygon(points, a, b, c)
    return points


def rle_of_polygons(parts, h: int, w: int) -> dict:
    from pycocotools import mask as mask_utils
    return mask_utils.merge(mask_utils.frPyObjects([p.reshape(-1).tolist() for p in parts], h, w))


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary mask: run lengths in column-major order, starting
    with a (possibly empty) run of zeros; {'counts': [...], 'size': [h, w]}."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {'counts': [int(c) for c in counts], 'size': [int(mask.shape[0]), int(mask.shape[1])]}


def _round(values) -> list:
    return [round(float(v), 2) for v in values]


# ---------------------------------------------------------------- scenes
def background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A muted, low-saturation textured background (float RGB)."""
    base = rng.uniform(90, 170) + rng.uniform(-12, 12, 3)
    noise = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(3, 8))
    noise /= max(float(np.abs(noise).max()), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = (xx / w - 0.5) * rng.uniform(-30, 30) + (yy / h - 0.5) * rng.uniform(-30, 30)
    return base[None, None] + (18 * noise + gradient)[..., None]


def _colour(rng, cls: int, faded: bool = False) -> np.ndarray:
    colour = np.array(COLOURS[cls], np.float64) + rng.uniform(-22, 22, 3)
    if faded:                       # low contrast: halfway to grey
        colour = 0.45 * colour + 0.55 * 135
    return colour


def _overlaps(box, boxes, margin: float) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin
               for b in boxes)


def place(rng, w: int, h: int, size: float, boxes: list, allow_cut: bool, margin: float = 7.0, tries: int = 40):
    """A free centre for a shape of `size` (boxes of earlier shapes kept `margin` apart), or None.
    With allow_cut the shape may stick out of the image by up to 40 % of its size."""
    half = size / 2 + 1
    for _ in range(tries):
        if allow_cut:
            cx, cy = rng.uniform(-0.4 * size + half - 2, w + 0.4 * size - half + 2), rng.uniform(half, h - half)
            if rng.rand() < 0.5:
                cx, cy = rng.uniform(half, w - half), rng.uniform(-0.4 * size + half - 2, h + 0.4 * size - half + 2)
        else:
            if w < 2 * half or h < 2 * half:
                return None
            cx, cy = rng.uniform(half, w - half), rng.uniform(half, h - half)
        box = (cx - half, cy - half, cx + half, cy + half)
        if not _overlaps(box, boxes, margin):
            return cx, cy, box
    return None


def make_objects(rng, w: int, h: int, count: int, classes=None, occlude_first: bool = False,
                 crowd: bool = False, cut_prob: float = 0.15, small_prob: float = 0.0, max_size: float = 60):
    """Lay out one image: a list of objects, each a dict with 'cls', 'parts' (list of (N, 2)
    polygons, several when a bar crosses it), 'bar' (the occluder's polygon or None), 'colour',
    'cut' (cut by the border) and 'small' (9-14 px, half of them faded; VOC marks them difficult),
    or for a crowd 'cls', 'colour' and 'crowd' (member polygons). Shapes are 22..max_size px.
    Objects never overlap each other (the bar of an occluded object stays in its own box)."""
    boxes, objects = [], []
    if crowd:
        cls = int(rng.randint(3))
        cs = rng.uniform(30, 46)
        spot = place(rng, w, h, cs, boxes, allow_cut=False)
        if spot is not None:
            cx, cy, box = spot
            members = []
            for _ in range(int(rng.randint(6, 11))):
                s = rng.uniform(7, 12)
                mx, my = cx + rng.uniform(-(cs - s) / 2, (cs - s) / 2), cy + rng.uniform(-(cs - s) / 2, (cs - s) / 2)
                members.append(shape_polygon(cls, mx, my, s))
            boxes.append(box)
            objects.append(dict(cls=cls, crowd=members, colour=_colour(rng, cls)))
    for i in range(count):
        cls = int(classes[i]) if classes is not None and i < len(classes) else int(rng.randint(3))
        small = rng.rand() < small_prob
        size = rng.uniform(9, 14) if small else rng.uniform(22, max(23, min(max_size, 0.55 * min(w, h))))
        aspect = rng.uniform(0.8, 1.25) if cls != DISC else 1.0
        cut = not small and rng.rand() < cut_prob
        spot = place(rng, w, h, size * max(aspect, 1 / aspect), boxes, allow_cut=cut)
        if spot is None:
            continue
        cx, cy, box = spot
        outline = shape_polygon(cls, cx, cy, size, aspect)
        clipped = clip_to_image(outline, w, h)
        cut = bool(len(clipped) and polygon_area(clipped) < polygon_area(outline) - 1e-6)
        if len(clipped) < 3 or polygon_area(clipped) < 30:
            continue
        parts, bar = [clipped], None
        occlude = (occlude_first and i == 0) or (not small and rng.rand() < 0.25)
        if occlude:
            parts, bar = _occlude(rng, clipped, box)
        boxes.append(box)
        objects.append(dict(cls=cls, parts=parts, bar=bar, colour=_colour(rng, cls, faded=small and rng.rand() < 0.5),
                            cut=cut, small=small))
    return objects


def _occlude(rng, polygon: np.ndarray, box):
    """Cross `polygon` with a vertical or horizontal bar through its middle third: the polygon
    splits into the two parts either side (parts under 12 px^2 are dropped, as an annotator would)."""
    x0, y0, x1, y1 = polygon[:, 0].min(), polygon[:, 1].min(), polygon[:, 0].max(), polygon[:, 1].max()
    thick = rng.uniform(3, 6)
    if rng.rand() < 0.5:
        pos = rng.uniform(x0 + (x1 - x0) / 3, x1 - (x1 - x0) / 3)
        a, b = pos - thick / 2, pos + thick / 2
        parts = [clip_polygon(polygon, 1, 0, a), clip_polygon(polygon, -1, 0, -b)]
        bar = np.array([[a, box[1]], [b, box[1]], [b, box[3]], [a, box[3]]])
    else:
        pos = rng.uniform(y0 + (y1 - y0) / 3, y1 - (y1 - y0) / 3)
        a, b = pos - thick / 2, pos + thick / 2
        parts = [clip_polygon(polygon, 0, 1, a), clip_polygon(polygon, 0, -1, -b)]
        bar = np.array([[box[0], a], [box[2], a], [box[2], b], [box[0], b]])
    parts = [p for p in parts if len(p) >= 3 and polygon_area(p) >= 12]
    return parts, bar


def render(rng, w: int, h: int, objects) -> tuple[np.ndarray, list]:
    """Paint the objects (from the pycocotools raster of their polygons, so masks match pixels)
    and their bars on a background; returns the RGB image and each object's binary mask."""
    from pycocotools import mask as mask_utils
    image = background(rng, h, w)
    masks = []
    for obj in objects:
        polygons = obj['crowd'] if 'crowd' in obj else obj['parts']
        mask = mask_utils.decode(rle_of_polygons(polygons, h, w)).astype(bool)
        shade = 1 + 0.08 * cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), 2)
        image[mask] = obj['colour'][None] * shade[mask][:, None]
        if obj.get('bar') is not None:
            bar = mask_utils.decode(rle_of_polygons([clip_to_image(obj['bar'], w, h)], h, w)).astype(bool)
            image[bar] = np.array(BAR_COLOUR) + rng.uniform(-10, 10, 3)
            mask &= ~bar
        masks.append(mask)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def coco_annotation(obj, mask: np.ndarray, ann_id: int, image_id: int) -> dict:
    """One COCO annotation: polygons (or a crowd's RLE), area and tight bbox as real COCO has them."""
    from pycocotools import mask as mask_utils
    if 'crowd' in obj:
        rle = uncompressed_rle(mask)
        compressed = mask_utils.frPyObjects(rle, *rle['size'])
        area = float(mask_utils.area(compressed))
        bbox = _round(mask_utils.toBbox(compressed))
        return dict(segmentation=rle, area=area, iscrowd=1, image_id=image_id, bbox=bbox,
                    category_id=CATEGORY_IDS[obj['cls']], id=ann_id)
    polygons = [_round(p.reshape(-1)) for p in obj['parts']]          # as written, 2 decimals
    parts = [np.reshape(p, (-1, 2)) for p in polygons]
    x0, y0 = np.concatenate(parts).min(0)
    x1, y1 = np.concatenate(parts).max(0)
    return dict(segmentation=polygons, area=round(sum(polygon_area(p) for p in parts), 4), iscrowd=0, image_id=image_id,
                bbox=_round([x0, y0, x1 - x0, y1 - y0]), category_id=CATEGORY_IDS[obj['cls']], id=ann_id)


def write_split(root: str, split: str, count: int, rng, sides=SIDES, ann_ids=None, degenerate: bool = False) -> dict:
    """Images of one split under root/<split>2017 and its annotation dict (also returned). With
    `degenerate`, the fourth image also gets a zero-area annotation with a flat box."""
    img_dir = os.path.join(root, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    image_ids = sorted(rng.choice(np.arange(1, 600000), size=count, replace=False).tolist())
    order = rng.permutation(count)          # file order differs from id order, as in COCO
    ann_ids = ann_ids if ann_ids is not None else iter(range(900000 + int(rng.randint(100000)), 10 ** 7, 7))
    for position, idx in enumerate(order):
        image_id = int(image_ids[idx])
        w, h = (int(v) for v in rng.randint(sides[0], sides[1] + 1, size=2))
        if rng.rand() < 0.3:
            h = w                           # some square images
        if position == 0:                   # all classes, one occluded (retried until laid out)
            objects = []
            while len(objects) < 3 or len(objects[0]['parts']) < 2:
                objects = make_objects(rng, w, h, 3, classes=rng.permutation(3), occlude_first=True, cut_prob=0,
                                       max_size=0.4 * min(w, h))
        elif position == 1:
            objects = []
            while not objects or 'crowd' not in objects[0]:
                objects = make_objects(rng, w, h, int(rng.randint(1, 3)), crowd=True)
        elif position == 2 or rng.rand() < 0.08:
            objects = []
        else:
            objects = make_objects(rng, w, h, int(rng.randint(1, 5)), crowd=rng.rand() < 0.15)
        image, masks = render(rng, w, h, objects)
        file_name = f'{image_id:012d}.jpg'
        cv2.imwrite(os.path.join(img_dir, file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append(dict(license=int(rng.randint(1, 4)), file_name=file_name, height=h, width=w,
                           date_captured='2013-11-14 16:28:13', id=image_id))
        for obj, mask in zip(objects, masks):
            if mask.any():
                annotations.append(coco_annotation(obj, mask, int(next(ann_ids)), image_id))
        if degenerate and position == 3:
            # as real train2017 has (annotation 918: area 0, a box of height 0, a flat polygon)
            x, y = round(float(rng.uniform(10, w - 20)), 2), round(float(rng.uniform(10, h - 10)), 2)
            annotations.append(dict(segmentation=[[x, y, x, y, x + 1.03, y, x + 1.03, y]], area=0.0, iscrowd=0,
                                    image_id=image_id, bbox=[x, y, 1.03, 0.0], category_id=CATEGORY_IDS[DISC],
                                    id=int(next(ann_ids))))
    return dict(
        info=dict(description='toy COCO-format shapes (attn_plugins tools/make_toy_coco.py)', url='',
                  version='1.0', year=2017, contributor='attn_plugins', date_created='2017/09/01'),
        licenses=[dict(url='http://creativecommons.org/licenses/by/2.0/', id=i + 1, name=name) for i, name in
                  enumerate(('Attribution License', 'Attribution-ShareAlike License', 'Attribution-NoDerivs License'))],
        images=images, annotations=annotations, categories=[dict(c) for c in CATEGORIES])


def make_toy_coco(root: str, num_train: int = 64, num_val: int = 16, seed: int = 0, sides=SIDES) -> dict:
    """Write the toy COCO dataset under `root`; returns {'train': json path, 'val': json path}."""
    if min(num_train, num_val) < 1:
        raise ValueError(f"make_toy_coco: num_train and num_val must be >= 1, got {num_train}, {num_val}")
    if not (16 <= sides[0] <= sides[1]):
        raise ValueError(f"make_toy_coco: sides must be (min, max) with 16 <= min <= max, got {sides}")
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    ann_ids = iter(range(100001, 10 ** 8, 3))       # unique over both splits
    paths = {}
    for split, count in (('train', num_train), ('val', num_val)):
        data = write_split(root, split, count, rng, sides, ann_ids, degenerate=split == 'train')
        paths[split] = os.path.join(root, 'annotations', f'instances_{split}2017.json')
        with open(paths[split], 'w') as f:
            json.dump(data, f)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy_coco')
    parser.add_argument('--train', type=int, default=64, help='training images')
    parser.add_argument('--val', type=int, default=16, help='validation images')
    parser.add_argument('--sides', type=int, nargs=2, default=SIDES, metavar=('MIN', 'MAX'),
                        help='image width and height are drawn from [MIN, MAX]')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = make_toy_coco(args.out, args.train, args.val, args.seed, tuple(args.sides))
    except ValueError as err:
        parser.error(str(err))
    counts = {}
    for split, path in paths.items():
        with open(path) as f:
            data = json.load(f)
        counts[split] = (len(data['images']), len(data['annotations']))
    print(f"[toy coco] wrote {counts['train'][0]} train / {counts['val'][0]} val images "
          f"({counts['train'][1]} / {counts['val'][1]} annotations) to {args.out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

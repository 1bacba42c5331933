#!/usr/bin/env python
"""Write a small detection dataset in the real Pascal VOC layout (VOC2007 + VOC2012).

    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg          ids as VOC2007's: 000005, 000007, ...
    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml
    <root>/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt and <class>_<split>.txt
    <root>/VOCdevkit/VOC2012/...                          ids as VOC2012's: 2008_000008, ...; no test split

as mmdet's `configs/_base_/datasets/voc0712.py` reads it: VOC2007 + VOC2012 trainval for training,
VOC2007 test for testing. The XML is VOC's: folder, filename, source, size (width, height, depth),
segmented and per object name, pose, truncated, difficult and bndbox (xmin, ymin, xmax, ymax: 1-based
integer pixels, the first and last pixel of the object). Per-class lists hold `<id> 1` (present),
`<id> -1` (absent) or `<id>  0` (only difficult instances), as VOC's do.

Objects are real VOC classes drawn as shapes a small detector can learn: 'car' rectangles, 'sheep'
discs, 'boat' triangles (colours and occluding bars as in tools/make_toy_coco.py). Objects cut by the
image border are `truncated`; small or faded ones are `difficult` (VOCMetric ignores them). As in
VOC, every image holds at least one object. Deterministic for a seed.

    python tools/make_toy_voc.py --out data/toy_voc [--voc2007 32 16] [--voc2012 32] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
from xml.etree import ElementTree as ET

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.make_toy_coco import SIDES, make_objects, render  # noqa: E402

CLASSES = ('car', 'sheep', 'boat')         # drawn as the toy COCO square, disc and triangle
POSES = ('Unspecified', 'Left', 'Right', 'Frontal', 'Rear')


def voc_objects(objects, masks, rng) -> list[dict]:
    """VOC object records (name, pose, truncated, difficult, 1-based bndbox) of rendered objects."""
    records = []
    for obj, mask in zip(objects, masks):
        ys, xs = np.nonzero(mask)
        if not len(xs):
            continue
        records.append(dict(name=CLASSES[obj['cls']], pose=POSES[rng.randint(len(POSES))],
                            truncated=int(obj['cut']), difficult=int(obj['small']),
                            bndbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
    return records


def voc_xml(year: str, image_id: str, width: int, height: int, records) -> ET.ElementTree:
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = f'VOC{year}'
    ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
    source = ET.SubElement(root, 'source')
    ET.SubElement(source, 'database').text = f'The VOC{year} Database'
    ET.SubElement(source, 'annotation').text = f'PASCAL VOC{year}'
    ET.SubElement(source, 'image').text = 'toy shapes'
    size = ET.SubElement(root, 'size')
    for key, value in (('width', width), ('height', height), ('depth', 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, 'segmented').text = '0'
    for rec in records:
        obj = ET.SubElement(root, 'object')
        for key in ('name', 'pose', 'truncated', 'difficult'):
            ET.SubElement(obj, key).text = str(rec[key])
        box = ET.SubElement(obj, 'bndbox')
        for key, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), rec['bndbox']):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root, space='\t')
    return ET.ElementTree(root)


def write_year(root: str, year: str, splits: dict, rng, sides=SIDES) -> dict:
    """One VOC<year> folder; `splits` maps a split name to its image count. Returns
    {split: [image ids]} (trainval is train + val when both are given)."""
    base = os.path.join(root, 'VOCdevkit', f'VOC{year}')
    for sub in ('JPEGImages', 'Annotations', os.path.join('ImageSets', 'Main')):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    total = sum(splits.values())
    if year == '2007':
        numbers = np.sort(rng.choice(np.arange(1, 10000), size=total, replace=False))
        ids = [f'{n:06d}' for n in numbers]
    else:
        numbers = np.sort(rng.choice(np.arange(1, 8000), size=total, replace=False))
        ids = [f'{2008 + n // 2000}_{n % 2000:06d}' for n in numbers]
    ids = sorted(ids)
    order = rng.permutation(total)
    members, start, presence = {}, 0, {}
    for split, count in splits.items():
        members[split] = sorted(ids[i] for i in order[start:start + count])
        start += count
    for position, image_id in enumerate(ids):
        w, h = (int(v) for v in rng.randint(sides[0], sides[1] + 1, size=2))
        records = []
        while not records:       # every VOC image holds an object
            classes = rng.permutation(3) if position == 0 else None
            objects = make_objects(rng, w, h, int(rng.randint(1, 5)) if position else 3, classes=classes,
                                   cut_prob=0.2, small_prob=0.15)
            image, masks = render(rng, w, h, objects)
            records = voc_objects(objects, masks, rng)
        cv2.imwrite(os.path.join(base, 'JPEGImages', f'{image_id}.jpg'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        voc_xml(year, image_id, w, h, records).write(os.path.join(base, 'Annotations', f'{image_id}.xml'))
        presence[image_id] = {name: (1 if any(r['name'] == name and not r['difficult'] for r in records) else
                                     0 if any(r['name'] == name for r in records) else -1) for name in CLASSES}
    if 'train' in members and 'val' in members:
        members['trainval'] = sorted(members['train'] + members['val'])
    main = os.path.join(base, 'ImageSets', 'Main')
    for split, image_ids in members.items():
        with open(os.path.join(main, f'{split}.txt'), 'w') as f:
            f.write(''.join(f'{i}\n' for i in image_ids))
        for name in CLASSES:
            with open(os.path.join(main, f'{name}_{split}.txt'), 'w') as f:
                f.write(''.join(f'{i} {presence[i][name]:2d}\n' for i in image_ids))
    return members


def make_toy_voc(root: str, voc2007_trainval: int = 32, voc2007_test: int = 16, voc2012_trainval: int = 32,
                 seed: int = 0, sides=SIDES) -> dict:
    """Write VOCdevkit/VOC2007 (train/val/trainval/test) and VOCdevkit/VOC2012 (train/val/trainval)
    under `root`; returns {'VOC2007': {split: ids}, 'VOC2012': {split: ids}}."""
    for name, count in (('voc2007_trainval', voc2007_trainval), ('voc2007_test', voc2007_test),
                        ('voc2012_trainval', voc2012_trainval)):
        if count < 2 and name.endswith('trainval') or count < 1:
            raise ValueError(f"make_toy_voc: {name} must be >= {2 if name.endswith('trainval') else 1}, got {count}")
    rng = np.random.RandomState(seed)
    out = {}
    for year, trainval, test in (('2007', voc2007_trainval, voc2007_test), ('2012', voc2012_trainval, 0)):
        splits = dict(train=trainval // 2, val=trainval - trainval // 2)
        if test:
            splits['test'] = test
        out[f'VOC{year}'] = write_year(root, year, splits, rng, sides)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy_voc')
    parser.add_argument('--voc2007', type=int, nargs=2, default=(32, 16), metavar=('TRAINVAL', 'TEST'))
    parser.add_argument('--voc2012', type=int, default=32, metavar='TRAINVAL')
    parser.add_argument('--sides', type=int, nargs=2, default=SIDES, metavar=('MIN', 'MAX'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sets = make_toy_voc(args.out, *args.voc2007, args.voc2012, seed=args.seed, sides=tuple(args.sides))
    except ValueError as err:
        parser.error(str(err))
    print(f"[toy voc] wrote VOC2007 trainval {len(sets['VOC2007']['trainval'])} / test {len(sets['VOC2007']['test'])}"
          f" and VOC2012 trainval {len(sets['VOC2012']['trainval'])} images to {os.path.join(args.out, 'VOCdevkit')}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

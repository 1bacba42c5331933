#!/usr/bin/env python
"""Write a toy CIFAR-10 / CIFAR-100 in the original python format (the layout a user's download has).

    python tools/make_toy_cifar.py [--out data] [--dataset cifar10|cifar100|both] [--train N] [--test N] [--seed S]

writes OUT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} and/or
OUT/cifar-100-python/{train, test, meta}: byte for byte the pickle stream Python 2's
`cPickle.dump(obj, f, 2)` writes for the real files (byte-string keys and values as Python 2 `str`
opcodes, numpy arrays through `numpy.core.multiarray._reconstruct`), which Python 3's pickler cannot
produce (it writes bytes as `_codecs.encode` calls in protocol 2).

Images: each 32x32 image shows one object (one of ten SHAPES, 12-16 px, anywhere) among 3-5 clutter
bars (1 px wide, 3-7 px long) on a noisy grey background, object and clutter in one random hue per image, so colour
says nothing about the class: a model has to find the object and tell its shape. CIFAR-10 class c =
SHAPES[c]; CIFAR-100 fine class c = a large object SHAPES[c // 10] (12-15 px) with a small one
SHAPES[c % 10] (7-9 px), coarse class c // 5. Labels are balanced.
"""
from __future__ import annotations

import argparse
import colorsys
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_plugins.datasets.cifar import LAYOUTS, encode_images  # noqa: E402

SHAPES = ('square', 'disk', 'triangle', 'cross', 'ring', 'frame', 'saltire', 'tee', 'ell', 'diamond')
CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


class Py2Pickler:
    """The protocol-2 stream of Python 2's cPickle for dicts, lists, tuples, str (here: bytes),
    ints, bools, None and numpy uint8 arrays, with cPickle's memo puts."""

    def __init__(self):
        self.out = bytearray(b'\x80\x02')
        self.memo = 0

    def dumps(self, obj) -> bytes:
        self.save(obj)
        self.out += b'.'
        return bytes(self.out)

    def put(self) -> None:
        self.memo += 1
        self.out += b'q' + bytes([self.memo]) if self.memo < 256 else b'r' + struct.pack('<I', self.memo)

    def save(self, obj) -> None:
        if obj is None:
            self.out += b'N'
        elif isinstance(obj, bool):
            self.out += b'\x88' if obj else b'\x89'
        elif isinstance(obj, int):
            self.save_int(obj)
        elif isinstance(obj, str):
            self.save(obj.encode('utf-8'))
        elif isinstance(obj, bytes):
            self.out += (b'U' + bytes([len(obj)]) if len(obj) < 256 else b'T' + struct.pack('<I', len(obj))) + obj
            self.put()
        elif isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, list):
            self.out += b']'
            self.put()
            self.save_batches(obj, b'a', b'e')
        elif isinstance(obj, dict):
            self.out += b'}'
            self.put()
            self.save_batches(list(obj.items()), b's', b'u')
        elif isinstance(obj, np.ndarray):
            self.save_array(obj)
        else:
            raise TypeError(f"Py2Pickler: {type(obj).__name__} is not in CIFAR files")

    def save_int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b'K' + bytes([value])
        elif 0 <= value < 65536:
            self.out += b'M' + struct.pack('<H', value)
        else:
            self.out += b'J' + struct.pack('<i', value)

    def save_tuple(self, items: tuple, memo: bool = True) -> None:
        if not items:
            self.out += b')'
            return
        if len(items) <= 3:
            for item in items:
                self.save(item)
            self.out += {1: b'\x85', 2: b'\x86', 3: b'\x87'}[len(items)]
        else:
            self.out += b'('
            for item in items:
                self.save(item)
            self.out += b't'
        if memo:
            self.put()

    def save_batches(self, items: list, one: bytes, many: bytes) -> None:
        """cPickle's batched APPENDS / SETITEMS (1000 a batch; a lone item with APPEND / SETITEM)."""
        for start in range(0, len(items), 1000):
            batch = items[start:start + 1000]
            if len(batch) > 1:
                self.out += b'('
            for item in batch:
                for part in (item if one == b's' else (item,)):
                    self.save(part)
            self.out += many if len(batch) > 1 else one

    def save_global(self, module: str, name: str) -> None:
        self.out += f'c{module}\n{name}\n'.encode()
        self.put()

    def save_array(self, array: np.ndarray) -> None:
        """numpy 1.x under Python 2: _reconstruct(ndarray, (0,), 'b') then BUILD with
        (1, shape, dtype, is_fortran, raw bytes); the dtype as dtype('u1', 0, 1) + BUILD state."""
        if array.dtype != np.uint8:
            raise TypeError("Py2Pickler: CIFAR arrays are uint8")
        self.save_global('numpy.core.multiarray', '_reconstruct')
        self.save_global('numpy', 'ndarray')
        self.out += b'K\x00\x85'                    # (0,)
        self.save(b'b')
        self.out += b'\x87R'
        self.put()
        self.out += b'('
        self.save_int(1)
        self.save_tuple(tuple(array.shape), memo=False)
        self.save_global('numpy', 'dtype')
        self.save(b'u1')
        self.out += b'K\x00K\x01\x87R'
        self.put()
        self.out += b'(K\x03'
        self.save(b'|')
        self.out += b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb'
        self.out += b'\x89'                         # not Fortran order
        self.save(np.ascontiguousarray(array).tobytes())
        self.out += b'tb'


def write_pickle(path: str, obj) -> None:
    with open(path, 'wb') as f:
        f.write(Py2Pickler().dumps(obj))


def hue_colour(hue: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.9, 0.95)) * 255


def shape_mask(shape: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    centre, radius = size / 2, size / 2
    dist = np.hypot(yy - centre, xx - centre)
    band = max(2, size // 4)
    half = band / 2 + 0.5
    masks = {
        'square': np.ones((size, size), bool),
        'disk': dist <= radius,
        'triangle': (xx >= (size - yy) / 2) & (xx <= (size + yy) / 2),
        'cross': (np.abs(yy - centre) < half) | (np.abs(xx - centre) < half),
        'ring': (dist <= radius) & (dist >= radius - band),
        'frame': (np.minimum(np.minimum(yy, size - yy), np.minimum(xx, size - xx)) < band),
        'saltire': (np.abs(yy - xx) < half * 1.2) | (np.abs(yy + xx - size) < half * 1.2),
        'tee': (yy < band + 0.5) | (np.abs(xx - centre) < half),
        'ell': (xx < band + 0.5) | (yy > size - band - 0.5),
        'diamond': np.abs(yy - centre) + np.abs(xx - centre) <= radius,
    }
    return masks[SHAPES[shape]]


def draw(rng: np.random.Generator, shapes: list[tuple[int, int, int]]) -> np.ndarray:
    """A noisy grey background, 3-5 clutter bars and the objects (shape, min size, max size),
    all in one random hue per image: the hue and the colour statistics say nothing about the class."""
    image = rng.normal(rng.uniform(60, 180), 12, (32, 32, 3))
    colour = hue_colour(rng.uniform()) * rng.uniform(0.7, 1.0)
    for _ in range(int(rng.integers(3, 6))):         # clutter: short bars in the object's colour
        h, w = (1, int(rng.integers(3, 8)))[::int(rng.choice([1, -1]))]
        y, x = int(rng.integers(0, 33 - h)), int(rng.integers(0, 33 - w))
        image[y:y + h, x:x + w] = colour + rng.normal(0, 10, (h, w, 3))
    for shape, low, high in shapes:
        size = int(rng.integers(low, high + 1))
        y, x = rng.integers(0, 33 - size, 2)
        mask = shape_mask(shape, size)
        image[y:y + size, x:x + size][mask] = colour + rng.normal(0, 10, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_split(rng: np.random.Generator, count: int, dataset: str):
    """(images (N, 32, 32, 3) uint8, fine labels, coarse labels or None), labels balanced."""
    classes = 10 if dataset == 'cifar10' else 100
    fine = rng.permutation(np.arange(count) % classes)
    images = np.empty((count, 32, 32, 3), np.uint8)
    for i, label in enumerate(fine):
        if dataset == 'cifar10':
            images[i] = draw(rng, [(int(label), 12, 16)])
        else:
            images[i] = draw(rng, [(int(label) // 10, 12, 15), (int(label) % 10, 7, 9)])
    return images, fine, (fine // 5 if dataset == 'cifar100' else None)


def filenames(labels, names, start: int) -> list[bytes]:
    return [f'{names[label]}_s_{start + i:06d}.png'.encode() for i, label in enumerate(labels)]


def write_cifar10(out: str, train: int, test: int, rng: np.random.Generator) -> str:
    folder = os.path.join(out, LAYOUTS['cifar10']['folder'])
    os.makedirs(folder, exist_ok=True)
    images, labels, _ = make_split(rng, train, 'cifar10')
    parts = np.array_split(np.arange(train), 5)
    for number, (name, part) in enumerate(zip(LAYOUTS['cifar10']['train'], parts), start=1):
        write_pickle(os.path.join(folder, name), {
            b'batch_label': f'training batch {number} of 5'.encode(),
            b'labels': [int(v) for v in labels[part]],
            b'data': encode_images(images[part]),
            b'filenames': filenames(labels[part], CIFAR10_NAMES, int(part[0]) if len(part) else 0)})
    images, labels, _ = make_split(rng, test, 'cifar10')
    write_pickle(os.path.join(folder, 'test_batch'), {
        b'batch_label': b'testing batch 1 of 1', b'labels': [int(v) for v in labels],
        b'data': encode_images(images), b'filenames': filenames(labels, CIFAR10_NAMES, train)})
    write_pickle(os.path.join(folder, 'batches.meta'), {
        b'num_cases_per_batch': int(len(parts[0])), b'label_names': [n.encode() for n in CIFAR10_NAMES],
        b'num_vis': 3072})
    return folder


def write_cifar100(out: str, train: int, test: int, rng: np.random.Generator) -> str:
    folder = os.path.join(out, LAYOUTS['cifar100']['folder'])
    os.makedirs(folder, exist_ok=True)
    fine_names = [f'{SHAPES[c // 10]}_with_{SHAPES[c % 10]}' for c in range(100)]
    coarse_names = [f'{SHAPES[c // 2]}_with_{"/".join(SHAPES[5 * (c % 2):5 * (c % 2) + 5])}' for c in range(20)]
    for split, count, offset in (('train', train, 0), ('test', test, train)):
        images, fine, coarse = make_split(rng, count, 'cifar100')
        write_pickle(os.path.join(folder, split), {
            b'filenames': filenames(fine, fine_names, offset),
            b'batch_label': f'{split}ing batch 1 of 1'.encode(),
            b'fine_labels': [int(v) for v in fine], b'coarse_labels': [int(v) for v in coarse],
            b'data': encode_images(images)})
    write_pickle(os.path.join(folder, 'meta'), {
        b'fine_label_names': [n.encode() for n in fine_names],
        b'coarse_label_names': [n.encode() for n in coarse_names]})
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data', help='where cifar-10-batches-py / cifar-100-python go')
    parser.add_argument('--dataset', choices=['cifar10', 'cifar100', 'both'], default='both')
    parser.add_argument('--train', type=int, default=1000, help='training images (per dataset)')
    parser.add_argument('--test', type=int, default=200, help='test images (per dataset)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 5 or args.test < 1:
        parser.error('--train must be at least 5 (five CIFAR-10 batches) and --test at least 1')
    rng = np.random.default_rng(args.seed)
    if args.dataset in ('cifar10', 'both'):
        print(write_cifar10(args.out, args.train, args.test, rng))
    if args.dataset in ('cifar100', 'both'):
        print(write_cifar100(args.out, args.train, args.test, rng))
    return 0


if __name__ == '__main__':
    sys.exit(main())

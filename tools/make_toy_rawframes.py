"""Write a toy action-recognition dataset in mmaction2's rawframes layout, whose classes differ
only in motion.

    <out>/rawframes/<video>/img_00001.jpg ...    frames of each clip (1-based, as mmaction2 expects)
    <out>/train.txt, <out>/val.txt               one clip a line: `<video> <total_frames> <label>`
    <out>/classes.txt                            class names, one a line (label = line index)

Each clip shows one Gaussian blob of fixed size and colour on a noisy background, moving by
`speed` pixels a frame on a torus (it leaves one side and comes back on the other). The class is
the direction: 0 right, 1 left, 2 down, 3 up. The start position is uniform on the torus, so
in every class and at every frame index the blob's position is uniform: a single frame carries
no information about the class, and only the order of the frames tells the direction (with the
frames shuffled, at most the axis of motion is left). `registry_tests/test_video.py` checks both.

With `--classes axis` there are two classes, 0 horizontal and 1 vertical, each clip moving either way
along its axis (sign drawn at random): still no single frame tells the class, but a model blind to the
order of frames (the C2D toy, `registry_tests/test_video_c2d.py`) can learn it.

    python tools/make_toy_rawframes.py --out data/toy_rawframes [--train-per-class 32] [--val-per-class 16]
                                       [--classes {direction,axis}]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

CLASSES = ('right', 'left', 'down', 'up')
# (dy, dx) per frame for each class, in units of `speed`
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))
# --classes axis: class -> the two directions (indices into DIRECTIONS) a clip of it may take
AXIS_CLASSES = ('horizontal', 'vertical')
AXIS_DIRECTIONS = ((0, 1), (2, 3))


def render_clip(rng: np.random.Generator, direction: int, frames: int, size: int, speed: float,
                sigma: float, noise: float) -> np.ndarray:
    """(frames, size, size, 3) uint8 frames of one clip moving in DIRECTIONS[direction]."""
    start = rng.uniform(0, size, 2)                                   # (y, x), uniform on the torus
    step = np.asarray(DIRECTIONS[direction], dtype=float) * speed
    grid = np.arange(size, dtype=float)
    colour = np.array([230.0, 200.0, 60.0])
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        centre = (start + t * step) % size
        # torus distance, so the blob wraps round the edges without a seam
        dy = np.abs(grid - centre[0])
        dx = np.abs(grid - centre[1])
        dy, dx = np.minimum(dy, size - dy), np.minimum(dx, size - dx)
        blob = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * sigma ** 2))
        image = 30.0 + blob[..., None] * (colour - 30.0) + rng.normal(0, noise, (size, size, 3))
        clip[t] = np.clip(image, 0, 255).astype(np.uint8)
    return clip


def write_split(out: str, split: str, per_class: int, rng: np.random.Generator, frames: int, size: int,
                speed: float, sigma: float, noise: float, classes: str = 'direction') -> list[tuple[str, int, int]]:
    from PIL import Image
    names = CLASSES if classes == 'direction' else AXIS_CLASSES
    labels = rng.permutation(np.repeat(np.arange(len(names)), per_class))
    rows = []
    for index, label in enumerate(labels.tolist()):
        video = f'{split}_{index:05d}'       # names say nothing about the class
        folder = os.path.join(out, 'rawframes', video)
        os.makedirs(folder, exist_ok=True)
        direction = label if classes == 'direction' else int(rng.choice(AXIS_DIRECTIONS[label]))
        for t, frame in enumerate(render_clip(rng, direction, frames, size, speed, sigma, noise)):
            Image.fromarray(frame).save(os.path.join(folder, f'img_{t + 1:05d}.jpg'), quality=95)
        rows.append((video, frames, label))
    with open(os.path.join(out, f'{split}.txt'), 'w') as f:
        f.writelines(f'{video} {total} {label}\n' for video, total, label in rows)
    return rows


def make_dataset(out: str, train_per_class: int = 32, val_per_class: int = 16, frames: int = 12, size: int = 32,
                 speed: float = 2.0, sigma: float = 2.5, noise: float = 8.0, seed: int = 0,
                 classes: str = 'direction') -> dict:
    """Write the dataset; returns {'train': rows, 'val': rows} with rows (video, total_frames, label)."""
    if classes not in ('direction', 'axis'):
        raise ValueError(f"--classes: expected 'direction' (right/left/down/up) or 'axis' "
                         f"(horizontal/vertical), got {classes!r}")
    if frames < 2:
        raise ValueError(f"--frames: motion needs at least 2 frames, got {frames}")
    if size < 8:
        raise ValueError(f"--size: expected at least 8 pixels, got {size}")
    if not 0 < speed < size / 2:
        raise ValueError(f"--speed: expected 0 < speed < size / 2 = {size / 2} pixels a frame (faster motion "
                         f"on the torus is ambiguous in direction), got {speed}")
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'classes.txt'), 'w') as f:
        f.writelines(f'{name}\n' for name in (CLASSES if classes == 'direction' else AXIS_CLASSES))
    return {split: write_split(out, split, n, rng, frames, size, speed, sigma, noise, classes)
            for split, n in (('train', train_per_class), ('val', val_per_class))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/toy_rawframes')
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=16)
    parser.add_argument('--frames', type=int, default=12, help='frames per clip')
    parser.add_argument('--size', type=int, default=32, help='frame side in pixels')
    parser.add_argument('--speed', type=float, default=2.0, help='pixels a frame')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--classes', choices=('direction', 'axis'), default='direction',
                        help='direction: right/left/down/up (4 classes); axis: horizontal/vertical (2 classes)')
    args = parser.parse_args(argv)
    try:
        rows = make_dataset(args.out, args.train_per_class, args.val_per_class, args.frames, args.size,
                            args.speed, seed=args.seed, classes=args.classes)
    except ValueError as err:
        print(f"make_toy_rawframes.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows['train'])} train and {len(rows['val'])} val clips to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

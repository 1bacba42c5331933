#!/usr/bin/env python
"""Write a small MPIIFaceGaze HDF5 file in the community layout, with synthetic faces (deterministic for a seed).

    pXX/image/NNNN   (S, S, 3) uint8, BGR channel order (as the release's images)
    pXX/gaze/NNNN    (2,) float64 gaze (pitch, yaw), radians
    pXX/pose/NNNN    (2,) float64 head pose (pitch, yaw), radians

(the layout hysts/pytorch_mpiigaze's preprocess_mpiifacegaze.py writes; see
attn_plugins/datasets/mpiifacegaze.py). Each face is an ellipse with hair, two large cartoon
eyes, nose and mouth, drawn with soft (anti-aliased) edges. The irises shift inside the eyes
along the image-plane part (x right, y down) of the gaze vector (-cos p sin y, -sin p,
-cos p cos y): a positive yaw moves them left, a positive pitch up. The inner face (eyes, nose,
mouth) shifts with the head pose. The gaze is the person's mean plus a weak share of the head pose
(POSE_COUPLING) plus the eyes' own part: pose explains only a few % of the gaze variance, so a
model has to read the irises (a pose-only predictor is about as bad as the mean gaze). Persons
differ in face shape, skin, hair, eye spacing and iris colour; samples in position, scale,
colours, lighting, background and noise.

    python tools/make_toy_mpiifacegaze.py --out data/toy_mpiifacegaze/MPIIFaceGaze.h5 \\
        --persons 5 --per-person 100 --size 448
"""
from __future__ import annotations

import argparse
import os

import numpy as np

MAX_PERSONS = 15            # p00 ... p14, as the release
POSE_COUPLING = 0.3         # gaze = person's mean + POSE_COUPLING * head pose + the eyes' own part
IRIS_GAIN = 2.5             # iris shift / eye half-width per unit of the gaze vector's x (y: half-height)
SKIN_DARK, SKIN_LIGHT = np.array([95., 60., 45.]), np.array([240., 205., 180.])   # RGB


def _ellipse(xx, yy, cx, cy, rx, ry, pixel):
    """Soft coverage in [0, 1] of an ellipse (edge about one pixel wide)."""
    radius = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip(0.5 - (radius - 1.0) * min(rx, ry) / pixel, 0.0, 1.0)


def _paint(image, alpha, colour):
    image *= 1.0 - alpha[..., None]
    image += alpha[..., None] * np.asarray(colour, np.float32)


def _unit_xy(angles):
    """Image-plane part (x right, y down) of the gaze vector of (pitch, yaw)."""
    pitch, yaw = angles
    return -np.cos(pitch) * np.sin(yaw), -np.sin(pitch)


def make_person(rng: np.random.Generator) -> dict:
    return dict(face_rx=rng.uniform(0.60, 0.68), face_ry=rng.uniform(0.66, 0.76),
                skin=SKIN_DARK + rng.uniform() * (SKIN_LIGHT - SKIN_DARK) + rng.normal(0, 8, 3),
                hair=rng.uniform(10, 90) * rng.uniform(0.6, 1.2, 3),
                eye_dx=rng.uniform(0.29, 0.32), eye_y=rng.uniform(-0.20, -0.12),
                eye_rx=rng.uniform(0.24, 0.27), eye_ry=rng.uniform(0.15, 0.17),
                iris=rng.uniform(20, 90, 3), gaze_mean=rng.normal(0, 0.05, 2))


def render_face(rng: np.random.Generator, person: dict, gaze, pose, size: int) -> np.ndarray:
    """An RGB (size, size, 3) uint8 face."""
    pixel = 2.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * pixel - 1.0
    xx, yy = np.meshgrid(coords, coords)
    base = rng.uniform(30, 220, 3)
    image = np.empty((size, size, 3), np.float32)
    image[:] = base + (xx[..., None] * rng.uniform(-40, 40, 3))          # background with a gradient
    scale = rng.uniform(0.93, 1.07)
    cx, cy = rng.normal(0, 0.03, 2)
    hx, hy = _unit_xy(pose)                                               # head pose: inner face shifts
    fx, fy = cx + 0.5 * hx * scale, cy + 0.5 * hy * scale
    rx, ry = person['face_rx'] * scale, person['face_ry'] * scale
    skin, hair = person['skin'] * rng.uniform(0.85, 1.15, 3), person['hair'] * rng.uniform(0.8, 1.25, 3)
    _paint(image, _ellipse(xx, yy, cx, cy - 0.06 * scale, rx * 1.08, ry * 1.02, pixel), hair)
    face = _ellipse(xx, yy, cx, cy, rx, ry, pixel)
    _paint(image, face * np.clip((yy - (cy - 0.5 * ry)) / (4 * pixel) + 0.5, 0, 1), skin)
    ex, ey = _unit_xy(gaze)                                               # gaze: irises shift
    erx, ery = person['eye_rx'] * scale, person['eye_ry'] * scale
    for side in (-1, 1):
        ecx, ecy = fx + side * person['eye_dx'] * scale, fy + person['eye_y'] * scale
        sclera = _ellipse(xx, yy, ecx, ecy, erx, ery, pixel)
        _paint(image, sclera, (235, 235, 230))
        icx, icy = ecx + IRIS_GAIN * erx * ex, ecy + IRIS_GAIN * ery * ey
        ir = 0.7 * ery
        _paint(image, sclera * _ellipse(xx, yy, icx, icy, ir, ir, pixel), person['iris'])
        _paint(image, sclera * _ellipse(xx, yy, icx, icy, 0.45 * ir, 0.45 * ir, pixel), (10, 10, 10))
        _paint(image, 0.6 * _ellipse(xx, yy, ecx, ecy - 1.9 * ery, 1.1 * erx, 0.3 * ery, pixel), hair)
    _paint(image, 0.5 * _ellipse(xx, yy, fx + 0.3 * hx, fy + 0.12 * scale + 0.3 * hy, 0.07 * scale, 0.11 * scale,
                                 pixel), skin * 0.6)
    _paint(image, _ellipse(xx, yy, fx, fy + 0.40 * scale, 0.18 * scale, 0.045 * scale, pixel), (120, 40, 50))
    light = rng.uniform(0.7, 1.15) * (1 + rng.uniform(-0.25, 0.25) * xx)   # brightness and side lighting
    image = image * light[..., None] + rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_angles(rng: np.random.Generator, person: dict) -> tuple[np.ndarray, np.ndarray]:
    """(gaze, pose) (pitch, yaw) radians, in the range of the normalised data (about ±25°)."""
    pose = np.clip(rng.normal(0, [0.08, 0.12]), -0.25, 0.25)
    gaze = np.clip(person['gaze_mean'] + POSE_COUPLING * pose + rng.normal(0, [0.15, 0.18]), -0.45, 0.45)
    return gaze.astype(np.float64), pose.astype(np.float64)


def write(out: str, persons: int, per_person: int, size: int, seed: int = 0) -> None:
    import h5py
    if not 1 <= persons <= MAX_PERSONS:
        raise SystemExit(f"--persons: expected 1 to {MAX_PERSONS} (p00 ... p14), got {persons}")
    if per_person < 1 or size < 16:
        raise SystemExit("--per-person must be >= 1 and --size >= 16")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with h5py.File(out, 'w') as f:
        for p in range(persons):
            rng = np.random.default_rng([seed, p])
            person = make_person(rng)
            for index in range(per_person):
                gaze, pose = sample_angles(rng, person)
                rgb = render_face(rng, person, gaze, pose, size)
                f.create_dataset(f'p{p:02d}/image/{index:04d}', data=rgb[..., ::-1])     # stored BGR
                f.create_dataset(f'p{p:02d}/pose/{index:04d}', data=pose)
                f.create_dataset(f'p{p:02d}/gaze/{index:04d}', data=gaze)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/toy_mpiifacegaze/MPIIFaceGaze.h5', help='the HDF5 file to write')
    parser.add_argument('--persons', type=int, default=5, help=f'persons p00 ... (at most {MAX_PERSONS})')
    parser.add_argument('--per-person', type=int, default=100, help='samples per person (the release: 3000)')
    parser.add_argument('--size', type=int, default=448, help='face side in pixels (the release: 448)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='overwrite an existing file')
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    write(args.out, args.persons, args.per_person, args.size, args.seed)
    print(f"wrote {args.out}: {args.persons} persons x {args.per_person} faces of {args.size}x{args.size}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

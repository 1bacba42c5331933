"""MPIIFaceGaze, normalised faces, as the community's HDF5 file (`MPIIFaceGaze.h5`), read lazily with h5py.

Layout relied on (written by tools/preprocess_mpiifacegaze.py of hysts/pytorch_mpiigaze, read by
its gaze_estimation/datasets/mpiifacegaze.py): one group per person `p00` ... `p14`, each with
three groups of one dataset per sample, keys `0000` ... `2999`:

    pXX/image/NNNN   (448, 448, 3) uint8, height x width x channels, channels in BGR order
    pXX/gaze/NNNN    (2,) float, gaze (pitch, yaw) in radians
    pXX/pose/NNNN    (2,) float, head pose (pitch, yaw) in radians

That script takes `Data/data` (3000 x 3 x 448 x 448 uint8) and `Data/label` (3000 x 16: columns
0-1 gaze, 2-3 head pose) of the release's `pXX.mat` (MATLAB v7.3, i.e. HDF5), transposes the
images to H x W x C and keeps the channels as they are: the release's page says the images were
saved with the RGB channels swapped (for Caffe), and pytorch_mpiigaze treats them as BGR (it
reverses the first conv of ImageNet weights). Its preprocessing writes the 448 faces unchanged;
other copies resize them (224 x 224): any square size is read.
Angles: (pitch, yaw) -> unit vector (-cos p sin y, -sin p, -cos p cos y) (pytorch_mpiigaze's
`convert_to_unit_vector`; `attn_plugins.models.gaze.gaze_vector`).
Evaluation in the paper: leave one person out (15 folds), mean angular error in degrees.

Person groups are the top-level groups named `pNN` (p00 ... p14 in the release; any two digits
are read). pytorch_mpiigaze never lists the file: it opens `p00` ... `p14` by name, so other
top-level entries (a 'meta' group or dataset a user added) are not persons there, and here they are
ignored too (not read, not counted); naming one in `persons` is an error.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import ConfigError, did_you_mean

PERSONS = tuple(f'p{i:02d}' for i in range(15))
FIELDS = ('image', 'gaze', 'pose')
CHANNEL_ORDERS = ('rgb', 'bgr')
SPLITS = ('train', 'test', 'all')
PERSON_GROUP = re.compile(r'p\d{2}')      # p00 ... p14: the only top-level groups read as persons
MAX_SAMPLE_BYTES = 64 << 20                # one sample's dataset: a 448x448x3 face is 0.6 MiB


def _h5py():
    try:
        import h5py
    except ImportError as err:      # pragma: no cover - h5py is the `gaze` extra
        raise ConfigError("MPIIFaceGaze: reading the HDF5 file needs h5py (pip install 'attn_plugins[gaze]')") from err
    return h5py


def _open(path: str):
    h5py = _h5py()
    if not os.path.isfile(path):
        raise ConfigError(f"MPIIFaceGaze: no file {path!r} (expected the HDF5 file, e.g. MPIIFaceGaze.h5)")
    try:
        return h5py.File(path, 'r')
    except OSError as err:
        raise ConfigError(f"MPIIFaceGaze: {path!r} is not a readable HDF5 file ({err})") from None


def _person_groups(f) -> list[str]:
    """The top-level groups named pNN, sorted; any other entry is not a person (module docstring)."""
    return sorted(k for k in f.keys() if PERSON_GROUP.fullmatch(k) and isinstance(f[k], _h5py().Group))


def persons_in_file(path: str) -> list[str]:
    """The person groups (`pNN`) of the file, sorted; other top-level entries are ignored."""
    with _open(path) as f:
        return _person_groups(f)


def leave_one_person_out(persons: Sequence[str], test_person: str, where: str = 'test_person') -> tuple[list[str], list[str]]:
    """(train persons, [test_person]) for one fold."""
    persons = list(persons)
    if test_person not in persons:
        raise ConfigError(f"{where}: {test_person!r} is not a person of the file ({', '.join(persons)})"
                          f"{did_you_mean(test_person, persons)}")
    return [p for p in persons if p != test_person], [test_person]


class MPIIFaceGaze(Dataset):
    """Samples of some persons of an MPIIFaceGaze HDF5 file, read one at a time.

    Args:
        path: the HDF5 file.
        persons: the persons to read (default: every `pXX` group of the file); or
        test_person + split: leave-one-person-out fold: split 'train' reads every other person,
            'test' reads `test_person` only. split 'all' (the default) reads every person and
            takes no test_person (an error, not an ignored key: the fold would not be held out).
        channel_order: 'rgb' (default: the stored BGR channels reversed) or 'bgr' (as stored).

    Item i: dict(image=(3, H, W) uint8 tensor, gaze=(2,) float32 (pitch, yaw) rad, pose=(2,)
    float32, person='pXX', index=int (the sample's key)). The index is built from the key
    names at construction (no data read); the file is opened on first access in each process.
    A missing person, field group or per-sample dataset is a ConfigError naming file and key; so is
    a sample dataset over MAX_SAMPLE_BYTES (checked from its metadata, before it is read).
    """

    def __init__(self, path: str, persons: Sequence[str] | None = None, test_person: str | None = None,
                 split: str = 'all', channel_order: str = 'rgb'):
        if channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order: expected 'rgb' or 'bgr', got {channel_order!r}")
        if split not in SPLITS:
            raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}{did_you_mean(split, SPLITS)}")
        self.path, self.channel_order = os.fspath(path), channel_order
        with _open(self.path) as f:
            available = _person_groups(f)
            if not available:
                others = ', '.join(sorted(f.keys())) or 'nothing'
                raise ConfigError(f"MPIIFaceGaze: {self.path!r} has no person groups (expected groups p00 ... p14; "
                                  f"it holds {others})")
            if persons is not None and test_person is not None:
                raise ConfigError("MPIIFaceGaze: give either `persons` or `test_person` (with `split`), not both")
            if split == 'all' and test_person is not None:
                raise ConfigError(f"split: 'all' reads every person, {test_person!r} included, so test_person="
                                  f"{test_person!r} would be ignored; use split 'train' or 'test' for its "
                                  "leave-one-person-out fold, or drop test_person to read every person")
            if split != 'all' and test_person is None:
                raise ConfigError(f"split: {split!r} needs `test_person` (the person left out), e.g. test_person='p00'")
            if persons is None:
                persons = available
                if test_person is not None:
                    train, test = leave_one_person_out(available, test_person)
                    persons = train if split == 'train' else test
            elif isinstance(persons, str):
                raise ConfigError(f"persons: expected a list of person groups, e.g. ['p00'], got the string {persons!r}")
            self.persons = list(persons)
            self.samples: list[tuple[str, str]] = []
            for person in self.persons:
                self.samples += [(person, key) for key in self._keys(f, person, available)]
        self._file = None
        self._pid = None

    def _keys(self, f, person: str, available: list[str]) -> list[str]:
        if person not in available:
            what = (f": {person!r} is not a person group (persons are the pNN groups" if person in f
                    else f" has no group {person!r} (its persons")
            raise ConfigError(f"MPIIFaceGaze: {self.path!r}{what}: {', '.join(available)})"
                              f"{did_you_mean(person, available)}")
        keys = {}
        for field in FIELDS:
            name = f'{person}/{field}'
            if name not in f or not isinstance(f[name], _h5py().Group):
                raise ConfigError(f"MPIIFaceGaze: {self.path!r} has no group {name!r} (expected {person}/image, "
                                  f"{person}/gaze and {person}/pose, one dataset per sample)")
            keys[field] = set(f[name].keys())
        for field in FIELDS[1:]:
            missing = sorted(keys['image'] - keys[field]) or sorted(keys[field] - keys['image'])
            if missing:
                where = field if missing[0] in keys['image'] else 'image'
                raise ConfigError(f"MPIIFaceGaze: {self.path!r} has no dataset {person}/{where}/{missing[0]!r} "
                                  f"({len(missing)} samples of {person} lack one of image/{field})")
        if not keys['image']:
            raise ConfigError(f"MPIIFaceGaze: {self.path!r}: {person}/image holds no samples")
        try:
            return sorted(keys['image'], key=int)
        except ValueError:
            bad = next(k for k in keys['image'] if not k.isdigit())
            raise ConfigError(f"MPIIFaceGaze: {self.path!r}: sample key {person}/image/{bad!r} is not a number "
                              "(expected 0000, 0001, ...)") from None

    def __len__(self) -> int:
        return len(self.samples)

    def _handle(self):
        if self._file is None or self._pid != os.getpid():   # one handle per process (dataloader workers)
            self._file, self._pid = _open(self.path), os.getpid()
        return self._file

    def _read(self, name: str, shape_check, expected: str) -> np.ndarray:
        f = self._handle()
        if name not in f:
            raise ConfigError(f"MPIIFaceGaze: {self.path!r} has no dataset {name!r}")
        node = f[name]
        if isinstance(node, _h5py().Dataset):      # size from the metadata before reading: a small compressed
            size = int(np.prod(node.shape, dtype=object)) * node.dtype.itemsize     # file can declare any shape
            if size > MAX_SAMPLE_BYTES:
                raise ConfigError(f"MPIIFaceGaze: {self.path!r}: {name} has shape {node.shape} and dtype {node.dtype} "
                                  f"({size / 2**20:.0f} MiB, more than the {MAX_SAMPLE_BYTES >> 20} MiB a sample may "
                                  f"take); expected {expected}")
        value = node[()] if isinstance(node, _h5py().Dataset) else None
        if not isinstance(value, np.ndarray) or not shape_check(value):
            what = (f"has shape {np.shape(value)} and dtype {value.dtype}" if isinstance(value, np.ndarray)
                    else f"is a {type(node).__name__ if value is None else type(value).__name__}")
            raise ConfigError(f"MPIIFaceGaze: {self.path!r}: {name} {what}; expected {expected}")
        return value

    def read_angles(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(gaze, pose) of sample `index`, float32 (pitch, yaw) radians, without reading the image."""
        person, key = self.samples[index]
        angles = [self._read(f'{person}/{field}/{key}',
                             lambda v: np.shape(v) == (2,) and np.issubdtype(v.dtype, np.floating)
                             and bool(np.all(np.abs(v) <= np.pi)),
                             '(2,) float (pitch, yaw) in radians, finite and within ±pi')
                  for field in ('gaze', 'pose')]
        return angles[0].astype(np.float32), angles[1].astype(np.float32)

    def gaze_array(self) -> np.ndarray:
        """(N, 2) gaze (pitch, yaw) of every sample, float32."""
        return np.stack([self.read_angles(i)[0] for i in range(len(self))]) if len(self) else np.zeros((0, 2), np.float32)

    def __getitem__(self, index: int) -> dict:
        person, key = self.samples[index]
        image = self._read(f'{person}/image/{key}',
                           lambda v: v.ndim == 3 and v.shape[2] == 3 and v.dtype == np.uint8,
                           '(H, W, 3) uint8')
        if self.channel_order == 'rgb':
            image = image[..., ::-1]
        gaze, pose = self.read_angles(index)
        return dict(image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                    gaze=torch.from_numpy(gaze), pose=torch.from_numpy(pose), person=person, index=int(key))

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_file'], state['_pid'] = None, None      # h5py handles do not pickle
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fold_persons(dataset: dict) -> tuple[str, frozenset] | None:
    """('only' | 'except', persons) an MPIIFaceGazeDataset config reads, known without the file."""
    persons, test_person, split = dataset.get('persons'), dataset.get('test_person'), dataset.get('split', 'all')
    if persons is not None and not isinstance(persons, str):
        return 'only', frozenset(persons)
    if test_person is None:
        return ('except', frozenset()) if split == 'all' else None
    if split == 'test':
        return 'only', frozenset([test_person])
    return ('except', frozenset([test_person])) if split == 'train' else None


def check_person_folds(cfg, loaders: Sequence[str] = ('train_dataloader', 'val_dataloader', 'test_dataloader')) -> None:
    """Leave-one-person-out: the persons an evaluation loader reads must not be trained on. With
    `--cfg-options train_dataloader.dataset.test_person=p03` alone, the val loader would still read
    p00, a training person, and report a training error as the fold's. A ConfigError naming the keys."""
    def dataset_of(name):
        loader = cfg.get(name) if name in loaders else None
        dataset = loader.get('dataset') if isinstance(loader, dict) else None
        return dataset if isinstance(dataset, dict) and dataset.get('type') == 'MPIIFaceGazeDataset' else None

    train = dataset_of('train_dataloader')
    train_fold = _fold_persons(train) if train is not None else None
    if train_fold is None:
        return
    for name in ('val_dataloader', 'test_dataloader'):
        dataset = dataset_of(name)
        fold = _fold_persons(dataset) if dataset is not None else None
        if fold is None:
            continue
        (train_kind, train_set), (kind, persons) = train_fold, fold
        if kind == 'only' and train_kind == 'only':
            shared = sorted(persons & train_set)
        elif kind == 'only':
            shared = sorted(persons - train_set)
        else:       # an evaluation of every person but some: it overlaps any training set but the excluded
            shared = sorted(train_set - persons) if train_kind == 'only' else ['(every person not excluded)']
        if shared:
            raise ConfigError(
                f"{name}.dataset reads {', '.join(shared)}, also read by train_dataloader.dataset: leave-one-person-"
                f"out needs the same test_person in every loader (train: {train.get('test_person')!r}, "
                f"{name.split('_')[0]}: {dataset.get('test_person')!r}), e.g. --cfg-options "
                f"train_dataloader.dataset.test_person=p03 val_dataloader.dataset.test_person=p03 "
                f"test_dataloader.dataset.test_person=p03")

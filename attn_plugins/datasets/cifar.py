"""CIFAR-10 / CIFAR-100, python version (Krizhevsky, 2009), read without running pickled code.

On-disk layout (the archives of https://www.cs.toronto.edu/~kriz/cifar.html, unpacked):

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

Every file is a pickle, written by Python 2's cPickle (protocol 2), of a dict with byte-string keys
(Python 2 `str` loads as `bytes` with encoding='bytes', as the dataset page's own snippet loads it):

    batches  b'data'           numpy uint8 array (N, 3072): 1024 red, then 1024 green, then 1024 blue
                               values, each plane a row-major 32x32 image
             b'labels'         CIFAR-10: list of N ints in 0..9
             b'fine_labels'    CIFAR-100: list of N ints in 0..99; b'coarse_labels' in 0..19
             b'filenames'      list of N bytes; b'batch_label' bytes ('training batch 1 of 5')
    batches.meta (CIFAR-10)    b'label_names' (10 bytes), b'num_cases_per_batch', b'num_vis' (3072)
    meta (CIFAR-100)           b'fine_label_names' (100), b'coarse_label_names' (20)

The only globals these pickles name are numpy's array reconstruction (`numpy.core.multiarray._reconstruct`,
`numpy.ndarray`, `numpy.dtype`). `RestrictedUnpickler` resolves exactly those, to checked versions (a plain
ndarray, no object dtype), and refuses any other global before anything is called, with an error naming
the file and the global. Plain `pickle.load` of such a file would run whatever callable it names.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

import numpy as np

from ..registry import ConfigError

try:                                                   # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:                                    # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

IMAGE_SIZE = 32
IMAGE_VALUES = 3 * IMAGE_SIZE * IMAGE_SIZE              # 3072 values a row

LAYOUTS = {
    'cifar10': dict(folder='cifar-10-batches-py', meta='batches.meta',
                    train=tuple(f'data_batch_{i}' for i in range(1, 6)), test=('test_batch',),
                    labels={'fine': (b'labels', b'label_names')}),
    'cifar100': dict(folder='cifar-100-python', meta='meta', train=('train',), test=('test',),
                     labels={'fine': (b'fine_labels', b'fine_label_names'),
                             'coarse': (b'coarse_labels', b'coarse_label_names')}),
}
SPLITS = ('train', 'test')


class CifarFormatError(ConfigError):
    """A CIFAR file does not hold what the format says (the message names the file and the key)."""


class UnsafePickleError(CifarFormatError, pickle.UnpicklingError):
    """A pickle names a global that CIFAR files never hold (it could run code); nothing was called."""


def _checked_reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array reconstruction of {subtype!r}: only numpy.ndarray is allowed")
    return _numpy_reconstruct(np.ndarray, shape, dtype_code)


def _checked_dtype(spec, align=False, copy=True):
    if isinstance(spec, bytes):
        spec = spec.decode('ascii')
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy.dtype({spec!r}): only a type code string is allowed")
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.hasobject:
        raise UnsafePickleError(f"numpy.dtype({spec!r}): object arrays are not allowed (they unpickle objects)")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of numpy array pickles (as Python 2's cPickle and
    numpy 1.x/2.x name them); builtin containers, numbers and strings need no global. Any other global
    (os.system, builtins.eval, ...) is an `UnsafePickleError` naming `source` and the global."""
    ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'): _checked_reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): _checked_reconstruct,
        ('numpy', 'ndarray'): np.ndarray,
        ('numpy', 'dtype'): _checked_dtype,
    }

    def __init__(self, file, source: str = '<pickle>'):
        super().__init__(file, encoding='bytes')
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load the global {module}.{name}: a CIFAR file holds only dicts, "
                "lists, bytes, ints and numpy arrays; this file is not one (it could run code)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing a persistent id ({pid!r}): CIFAR files have none")


def _no_object_arrays(value, source: str):
    """Arrays anywhere in the loaded value hold plain numbers (defence in depth)."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnsafePickleError(f"{source}: holds an object array")
    elif isinstance(value, dict):
        for item in value.values():
            _no_object_arrays(item, source)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _no_object_arrays(item, source)


def load_cifar_pickle(path: str) -> dict:
    """One CIFAR file as its dict (bytes keys), read with `RestrictedUnpickler`."""
    with open(path, 'rb') as f:
        try:
            value = RestrictedUnpickler(f, source=path).load()
        except CifarFormatError:
            raise
        except Exception as err:   # truncated or not a pickle at all
            raise CifarFormatError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from None
    _no_object_arrays(value, path)
    if not isinstance(value, dict):
        raise CifarFormatError(f"{path}: expected a pickled dict, got {type(value).__name__}")
    return value


def _key(content: dict, key: bytes, path: str):
    if key not in content:
        have = ', '.join(repr(k) for k in content)
        raise CifarFormatError(f"{path}: no key {key!r} (the file has {have})")
    return content[key]


def _names(content: dict, key: bytes, path: str) -> tuple[str, ...]:
    names = _key(content, key, path)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise CifarFormatError(f"{path}: {key!r} must be a list of names")
    return tuple(n.decode('utf-8') if isinstance(n, bytes) else n for n in names)


def decode_images(data: np.ndarray) -> np.ndarray:
    """CIFAR rows (N, 3072: R plane, G plane, B plane) -> RGB images (N, 32, 32, 3) uint8."""
    return np.ascontiguousarray(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))


def encode_images(images: np.ndarray) -> np.ndarray:
    """RGB images (N, 32, 32, 3) uint8 -> CIFAR rows (N, 3072)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), IMAGE_VALUES))


def cifar_folder(root: str, dataset: str) -> str:
    """`root/cifar-10-batches-py` (or `cifar-100-python`), or `root` itself if it is that folder."""
    layout = _layout(dataset)
    for folder in (os.path.join(root, layout['folder']), root):
        if os.path.isfile(os.path.join(folder, layout['meta'])):
            return folder
    files = ', '.join((layout['meta'],) + layout['train'] + layout['test'])
    raise FileNotFoundError(f"{dataset}: no {layout['folder']}/{layout['meta']} under {root!r} (expected "
                            f"{layout['folder']}/{{{files}}}, the python version of the dataset)")


def _layout(dataset: str) -> dict:
    if dataset not in LAYOUTS:
        raise ConfigError(f"dataset: expected one of {sorted(LAYOUTS)}, got {dataset!r}")
    return LAYOUTS[dataset]


@dataclass
class CifarSplit:
    """One split: `images` (N, 32, 32, 3) uint8 RGB, `labels` (N,) int64, `classes` (names by label),
    `filenames` (N) and the files read."""
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    filenames: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def read_cifar(root: str, dataset: str = 'cifar10', split: str = 'train', label_type: str = 'fine') -> CifarSplit:
    """Read a split of CIFAR-10 ('cifar10') or CIFAR-100 ('cifar100') in the python format.

    root: the folder holding `cifar-10-batches-py` / `cifar-100-python`, or that folder itself.
    split: 'train' (50000 images) or 'test' (10000).
    label_type: CIFAR-100 'fine' (100 classes) or 'coarse' (20 superclasses); CIFAR-10 has only 'fine'.
    """
    layout = _layout(dataset)
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    if label_type not in layout['labels']:
        raise ConfigError(f"label_type: {dataset} has {sorted(layout['labels'])} labels, got {label_type!r}")
    folder = cifar_folder(root, dataset)
    label_key, names_key = layout['labels'][label_type]
    meta_path = os.path.join(folder, layout['meta'])
    classes = _names(load_cifar_pickle(meta_path), names_key, meta_path)
    images, labels, filenames, files = [], [], [], []
    for name in layout[split]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{dataset}: missing {path} (a {split} file of the python version)")
        content = load_cifar_pickle(path)
        data = _key(content, b'data', path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_VALUES:
            shape = getattr(data, 'shape', None)
            raise CifarFormatError(f"{path}: b'data' must be a uint8 array (N, {IMAGE_VALUES}), got "
                                   f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
        batch_labels = np.asarray(_key(content, label_key, path))
        if batch_labels.shape != (len(data),) or batch_labels.dtype.kind not in 'iu':
            raise CifarFormatError(f"{path}: {label_key!r} must hold {len(data)} integer labels, "
                                   f"got shape {batch_labels.shape} of {batch_labels.dtype}")
        if len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < len(classes):
            raise CifarFormatError(f"{path}: {label_key!r} outside 0..{len(classes) - 1} (the {len(classes)} "
                                   f"names of {names_key!r} in {meta_path})")
        names = content.get(b'filenames', [b''] * len(data))
        if len(names) != len(data):
            raise CifarFormatError(f"{path}: b'filenames' has {len(names)} names for {len(data)} images")
        images.append(decode_images(data))
        labels.append(batch_labels.astype(np.int64))
        filenames += [n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in names]
        files.append(path)
    return CifarSplit(np.concatenate(images), np.concatenate(labels), classes, filenames, files)

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
`numpy.ndarray`, `numpy.dtype`). `RestrictedUnpickler` resolves exactly those, to placeholders that check
the BUILD states numpy would otherwise trust (a plain number dtype without object flag, fields or
subarray; an array whose shape matches the bytes the file holds; `numpy.ndarray` never called), and
refuses any other global before anything is called, with an error naming the file and the global.
Before unpickling, a scan of the opcodes refuses a second reference to a container or long string
(`_check_no_shared_containers`), so a small file cannot expand into huge memory or time.
Plain `pickle.load` of such a file would run whatever callable it names.
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


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


class _Global:
    """A global the restricted unpickler resolves: callable as `fn`, but immutable to the pickle (a
    BUILD on a global would set attributes of a process-wide object, e.g. a function's defaults)."""
    __slots__ = ('name', 'fn')

    def __init__(self, name: str, fn):
        object.__setattr__(self, 'name', name)
        object.__setattr__(self, 'fn', fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __setattr__(self, key, value):
        raise UnsafePickleError(f"{self.name}: a pickle may not set attributes of a global")

    def __setstate__(self, state):
        raise UnsafePickleError(f"{self.name}: a pickle may not set the state of a global (BUILD)")


def _ndarray_called(*args):
    """`numpy.ndarray` is only `_reconstruct`'s first argument. Called directly
    (`ndarray(shape, dtype, buffer, offset, strides)`) it would allocate any size, uninitialised or
    aliased, independently of the file's bytes."""
    raise UnsafePickleError("numpy.ndarray called directly: CIFAR arrays are only rebuilt by _reconstruct "
                            "from the bytes the file holds")


_NDARRAY = _Global('numpy.ndarray', _ndarray_called)


class _DtypePlaceholder:
    """`numpy.dtype(spec, align, copy)` of the pickle; its BUILD state (byte order, flags, sizes,
    fields) is checked before a clean dtype is made: a tampered state (object flag, fields at
    arbitrary offsets) would make numpy read or free memory outside the array."""

    def __init__(self, spec, align=False, copy=True):
        if isinstance(spec, bytes):
            spec = spec.decode('ascii')
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy.dtype({spec!r}): only a type code string is allowed")
        self.spec, self.align = spec, bool(align)
        self.dtype = np.dtype(spec, self.align, True)                  # always a copy, never numpy's own
        if self.dtype.hasobject:
            raise UnsafePickleError(f"numpy.dtype({spec!r}): object arrays are not allowed (they unpickle objects)")
        if self.dtype.fields is not None or self.dtype.subdtype is not None:
            raise UnsafePickleError(f"numpy.dtype({spec!r}): only plain number dtypes are allowed")

    def __setstate__(self, state):
        probe = np.dtype(self.spec, self.align, True)
        probe.__setstate__(state)
        clean = np.dtype(probe.str)
        if (probe.fields is not None or probe.subdtype is not None or probe.hasobject or probe.flags != clean.flags
                or probe.itemsize != clean.itemsize or probe.alignment != clean.alignment):
            raise UnsafePickleError(f"numpy.dtype({self.spec!r}): unexpected state {_short(state)} (a plain number "
                                    "dtype has no fields, no subarray and its own flags and sizes)")
        self.dtype = clean


class _ArrayPlaceholder:
    """`_reconstruct(ndarray, ...)` of the pickle; BUILD (version, shape, dtype, is_fortran, raw
    bytes) is checked (a checked dtype, a shape whose size matches the bytes) before numpy sees it."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 4:
            state = (1,) + state
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafePickleError(f"numpy array state: expected (1, shape, dtype, is_fortran, bytes), got "
                                    f"{type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}")
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, _DtypePlaceholder):
            raise UnsafePickleError(f"numpy array state: the dtype must be numpy.dtype(code), got {type(dtype).__name__}")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise UnsafePickleError(f"numpy array state: bad shape {_short(shape)}")
        if not isinstance(data, bytes) or len(data) != int(np.prod(shape, dtype=object)) * dtype.dtype.itemsize:
            raise UnsafePickleError(f"numpy array state: {shape} x {dtype.dtype} needs "
                                    f"{int(np.prod(shape, dtype=object)) * dtype.dtype.itemsize} bytes, got "
                                    f"{len(data) if isinstance(data, bytes) else type(data).__name__}")
        array = _numpy_reconstruct(np.ndarray, (0,), b'b')
        array.__setstate__((1, shape, dtype.dtype, bool(fortran), data))
        self.array = array


def _checked_reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"numpy array reconstruction of {subtype!r}: only numpy.ndarray is allowed")
    return _ArrayPlaceholder()


def _checked_dtype(spec, align=False, copy=True):
    return _DtypePlaceholder(spec, align, copy)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of numpy array pickles (as Python 2's cPickle and
    numpy 1.x/2.x name them); builtin containers, numbers and strings need no global. Any other global
    (os.system, builtins.eval, ...) is an `UnsafePickleError` naming `source` and the global."""
    ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'): _Global('numpy.core.multiarray._reconstruct', _checked_reconstruct),
        ('numpy._core.multiarray', '_reconstruct'): _Global('numpy._core.multiarray._reconstruct', _checked_reconstruct),
        ('numpy', 'ndarray'): _NDARRAY,
        ('numpy', 'dtype'): _Global('numpy.dtype', _checked_dtype),
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


def _resolve_arrays(value, source: str):
    """The loaded value with each checked placeholder replaced by its numpy array (or dtype)."""
    if isinstance(value, _ArrayPlaceholder):
        if value.array is None:
            raise UnsafePickleError(f"{source}: a numpy array without its state (shape, dtype, bytes)")
        return value.array
    if isinstance(value, _DtypePlaceholder):
        return value.dtype
    if isinstance(value, _Global):
        raise UnsafePickleError(f"{source}: holds the global {value.name} itself, not what it builds")
    if isinstance(value, dict):
        if any(isinstance(k, (_ArrayPlaceholder, _DtypePlaceholder)) for k in value):
            raise UnsafePickleError(f"{source}: a numpy object as a dict key")
        return {k: _resolve_arrays(v, source) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_resolve_arrays(v, source) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (set, frozenset)) and any(isinstance(v, (_ArrayPlaceholder, _DtypePlaceholder)) for v in value):
        raise UnsafePickleError(f"{source}: a numpy object in a set")
    return value


# Opcodes that push a string, number or global: the only objects a CIFAR pickle may reference twice.
_SCALAR_OPS = frozenset({
    'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8',
    'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8', 'BYTEARRAY8', 'INT', 'BININT', 'BININT1', 'BININT2', 'LONG',
    'LONG1', 'LONG4', 'FLOAT', 'BINFLOAT', 'NONE', 'NEWTRUE', 'NEWFALSE', 'GLOBAL', 'STACK_GLOBAL'})
_PUT_OPS, _GET_OPS = frozenset({'PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'}), frozenset({'GET', 'BINGET', 'LONG_BINGET'})


def _check_no_shared_containers(f, source: str) -> None:
    """Refuse a pickle that references a container (list, dict, tuple, set, built object) or a long
    string a second time through the memo: CIFAR files never do, and shared containers make a few
    bytes expand exponentially (a list of two references to a list of two references ...: 156 bytes
    took 18 s and 2^22 objects to rebuild; hashing such a tuple as a dict key is as slow). Without them every
    object is built from its own opcodes, so what is rebuilt is linear in the file's size.
    A linear scan of the opcodes (pickletools), before anything is unpickled."""
    import pickletools
    memo, top_is_scalar = {}, False       # memo index -> whether it holds a string, number or global
    try:
        for op, arg, _ in pickletools.genops(f):
            if op.name in _PUT_OPS:
                memo[len(memo) if op.name == 'MEMOIZE' else arg] = top_is_scalar
            elif op.name in _GET_OPS:
                if not memo.get(arg, False):
                    raise UnsafePickleError(f"{source}: refusing a second reference to a container or long string "
                                            f"(memo {arg}, opcode {op.name}): CIFAR files never share one, and "
                                            "shared ones can expand exponentially")
                top_is_scalar = True
            else:       # a small one only: a list of many references to one huge string would still expand
                top_is_scalar = op.name in _SCALAR_OPS and (
                    len(arg) <= 1024 if isinstance(arg, (bytes, bytearray, str)) else
                    arg.bit_length() <= 64 if isinstance(arg, int) else True)
    except UnsafePickleError:
        raise
    except Exception as err:   # truncated or not a pickle at all
        raise CifarFormatError(f"{source}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from None
    f.seek(0)


def load_cifar_pickle(path: str) -> dict:
    """One CIFAR file as its dict (bytes keys), read with `RestrictedUnpickler` after
    `_check_no_shared_containers`."""
    with open(path, 'rb') as f:
        _check_no_shared_containers(f, path)
        try:
            value = RestrictedUnpickler(f, source=path).load()
        except CifarFormatError as err:
            if str(err).startswith(path):
                raise
            raise type(err)(f"{path}: {err}") from None
        except Exception as err:   # truncated or not a pickle at all
            raise CifarFormatError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from None
    try:
        value = _resolve_arrays(value, path)
    except RecursionError:
        raise CifarFormatError(f"{path}: containers nested too deeply for a CIFAR file") from None
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

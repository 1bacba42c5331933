"""Checkpoints on torch >= 2.6, where torch.load defaults to weights_only=True.

mmengine 0.10.7 calls torch.load without weights_only, so resuming from its own checkpoints
fails on torch 2.14: the message hub pickles `HistoryBuffer` objects whose state refers to
methods through `getattr`, which the safe loader rightly refuses (allowing `getattr` would
allow arbitrary code). Instead of turning the safe loader off, `SafeCheckpointHook` writes
checkpoints that hold only tensors and plain Python values (history buffers as tensors, numpy
values as tensors or scalars) and rebuilds the buffers after loading. Numpy arrays and scalars
in other checkpoints are allow-listed; anything else is still refused.
"""
from __future__ import annotations

import os
import pickle

import torch


def _numpy_safe_globals() -> list:
    import numpy as np
    out = [np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    return out + [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool', 'uint8')]


def allow_mmengine_checkpoints() -> None:
    """Allow-list numpy arrays and scalars (found in mmengine checkpoints' meta) for
    torch.load(weights_only=True). History buffers are not listed: their pickles need `getattr`;
    SafeCheckpointHook writes them as tensors instead. Also makes mmengine's URL checkpoints
    (http(s)://, open-mmlab://, torchvision://: a config's `load_from` or `init_cfg.checkpoint`)
    load with weights_only=True: torch.hub's loader defaults to weights_only=False, so a YAML naming
    a URL would otherwise unpickle (run) whatever that server sends."""
    torch.serialization.add_safe_globals(_numpy_safe_globals())
    try:
        import mmengine.runner.checkpoint as mmengine_checkpoint
    except ImportError:
        return
    if not getattr(mmengine_checkpoint.load_url, 'weights_only', False):
        mmengine_checkpoint.load_url = _weights_only(mmengine_checkpoint.load_url)


def _weights_only(load_url):
    """`load_url` (torch.hub.load_state_dict_from_url) forced to weights_only=True."""
    def load_url_weights_only(url, *args, **kwargs):
        kwargs['weights_only'] = True
        return load_url(url, *args, **kwargs)
    load_url_weights_only.weights_only = True
    return load_url_weights_only


_BUFFER_KEY = '__attn_plugins_history_buffer__'


def to_safe(obj):
    """Replace HistoryBuffers and numpy values with tensors / plain Python, recursively."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_BUFFER_KEY: True, 'log': torch.from_numpy(np.asarray(log)), 'count': torch.from_numpy(np.asarray(count)),
                'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_safe(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj):
    """Undo `to_safe` for history buffers (tensors and scalars are used as they are)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if isinstance(obj, dict):
        if obj.get(_BUFFER_KEY):
            return HistoryBuffer(obj['log'].numpy(), obj['count'].numpy(), obj['max_length'])
        return type(obj)((k, from_safe(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    return obj


def rng_state() -> dict:
    """Random states stored in checkpoints, so that a resumed run draws what the uninterrupted run
    would have: torch's (CPU, and CUDA once initialised: dropout and drop-path masks, anchor and
    RoI sampling) and numpy's and Python's (data augmentation in the main process, e.g. mmdet's
    RandomFlip). Tensors and plain values only, for torch.load(weights_only=True)."""
    import random

    import numpy as np
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {'torch': torch.get_rng_state(),
             'numpy': {'kind': str(kind), 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
             'python': {'version': int(version), 'internal': torch.tensor(internal, dtype=torch.int64),
                        'gauss_next': gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data: bool = True) -> None:
    """Undo `rng_state` (CUDA states only where CUDA is available). data=False keeps numpy's and
    Python's states: a resumed iteration-based mmengine loop replays the data pipeline up to the
    resumed iteration, which draws from them exactly as the first run did (an epoch-based loop
    starts a new epoch and replays nothing)."""
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if data and 'numpy' in state:
        import random

        import numpy as np
        npy = state['numpy']
        np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'], npy['has_gauss'],
                             npy['cached_gaussian']))
        py = state['python']
        random.setstate((py['version'], tuple(int(v) for v in py['internal']), py['gauss_next']))


def load_checkpoint_file(path: str):
    """A whole checkpoint, loaded with weights_only=True. A path that is missing, not a file or
    not a checkpoint torch can read safely raises ConfigError with one line naming it."""
    from .registry import ConfigError
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint {path!r} not found")
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} is not a file")
    allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, which would run the file's code
        reason = str(err).rpartition('WeightsUnpickler error:')[2].strip().splitlines()[0]
        if 'Unsupported global' in reason:
            raise ConfigError(f"checkpoint {path!r} holds Python objects that the safe loader refuses "
                              f"({reason}); only a file from a source you trust should load them") from None
        raise ConfigError(f"checkpoint {path!r} is not a PyTorch checkpoint ({reason})") from None
    except Exception as err:     # not a zip, truncated, empty, text (the unpickler fails in many ways)
        reason = (str(err).strip().splitlines() or [''])[0]
        raise ConfigError(f"checkpoint {path!r} is not a PyTorch checkpoint ({type(err).__name__}: {reason})") from None


def load_state_dict_file(path: str) -> dict:
    """A checkpoint's model state dict, loaded with weights_only=True (see load_checkpoint_file)."""
    ckpt = load_checkpoint_file(path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        from .registry import ConfigError
        raise ConfigError(f"checkpoint {path!r} holds no model state dict (a dict, optionally under "
                          f"'state_dict'), but a {type(state).__name__}")
    return state


def state_dict_mismatch(model: torch.nn.Module, state: dict, shown: int = 3) -> str | None:
    """How `state` (a checkpoint's state dict; a DDP 'module.' prefix is ignored, as mmengine
    does) fails to fill `model`: missing keys, unexpected keys, other shapes; None if it fits."""
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:shown])})"
             for keys, what in ((missing, 'model keys missing'), (unexpected, 'unexpected keys'),
                                (shapes, 'with another shape (checkpoint vs model)')) if keys]
    renames = {old: new for old, new in slot_key_renames(model).items() if any(k.startswith(old) for k in unexpected)}
    if renames:
        old, new = next(iter(renames.items()))
        parts.append(f"the checkpoint keeps {len(renames)} blocks under their names from before they moved into their "
                     f"block's slot (e.g. {old!r} is now {new!r}, timm ResNet's `se`): convert it with "
                     "attn_plugins.checkpoint.rename_slot_keys(state_dict, model)")
    return '; '.join(parts) or None


def slot_key_renames(model: torch.nn.Module) -> dict[str, str]:
    """{old key prefix: new key prefix} of the blocks that `inject` put into a block slot (see
    `injector.NATIVE_SLOTS`, e.g. 'layer1.0.se.'), which before went under the norm they follow
    (e.g. 'layer1.0.bn3.attn_cbam.')."""
    from .injector import recorded_insertions
    from .registry import snake_name
    renames = {}
    for prefix, _, record in recorded_insertions(model):
        if getattr(record, 'in_slot', False):
            full = f'{prefix}.' if prefix else ''
            renames[f"{full}{record.path}.attn_{snake_name(record.type)}."] = f"{full}{record.attr}."
    return renames


def rename_slot_keys(state: dict, model: torch.nn.Module) -> dict:
    """`state` (a state dict saved before slot blocks, see `slot_key_renames`) with those blocks' keys
    under their names in `model`; other keys as they are."""
    renames = slot_key_renames(model)
    out = {}
    for key, value in state.items():
        old = next((o for o in renames if key.startswith(o)), None)
        out[renames[old] + key[len(old):] if old else key] = value
    return out


def convert_checkpoint_file(path: str, work_dir: str) -> str:
    """Return `path`, or a converted copy in `work_dir` when it is an mmseg DAHead/NLHead checkpoint."""
    from .integrations.convert import convert_segmentor_state_dict
    state = load_state_dict_file(path)
    converted = convert_segmentor_state_dict(state)
    if converted.keys() == state.keys():
        return path
    os.makedirs(work_dir, exist_ok=True)
    out = os.path.join(work_dir, 'converted_' + os.path.basename(path))
    torch.save({'state_dict': converted, 'meta': {'converted_from': os.path.abspath(path)}}, out)
    return out

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

import torch


def _numpy_safe_globals() -> list:
    import numpy as np
    out = [np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    return out + [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool', 'uint8')]


def allow_mmengine_checkpoints() -> None:
    """Allow-list numpy arrays and scalars (found in mmengine checkpoints' meta) for
    torch.load(weights_only=True). History buffers are not listed: their pickles need `getattr`;
    SafeCheckpointHook writes them as tensors instead."""
    torch.serialization.add_safe_globals(_numpy_safe_globals())


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


def load_state_dict_file(path: str) -> dict:
    """A checkpoint's model state dict, loaded with weights_only=True."""
    allow_mmengine_checkpoints()
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt


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

"""Checkpoints on torch >= 2.6, where torch.load defaults to weights_only=True.

mmengine 0.10.7 calls torch.load without weights_only, so loading its own checkpoints (resume:
message hub history, numpy scalars) fails on torch 2.14. Instead of turning the safe loader off,
we allow-list exactly the classes mmengine writes; anything else is still refused.
"""
from __future__ import annotations

import os

import torch


def _mmengine_safe_globals() -> list:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    out = [HistoryBuffer, np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    out += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool', 'uint8')]
    return out


def allow_mmengine_checkpoints() -> None:
    """Allow-list the non-tensor types found in mmengine checkpoints for torch.load(weights_only=True)."""
    torch.serialization.add_safe_globals(_mmengine_safe_globals())


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

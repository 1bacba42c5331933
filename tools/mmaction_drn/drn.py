"""Placeholder for mmaction2 1.2.0's DRN localizer, installed by tools/setup_env.sh.

mmaction2 1.2.0 on PyPI (wheel and sdist) ships without `mmaction/models/localizers/drn`, yet
`mmaction/models/localizers/__init__.py` imports `.drn.drn.DRN`, so `import mmaction.models`
fails. attn_plugins does not use DRN (a temporal grounding model); this module lets mmaction2
import and turns any use of DRN into a clear error instead of a missing-module traceback.
"""
from mmaction.registry import MODELS
from mmengine.model import BaseModel


@MODELS.register_module()
class DRN(BaseModel):
    """Not available: see the module docstring."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "DRN is not available: mmaction2 1.2.0's PyPI package lacks mmaction/models/localizers/drn; "
            "attn_plugins' set-up installs this placeholder only so that `import mmaction.models` works. "
            "Install mmaction2 from its git sources to use DRN.")

    def forward(self, *args, **kwargs):  # pragma: no cover - __init__ already raised
        raise RuntimeError("DRN is not available (see attn_plugins' tools/mmaction_drn/drn.py)")

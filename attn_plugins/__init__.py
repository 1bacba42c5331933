"""attn_plugins: attention blocks from the literature, pluggable into timm and OpenMMLab
models from a config file.

Public API: list_plugins, build, inject, create_model, load_config, auxiliary_losses.
`import attn_plugins` needs only torch, timm, mmengine and pyyaml; the OpenMMLab heads load when
mmseg/mmdet are present.
"""
from __future__ import annotations

from .modules import (CBAM, SE, ChannelAttention, DualAttention, NonLocal, PayAttention, PositionAttention,
                      PyramidAttention, SpatialWeights)
from .registry import BLOCKS, ConfigError, build, get_block, list_plugins

__version__ = '0.1.0'

__all__ = ['list_plugins', 'build', 'get_block', 'inject', 'create_model', 'load_config', 'ConfigError', 'BLOCKS',
           'SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
           'PyramidAttention', 'NonLocal', 'PayAttention', 'auxiliary_losses', 'total_auxiliary_loss',
           '__version__']


def __getattr__(name):  # lazy: keep `import attn_plugins` light
    if name == 'inject':
        from .injector import inject
        return inject
    if name == 'create_model':
        from .integrations.timm import create_model
        return create_model
    if name == 'load_config':
        from .config import load_config
        return load_config
    if name in ('auxiliary_losses', 'total_auxiliary_loss'):
        from . import losses
        return getattr(losses, name)
    raise AttributeError(f"module 'attn_plugins' has no attribute {name!r}")


def _register_integrations() -> None:
    """Register blocks into mmengine and timm (both are core dependencies); OpenMMLab heads
    register when mmseg is importable."""
    from .integrations import mmengine as _mm
    from .integrations import timm as _timm
    _mm.register_blocks()
    _timm.register_models()
    try:
        from .integrations import mmseg as _mmseg
    except ImportError:   # the `seg` extra (mmsegmentation + mmcv) is not installed
        return
    _mmseg.register_heads()


_register_integrations()

"""attn_plugins: attention blocks from the literature, pluggable into timm and OpenMMLab
models from a config file.

Public API: list_plugins, build, inject (reattach_blocks after a SyncBN conversion), create_model,
load_config, auxiliary_losses.
The core install needs torch, timm, mmengine and pyyaml; `import attn_plugins` itself imports only
torch, and registers into timm, mmengine and mmseg when they are imported (see below).
"""
from __future__ import annotations

from .modules import (CBAM, SE, ChannelAttention, DualAttention, NonLocal, PayAttention, PositionAttention,
                      PyramidAttention, SpatialWeights, reset_attention_blocks)
from .registry import BLOCKS, ConfigError, build, get_block, list_plugins

__version__ = '0.1.0'

__all__ = ['list_plugins', 'build', 'get_block', 'inject', 'reattach_blocks', 'detached_blocks', 'create_model',
           'load_config', 'ConfigError', 'BLOCKS',
           'SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
           'PyramidAttention', 'NonLocal', 'PayAttention', 'reset_attention_blocks', 'auxiliary_losses',
           'total_auxiliary_loss', '__version__']


def __getattr__(name):  # lazy: keep `import attn_plugins` light
    if name in ('inject', 'reattach_blocks', 'detached_blocks'):
        from . import injector
        return getattr(injector, name)
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


# Registrations, each made when its framework is imported (at once if it already is), so that
# `import attn_plugins` loads only torch (about 1 s less than with timm, 3 s less than with
# mmseg/mmcv too). A module that imports one of them first (e.g. `custom_imports` in an
# OpenMMLab config, after mmengine) finds everything registered.
#   mmengine      every block, InjectAttention, TimmBackbone (MODELS), the hooks, the CPU DDP wrapper
#   timm          the ap_* model entrypoints; every block a torch.fx leaf
#   mmseg.models  the decode heads (mmseg's MODELS imports mmseg.models before its first build)
#   mmdet.models  AttentionNeck (likewise)
#   mmaction.models  VideoPyramidAttentionHead; mmaction2 backbones keep injected blocks' init
# Each integration module registers once its own import is complete (it may be the one that
# imports the framework).
_INTEGRATIONS = (('mmengine', 'mmengine', 'register_blocks'), ('timm', 'timm', 'register_models'),
                 ('mmseg.models', 'mmseg', 'register_heads'), ('mmdet.models', 'mmdet', 'register_necks'),
                 ('mmaction.models', 'mmaction', 'register_video'))


def _register_integrations() -> None:
    import importlib

    from ._post_import import when_imported
    for framework, integration, register in _INTEGRATIONS:
        module = f'{__name__}.integrations.{integration}'
        when_imported(module, lambda mod, _register=register: getattr(mod, _register)())
        when_imported(framework, lambda _framework, _module=module: importlib.import_module(_module))


_register_integrations()

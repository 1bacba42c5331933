"""mmdetection integration: attention on chosen backbone outputs before any registered neck.

Blocks inside the backbone need nothing from here: every block is in mmengine's MODELS (see
`integrations.mmengine`), where mmcv's `build_plugin_layer` finds it, so mmdet's ResNet / ResNeXt
take `plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), position='after_conv3')]`;
`InjectAttention` places blocks anywhere else (one block after `layer3.4`, a timm backbone, ...).

Registered here, in mmdet's MODELS:

    AttentionNeck   builds any registered neck (FPN, PAFPN, ChannelMapper, ...) from `neck` and
                    applies attention blocks to the backbone outputs it receives, first:

        neck=dict(type='AttentionNeck',
                  blocks=[dict(type='DualAttention', in_indices=[3]),             # DANet on C5
                          dict(type='PyramidAttention', in_indices=[1, 2, 3])],   # C3-C5 -> C5
                  neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5))

    `in_channels` (one width per backbone output) defaults to the neck's. Each block spec has `type`
    (any block in MODELS: ours, or mmcv's `ContextBlock`, `NonLocal2d`, `GeneralizedAttention`),
    `in_indices` (backbone outputs) and the block's options. A block taking several maps
    (PyramidAttention) gets all listed outputs and replaces the one at its `target_index`; any
    other block is built once per listed output. Specs apply in order.

The result is the neck itself (its parameter names unchanged, so a checkpoint of the detector
without attention loads with only the block keys missing), holding the blocks in `attn_blocks`,
run by a forward pre-hook. The blocks keep their own init through the neck's `init_weights()`.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from mmdet.registry import MODELS

from ..modules import HostInit
from ..registry import BLOCKS, SCOPE, ConfigError, did_you_mean
from .mmengine import register_once

NECK_KEY = 'neck'
BLOCK_KEYS = ('type', 'in_indices')
NECK_OPTIONS = ('neck', 'blocks', 'in_channels')


def _registered_names(registry) -> list[str]:
    """Every name `registry.get` can resolve without a scope prefix: its own and its parents'."""
    names, current = set(), registry
    while current is not None:
        names.update(current.module_dict)
        current = current.parent
    return sorted(names)


def _block_class(type_name: Any, where: str):
    if isinstance(type_name, type) and issubclass(type_name, nn.Module):
        return type_name
    if not isinstance(type_name, str):
        raise ConfigError(f"{where}.type: expected a block name (str), got {type_name!r}")
    with MODELS.switch_scope_and_registry(None) as registry:
        cls = registry.get(type_name)
        names = _registered_names(registry)
    if cls is None:
        plain = type_name[len(SCOPE) + 1:] if type_name.startswith(SCOPE + '.') else type_name
        blocks = [*BLOCKS, 'ContextBlock', 'NonLocal2d', 'GeneralizedAttention']
        hint = did_you_mean(plain, blocks) or did_you_mean(plain, names)
        raise ConfigError(f"{where}.type: {type_name!r} is not registered in the model registry{hint} "
                          f"Attention blocks: {', '.join(sorted(blocks))}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{where}.type: {type_name!r} is a builder, not an attention block (an nn.Module class)")
    return cls


def _takes_several_maps(cls) -> bool:
    """Our blocks with an `in_channels` list besides `channels` (PyramidAttention) take several maps."""
    ours = next((c for c in cls.__mro__ if c in BLOCKS.values()), None)
    if ours is None:
        return False
    params = inspect.signature(ours.__init__).parameters
    return 'channels' in params and 'in_channels' in params


def _indices(value, num_levels: int, where: str) -> list[int]:
    """`in_indices` as non-negative level numbers; bad values name the key and the valid range."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ConfigError(f"{where}.in_indices: expected a non-empty list of backbone output indices "
                          f"(ints in [0, {num_levels - 1}]), got {value!r}")
    out = []
    for index in value:
        if not -num_levels <= index < num_levels:
            raise ConfigError(f"{where}.in_indices: {index} is out of range: the neck receives {num_levels} "
                              f"backbone outputs (in_channels has {num_levels} entries), indices 0..{num_levels - 1}")
        out.append(index % num_levels)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}.in_indices: {value!r} lists an output twice")
    return out


class AttentionBlocks(nn.ModuleList):
    """The blocks of an `AttentionNeck`, with the backbone outputs each reads (`levels`) and
    writes (`targets`). `init_weights()` (called by the neck's mmengine `init_weights`, after its
    init_cfg re-initialised every conv in it) gives each block its own init back."""

    def __init__(self, blocks: Sequence[nn.Module], levels: Sequence[Sequence[int]], targets: Sequence[int],
                 in_channels: Sequence[int]):
        super().__init__(blocks)
        self.levels = [list(lv) for lv in levels]
        self.targets = list(targets)
        self.in_channels = list(in_channels)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, levels={self.levels}, targets={self.targets}"

    def placement(self, index: int) -> str:
        """Where block `index` runs, for `attn-plugins plan`: the backbone outputs it reads (and replaces)."""
        levels, target = self.levels[index], self.targets[index]
        if target >= 0:
            return f"AttentionNeck on backbone outputs {levels} -> {target}"
        return f"AttentionNeck on backbone output {levels[0]}"

    def init_weights(self) -> None:
        for block in self:
            if isinstance(block, HostInit):
                block.reset_parameters()
            elif callable(getattr(block, 'init_weights', None)):     # mmcv NonLocal2d
                block.init_weights()
            elif callable(getattr(block, 'reset_parameters', None)):  # mmcv ContextBlock, GeneralizedAttention
                block.reset_parameters()

    def apply_to(self, inputs):
        feats = list(inputs)
        if len(feats) != len(self.in_channels):
            raise ValueError(f"AttentionNeck: the backbone gave {len(feats)} outputs, in_channels lists "
                             f"{len(self.in_channels)} ({self.in_channels}); make the backbone's out_indices "
                             "and the neck's in_channels agree")
        for level, (feat, channels) in enumerate(zip(feats, self.in_channels)):
            if feat.dim() < 3 or feat.shape[1] != channels:
                raise ValueError(f"AttentionNeck: backbone output {level} has shape {tuple(feat.shape)}, "
                                 f"in_channels[{level}] says {channels} channels")
        for block, levels, target in zip(self, self.levels, self.targets):
            if target >= 0:                           # several maps in, one out (PyramidAttention)
                feats[target] = block([feats[i] for i in levels])
            else:
                feats[levels[0]] = block(feats[levels[0]])
        return type(inputs)(feats) if isinstance(inputs, (tuple, list)) else feats


class _ApplyAttentionBlocks:
    """Forward pre-hook of the neck: its first argument (the backbone outputs) through `attn_blocks`.
    A module-level class that looks the blocks up by name, so the model pickles and deep-copies."""

    def __call__(self, module, args):
        return (module.attn_blocks.apply_to(args[0]),) + tuple(args[1:])


def attention_neck(neck: Mapping[str, Any] | None = None, blocks: Sequence[Mapping[str, Any]] | None = None,
                   in_channels: Sequence[int] | None = None, **unknown) -> nn.Module:
    """Registered as 'AttentionNeck' (see the module docstring): build `neck` through MODELS in the
    current scope, attach `blocks`, return the neck."""
    for key in unknown:
        raise ConfigError(f"AttentionNeck.{key}: unknown option{did_you_mean(key, NECK_OPTIONS) or '.'} "
                          f"AttentionNeck takes {', '.join(NECK_OPTIONS)}")
    if not isinstance(neck, Mapping) or 'type' not in neck:
        raise ConfigError(f"AttentionNeck.neck: expected the config of a neck (a dict with 'type', e.g. FPN), got {neck!r}")
    neck_channels = neck.get('in_channels')
    if in_channels is None:
        in_channels = neck_channels
    if not isinstance(in_channels, (list, tuple)) or not in_channels or \
            not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in in_channels):
        raise ConfigError("AttentionNeck.in_channels: expected a list of positive ints, one per backbone output "
                          f"(or neck.in_channels as one), got {in_channels!r}")
    if neck_channels is not None and list(neck_channels) != list(in_channels):
        raise ConfigError(f"AttentionNeck.in_channels {list(in_channels)} disagrees with neck.in_channels "
                          f"{list(neck_channels)}; the blocks keep each output's width, so give one list")
    neck = dict(neck)
    if 'in_channels' in inspect.signature(_neck_class(neck['type']).__init__).parameters:
        neck['in_channels'] = list(in_channels)
    if isinstance(blocks, Mapping) or not isinstance(blocks, (list, tuple)) or not blocks:
        raise ConfigError(f"AttentionNeck.blocks: expected a non-empty list of block specs "
                          f"(dicts with 'type' and 'in_indices'), got {blocks!r}")
    built, levels, targets = [], [], []
    for idx, spec in enumerate(blocks):
        where = f'AttentionNeck.blocks[{idx}]'
        if isinstance(spec, Mapping) and 'type' in spec and 'in_indices' not in spec:
            typo = [k for k in spec if k != 'type' and did_you_mean(k, ['in_indices'])]
            raise ConfigError(f"{where}: missing 'in_indices' (the backbone outputs the block reads)"
                              + (f"; {typo[0]!r}: did you mean 'in_indices'?" if typo else ''))
        if not isinstance(spec, Mapping) or 'type' not in spec or 'in_indices' not in spec:
            raise ConfigError(f"{where}: expected a dict with 'type' and 'in_indices', got {spec!r}")
        cls = _block_class(spec['type'], where)
        chosen = _indices(spec['in_indices'], len(in_channels), where)
        options = {k: v for k, v in spec.items() if k not in BLOCK_KEYS}
        if 'in_channels' in options or 'channels' in options:
            raise ConfigError(f"{where}: drop 'channels'/'in_channels'; each block takes the width of its "
                              f"backbone output from AttentionNeck.in_channels {list(in_channels)}")
        if _takes_several_maps(cls):
            target = options.get('target_index', 0)
            if not isinstance(target, int) or not -len(chosen) <= target < len(chosen):
                raise ConfigError(f"{where}.target_index: expected an index into in_indices {chosen}, got {target!r}")
            widths = [in_channels[i] for i in chosen]
            built.append(_build(cls, spec['type'], where, options, in_channels=widths))
            levels.append(chosen)
            targets.append(chosen[target])
            continue
        for level in chosen:
            built.append(_build(cls, spec['type'], where, options, in_channels=in_channels[level]))
            levels.append([level])
            targets.append(-1)
    with MODELS.switch_scope_and_registry(None) as registry:
        module = registry.build(neck)
    if hasattr(module, 'attn_blocks'):
        raise ConfigError(f"AttentionNeck.neck: {type(module).__name__} already has an attribute 'attn_blocks'")
    module.attn_blocks = AttentionBlocks(built, levels, targets, in_channels)
    module.register_forward_pre_hook(_ApplyAttentionBlocks())
    return module


def _neck_class(type_name):
    if not isinstance(type_name, str):
        return type_name
    with MODELS.switch_scope_and_registry(None) as registry:
        cls = registry.get(type_name)
        names = _registered_names(registry)
    if cls is None:
        necks = [n for n in names if n.endswith(('FPN', 'Mapper', 'Neck'))]
        raise ConfigError(f"AttentionNeck.neck.type: {type_name!r} is not registered"
                          f"{did_you_mean(type_name, necks) or did_you_mean(type_name, names)} "
                          f"Registered necks include: {', '.join(necks)}")
    return cls


def _build(cls, type_name, where: str, options: dict, in_channels) -> nn.Module:
    try:
        return cls(in_channels=in_channels, **options)
    except TypeError as err:
        ours = next((c for c in cls.__mro__ if c in BLOCKS.values()), cls)
        params = [p for p in inspect.signature(ours.__init__).parameters
                  if p not in ('self', 'args', 'kwargs', 'channels', 'in_channels')]
        unknown = [k for k in options if k not in params]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown option for {type_name}"
                              f"{did_you_mean(unknown[0], params)} Options: {', '.join(params)}") from None
        raise ConfigError(f"{where}: cannot build {type_name}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{where}: cannot build {type_name}: {err}") from None


def register_necks() -> None:
    """Register `AttentionNeck` in mmdet's MODELS (idempotent)."""
    register_once(MODELS, 'AttentionNeck', attention_neck)

"""The one place block names live.

`BLOCKS` maps each public name to its class; integrations (mmengine, timm, the injector) read
from here and never keep their own lists. `build` turns a config dict into a block with clear
errors for unknown types (did-you-mean) and unknown options.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Mapping

import torch.nn as nn

from . import modules

BLOCKS: dict[str, type[nn.Module]] = {
    'SE': modules.SE,
    'SpatialWeights': modules.SpatialWeights,
    'PositionAttention': modules.PositionAttention,
    'ChannelAttention': modules.ChannelAttention,
    'DualAttention': modules.DualAttention,
    'CBAM': modules.CBAM,
    'PyramidAttention': modules.PyramidAttention,
    'NonLocal': modules.NonLocal,
    'PayAttention': modules.PayAttention,
}

# Blocks that take one tensor and return one of the same shape (usable inside a block).
IN_BLOCK_GATES = ('SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
                  'NonLocal', 'PyramidAttention')

def input_dims(block_type: str, options: Mapping[str, Any] | None = None, where: str = 'cfg') -> int:
    """Dimensions of the (B, C, *spatial) maps a block built with `options` takes: its class's
    `input_rank`, the value its forward checks (e.g. 4 for images, 3 for ChannelAttention, dim + 2
    for NonLocal), given the options it names (`dim`), or their constructor defaults."""
    cls = get_block(block_type)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not p.empty}
    values = {**defaults, **(options or {})}
    args = {name: values[name] for name in inspect.signature(cls.input_rank).parameters}
    try:
        return int(cls.input_rank(**args))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{', '.join(f'{where}.{k}' for k in args)}: {cls.__name__} cannot take "
                          f"{', '.join(f'{k}={v!r}' for k, v in args.items())} ({err})") from None


# Decode heads registered by the mmseg integration; listed here so names live in one place.
HEADS = ('DualAttentionHead', 'NonLocalHead', 'PyramidAttentionHead')
# Recognition heads registered by the mmaction2 integration (in mmaction2's MODELS, not mmseg's).
VIDEO_HEADS = ('VideoPyramidAttentionHead',)

SCOPE = 'attn_plugins'


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what was expected."""


class RunFailed(RuntimeError):
    """A run cannot give a trustworthy result (its training diverged, its evaluation gave no
    metrics); the tools print the message on one line and exit with status 1."""


def snake_name(name: str) -> str:
    """'CBAM' -> 'cbam', 'NonLocal' -> 'non_local', 'SEBlock' -> 'se_block' (acronyms kept whole)."""
    name = re.sub(r'([A-Z]+)([A-Z][a-z])', r'\1_\2', name)
    return re.sub(r'([a-z\d])([A-Z])', r'\1_\2', name).lower()


def list_plugins() -> list[str]:
    """Sorted names of every registered block and head."""
    return sorted([*BLOCKS, *HEADS, *VIDEO_HEADS])


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[str(name).lower()]] if str(name).lower() in lowered else []
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ''


def get_block(name: str, key: str = 'type') -> type[nn.Module]:
    """The block class for `name` ('CBAM' or scoped 'attn_plugins.CBAM')."""
    if not isinstance(name, str):
        raise ConfigError(f"{key}: expected a block name (str), got {name!r}")
    plain = name[len(SCOPE) + 1:] if name.startswith(SCOPE + '.') else name
    if plain not in BLOCKS:
        raise ConfigError(f"{key}: unknown block type {name!r}{did_you_mean(plain, BLOCKS)} "
                          f"Known blocks: {', '.join(sorted(BLOCKS))}")
    return BLOCKS[plain]


def block_options(cls: type[nn.Module]) -> list[str]:
    """Constructor option names of a block (besides `channels`)."""
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ('self', 'channels', 'args', 'kwargs')]


def check_options(cls: type[nn.Module], options: Mapping[str, Any], where: str = 'cfg') -> None:
    allowed = block_options(cls)
    for opt in options:
        if opt not in allowed:
            raise ConfigError(f"{where}.{opt}: unknown option for {cls.__name__}{did_you_mean(opt, allowed)} "
                              f"Options: {', '.join(allowed)}")


def build(cfg: Mapping[str, Any], where: str = 'cfg', **defaults: Any) -> nn.Module:
    """Build a block from dict(type='CBAM', channels=256, ...). `in_channels` is accepted for
    `channels` (OpenMMLab's plugin builder passes it); `defaults` fill options the cfg lacks."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a dict with a 'type' key, got {type(cfg).__name__}")
    options = {**defaults, **dict(cfg)}
    if 'type' not in options:
        raise ConfigError(f"{where}.type: missing; expected one of {', '.join(sorted(BLOCKS))}")
    cls = get_block(options.pop('type'), f'{where}.type')
    if 'in_channels' in options and 'in_channels' not in block_options(cls):
        in_channels = options.pop('in_channels')
        options.setdefault('channels', in_channels)
    if 'channels' not in options:
        raise ConfigError(f"{where}.channels: missing; {cls.__name__} needs the input channel count")
    channels = options.pop('channels')
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ConfigError(f"{where}.channels: expected a positive int, got {channels!r}")
    check_options(cls, options, where)
    try:
        return cls(channels, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: cannot build {cls.__name__}(channels={channels}, "
                          f"{', '.join(f'{k}={v!r}' for k, v in options.items())}): {err}") from err

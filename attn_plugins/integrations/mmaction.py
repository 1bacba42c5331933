"""mmaction2 integration: our blocks in video recognisers (registered when `mmaction.models` is imported).

Non-local networks (Wang et al., CVPR 2018). mmaction2's `ResNet3d` builds mmcv's `NonLocal3d`
itself from its `non_local` / `non_local_cfg` arguments, so our `NonLocal(dim=3)` goes in by
injection: `dict(type='InjectAttention', module=<ResNet3d cfg>, plugins=[dict(type='NonLocal', dim=3,
where='layer2.[1,3]', position='after'), ...], example_input=[1, 3, 8, 64, 64])` puts a block after
residual blocks, where mmaction2's own blocks sit (its `Bottleneck3d` runs `non_local_block` on
its output). `example_input` is the probing input's shape: the injector's default is an image.

Init. mmaction2 backbones (ResNet3d, ResNet) initialise from scratch in their own `init_weights`,
which Kaiming-inits every Conv3d and sets every BN weight to 1 (a non-local block would no longer
start as the identity) and does not call the children's `init_weights`. Every `inject` into an
mmaction2 module with its own `init_weights` therefore makes that method end with the blocks' own
init (`restore_blocks_after_own_init`). With a checkpoint (`pretrained`: a 2D one inflated or a 3D
one) mmaction2 loads it without re-initialising other layers, so the blocks keep their own init
or the weights the checkpoint holds for them.

Spatio-temporal pyramid attention (Du et al., ECCV 2018): `VideoPyramidAttentionHead`, an mmaction2
head over several backbone stages (`out_indices`) of a 3D backbone: `PyramidAttention(dim=3)`
scores every position of every frame of the target stage from the fused pyramid, then spatial
average pooling, temporal pooling, dropout and a linear classifier. Its PCA loss is added to the
head's losses as `loss_pca` (so it is in the training log and the optimised sum).

`convert_nonlocal_state_dict` maps a checkpoint of mmaction2's own non-local ResNet3d (mmcv
NonLocal3d blocks) onto the same network with our blocks injected at those positions.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from mmaction.models.heads.base import BaseHead
from mmaction.registry import MODELS
from mmengine.model import BaseModule
from mmengine.model.weight_init import normal_init

from ..losses import auxiliary_losses
from ..modules import PyramidAttention, reset_attention_blocks
from ..registry import VIDEO_HEADS, ConfigError
from .mmengine import register_once

TEMPORAL_POOLS = ('avg', 'max')


class VideoPyramidAttentionHead(BaseHead):
    """Interaction-aware spatio-temporal pyramid attention + classifier, for `Recognizer3D`.

    Takes the backbone's tuple of (B, C_l, T_l, H_l, W_l) maps (ResNet3d `out_indices`, e.g.
    (1, 2, 3) for res3-res5); the target map (`target_index`, default the last, i.e. the deepest)
    is attended over all its T·H·W positions with scores from all maps resampled to its size.

    Args:
        num_classes: classes.
        in_channels: channels of each backbone map (a list, one per out_index; an int for one map).
        target_index: which map is attended and classified.
        fuse_channels, num_components, pca_loss_weight, diversity_loss_weight: PyramidAttention options
            (its losses are added to the head's as 'loss_pca' and 'loss_diversity').
        temporal_pool: 'avg' or 'max' over frames, after spatial average pooling.
        dropout_ratio, init_std: as mmaction2's I3DHead (dropout before the classifier; its init).
        loss_cls, average_clips, ...: mmaction2 BaseHead options.
    """

    def __init__(self, num_classes: int, in_channels: int | Sequence[int], target_index: int = -1,
                 fuse_channels: int | None = None, num_components: int | None = None, pca_loss_weight: float = 0.1,
                 diversity_loss_weight: float = 0.1,
                 temporal_pool: str = 'avg', dropout_ratio: float = 0.5, init_std: float = 0.01,
                 loss_cls: dict = dict(type='CrossEntropyLoss'), **kwargs) -> None:
        widths = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        if not widths or not all(isinstance(c, int) and c > 0 for c in widths):
            raise ConfigError(f"cls_head.in_channels: expected the channels of each backbone map (positive ints), "
                              f"got {in_channels!r}")
        if not -len(widths) <= target_index < len(widths):
            raise ConfigError(f"cls_head.target_index: {target_index} is out of range for {len(widths)} maps")
        if temporal_pool not in TEMPORAL_POOLS:
            raise ConfigError(f"cls_head.temporal_pool: expected one of {TEMPORAL_POOLS}, got {temporal_pool!r}")
        super().__init__(num_classes, widths[target_index], loss_cls, **kwargs)
        self.in_widths, self.target_index = widths, target_index % len(widths)
        self.temporal_pool, self.init_std = temporal_pool, init_std
        self.pyramid = PyramidAttention(widths[self.target_index], widths, fuse_channels, num_components,
                                        self.target_index, dim=3, pca_loss_weight=pca_loss_weight,
                                        diversity_loss_weight=diversity_loss_weight)
        self.dropout = nn.Dropout(p=dropout_ratio) if dropout_ratio else None
        self.fc_cls = nn.Linear(widths[self.target_index], num_classes)

    def init_weights(self) -> None:
        """The classifier as mmaction2's I3DHead (normal, std `init_std`); the block its own init."""
        normal_init(self.fc_cls, std=self.init_std)
        self.pyramid.reset_parameters()

    def forward(self, x, **kwargs) -> torch.Tensor:
        feats = [x] if isinstance(x, torch.Tensor) else list(x)
        if len(feats) != len(self.in_widths):
            raise ConfigError(f"VideoPyramidAttentionHead: got {len(feats)} backbone maps, but cls_head.in_channels "
                              f"lists {len(self.in_widths)} ({self.in_widths}); match the backbone's out_indices")
        attended = self.pyramid(feats)                               # B, C, T, H, W
        per_frame = attended.mean(dim=(3, 4))                        # spatial average: B, C, T
        pooled = per_frame.mean(-1) if self.temporal_pool == 'avg' else per_frame.amax(-1)
        if self.dropout is not None:
            pooled = self.dropout(pooled)
        return self.fc_cls(pooled)

    def loss_by_feat(self, cls_scores: torch.Tensor, data_samples) -> dict:
        losses = super().loss_by_feat(cls_scores, data_samples)
        losses.update(auxiliary_losses(self.pyramid))      # {'loss_pca': weight · L_pca}, handed out once
        return losses


class _OwnInitThenBlocks:
    """`init_weights` of an mmaction2 module with injected blocks: its own class's init_weights,
    then, when that initialised from scratch (no `pretrained` checkpoint), the blocks' own init.
    A module-level class holding the module, so the model still pickles and deep-copies."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs) -> None:
        type(self.module).init_weights(self.module, *args, **kwargs)
        pretrained = kwargs.get('pretrained') or (args[0] if args else None) or getattr(self.module, 'pretrained', None)
        if not isinstance(pretrained, str) or not pretrained:
            reset_attention_blocks(self.module)


def restore_blocks_after_own_init(model):
    """AFTER_INJECT hook: an mmaction2 module (backbone) whose class defines its own `init_weights`
    gets one that ends with the injected blocks' own init (see the module docstring). Idempotent."""
    own = getattr(type(model), 'init_weights', None)
    if (isinstance(model, BaseModule) and type(model).__module__.startswith('mmaction.')
            and own is not None and own is not BaseModule.init_weights
            and not isinstance(model.__dict__.get('init_weights'), _OwnInitThenBlocks)):
        model.init_weights = _OwnInitThenBlocks(model)
    return model


def register_video() -> None:
    """Register the video heads in mmaction2's MODELS and the init hook for injection (idempotent)."""
    from .. import injector
    if restore_blocks_after_own_init not in injector.AFTER_INJECT:
        injector.AFTER_INJECT.append(restore_blocks_after_own_init)
    for name in VIDEO_HEADS:
        register_once(MODELS, name, globals()[name])


_MMACTION_NONLOCAL = re.compile(r'^(?P<host>(?:.+\.)?layer\d+\.\d+)\.non_local_block\.(?P<rest>.+)$')


def convert_nonlocal_state_dict(state: Mapping, attr: str = 'attn_non_local') -> dict:
    """An mmaction2 ResNet3d / recogniser state dict with its own non-local blocks (mmcv NonLocal3d,
    `<...>layerN.M.non_local_block.*`) -> keys of the same network with our NonLocal injected
    after those residual blocks (`<...>layerN.M.attn_non_local.*`, mmcv's sub-keys renamed as in
    `attn_plugins.integrations.convert.nonlocal_key`). Other keys are kept."""
    from .convert import nonlocal_key
    out = {}
    for key, value in state.items():
        match = _MMACTION_NONLOCAL.match(key)
        out[f"{match['host']}.{attr}.{nonlocal_key(match['rest'])}" if match else key] = value
    return out

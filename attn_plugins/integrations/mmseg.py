"""mmsegmentation decode heads built on our memory-bounded blocks (registered in mmseg's MODELS).

    DualAttentionHead     the DANet head (Fu et al., CVPR 2019): per-branch 3x3 conv+BN+ReLU
                          reduction, PAM / CAM, 3x3 conv+BN+ReLU, dropout + 1x1 classifiers on
                          the sum and on each branch; three losses with configurable weights.
                          Attribute names follow mmseg's DAHead, so its checkpoints convert by
                          renaming the PAM/CAM parameters only (see `convert`).
    NonLocalHead          FCN head with a non-local block between its two 3x3 convs (as NLHead).
    PyramidAttentionHead  interaction-aware pyramid attention over several backbone stages
                          (in_index a list); the block's PCA loss is added to the decode losses
                          (through `auxiliary_losses`, so AuxiliaryLossHook never adds it twice).

Also registered (mmseg's OPTIM_WRAPPER_CONSTRUCTORS): `TimmConvNeXtLayerDecayOptimizerConstructor`,
mmseg's ConvNeXt learning-rate decay for a timm ConvNeXt in our TimmBackbone.
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

import torch
from mmcv.cnn import ConvModule, build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.fcn_head import FCNHead
from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmseg.utils import add_prefix

from ..losses import auxiliary_losses
from ..modules import ChannelAttention, NonLocal, PositionAttention, PyramidAttention
from ..modules._helpers import positive_int
from ..registry import HEADS, ConfigError
from .mmengine import register_once


class DualAttentionHead(BaseDecodeHead):
    """DANet head with memory-bounded position attention.

    Args:
        pam_channels: query/key width of the position attention (paper: channels // 8 = 64).
        loss_weights: weights of the (sum, PAM, CAM) losses (mmseg: all 1.0).
        chunk_elements: position-attention memory bound (score elements per chunk).
    """

    def __init__(self, pam_channels: int = 64, loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
                 chunk_elements: int = 1 << 24, **kwargs):
        super().__init__(**kwargs)
        if len(loss_weights) != 3:
            raise ValueError(f"decode_head.loss_weights: expected 3 weights (sum, pam, cam), got {loss_weights}")
        self.loss_weights = tuple(float(w) for w in loss_weights)
        conv = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.pam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1, **conv)
        self.pam = PositionAttention(self.channels, qk_channels=positive_int(pam_channels, 'pam_channels'),
                                     chunk_elements=chunk_elements)
        self.pam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **conv)
        self.pam_conv_seg = torch.nn.Conv2d(self.channels, self.num_classes, 1)
        self.cam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1, **conv)
        self.cam = ChannelAttention(self.channels)
        self.cam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **conv)
        self.cam_conv_seg = torch.nn.Conv2d(self.channels, self.num_classes, 1)

    def _classify(self, conv: torch.nn.Module, feat: torch.Tensor) -> torch.Tensor:
        return conv(self.dropout(feat) if self.dropout is not None else feat)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        return (self.cls_seg(pam_feat + cam_feat), self._classify(self.pam_conv_seg, pam_feat),
                self._classify(self.cam_conv_seg, cam_feat))

    def predict(self, inputs, batch_img_metas, test_cfg, **kwargs):
        """Inference uses the summed branch only."""
        return self.predict_by_feat(self.forward(inputs)[0], batch_img_metas, **kwargs)

    def loss_by_feat(self, seg_logits, batch_data_samples, **kwargs) -> dict:
        losses = {}
        for name, logit, weight in zip(('pam_cam', 'pam', 'cam'), seg_logits, self.loss_weights):
            part = super().loss_by_feat(logit, batch_data_samples)
            part = {k: (v * weight if k.startswith('loss') else v) for k, v in part.items()}
            losses.update(add_prefix(part, name))
        return losses


class NonLocalHead(FCNHead):
    """FCN head (two 3x3 convs) with a non-local block between them, as mmseg's NLHead.

    `norm_cfg` (BN, SyncBN, GN, ...) is used by the convs and, as in NLHead, by the norm after the
    block's W_z (weight 0 at init, so the block starts as the identity; none with norm_cfg=None).

    Args:
        reduction, use_scale, mode, sub_sample: NonLocal options (mode: any of the four).
    """

    def __init__(self, reduction: int = 2, use_scale: bool = True, mode: str = 'embedded_gaussian',
                 sub_sample: bool = False, chunk_elements: int = 1 << 24, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        norm_layer = functools.partial(_build_norm, dict(self.norm_cfg)) if self.norm_cfg is not None else None
        self.nl_block = NonLocal(self.channels, dim=2, mode=mode, reduction=reduction, use_scale=use_scale,
                                 sub_sample=sub_sample, norm=self.norm_cfg is not None, norm_layer=norm_layer,
                                 chunk_elements=chunk_elements)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        out = self.convs[1](self.nl_block(self.convs[0](x)))
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


def _build_norm(norm_cfg: dict, channels: int) -> torch.nn.Module:
    """The norm layer of a mmcv `norm_cfg` for `channels` (a NonLocal `norm_layer`)."""
    return build_norm_layer(norm_cfg, channels)[1]


class PyramidAttentionHead(BaseDecodeHead):
    """Pyramid attention over several backbone stages for segmentation.

    The target stage (`target_index` into `in_index`, default the last) is reduced to
    `channels` by a 3x3 conv; all stages feed the pyramid; a 3x3 conv and the classifier follow.

    Args:
        in_index / in_channels: lists, one entry per stage (input_transform='multiple_select').
        fuse_channels, num_components: PyramidAttention options.
        pca_loss_weight, diversity_loss_weight: weights of PyramidAttention's losses, added to the decode
            losses as 'loss_pca' and 'loss_diversity' (the latter with >= 2 levels).
    """

    def __init__(self, fuse_channels: int | None = None, num_components: int | None = None,
                 target_index: int = -1, pca_loss_weight: float = 0.1,
                 diversity_loss_weight: float = 0.1, **kwargs):
        kwargs.setdefault('input_transform', 'multiple_select')
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, (list, tuple)):
            raise ValueError("decode_head.in_channels: PyramidAttentionHead needs a list (one per in_index)")
        self.target_index = target_index % len(self.in_channels)
        conv = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.in_conv = ConvModule(self.in_channels[self.target_index], self.channels, 3, padding=1, **conv)
        pyramid_channels = list(self.in_channels)
        pyramid_channels[self.target_index] = self.channels
        self.pyramid = PyramidAttention(self.channels, pyramid_channels, fuse_channels, num_components,
                                        self.target_index, pca_loss_weight=pca_loss_weight,
                                        diversity_loss_weight=diversity_loss_weight)
        self.out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **conv)

    def forward(self, inputs):
        feats = list(self._transform_inputs(inputs))
        feats[self.target_index] = self.in_conv(feats[self.target_index])
        return self.cls_seg(self.out_conv(self.pyramid(feats)))

    def loss_by_feat(self, seg_logits, batch_data_samples, **kwargs) -> dict:
        losses = super().loss_by_feat(seg_logits, batch_data_samples)
        losses.update(auxiliary_losses(self.pyramid))      # {'loss_pca': weight · L_pca}, handed out once
        return losses


class _MMPretrainConvNeXtView:
    """A segmentor as mmseg's lr-decay rules read it: parameters under mmpretrain ConvNeXt's names,
    and a backbone whose class name says ConvNeXt (what mmseg dispatches on)."""

    class ConvNeXt:
        pass

    def __init__(self, model: torch.nn.Module):
        self.model, self.backbone = model, self.ConvNeXt()

    def named_parameters(self):
        for name, param in self.model.named_parameters():
            yield _mmpretrain_convnext_name(name), param


# timm ConvNeXt features-model names (in TimmBackbone) -> mmpretrain ConvNeXt names
_CONVNEXT_NAMES = ((re.compile(r'backbone\.timm_model\.stem_(\d+)\.(.+)'), r'backbone.downsample_layers.0.\1.\2'),
                   (re.compile(r'backbone\.timm_model\.stages_(\d+)\.downsample\.(.+)'), r'backbone.downsample_layers.\1.\2'),
                   (re.compile(r'backbone\.timm_model\.stages_(\d+)\.blocks\.(\d+)\.(.+)'), r'backbone.stages.\1.\2.\3'))


def _mmpretrain_convnext_name(name: str) -> str:
    for pattern, replacement in _CONVNEXT_NAMES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    if name.startswith('backbone.'):
        raise ConfigError(f"TimmConvNeXtLayerDecayOptimizerConstructor: backbone parameter {name!r} is not in the "
                          "stem, a downsampling layer or a ConvNeXt block, so it has no place in the lr decay")
    return name


class TimmConvNeXtLayerDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """mmseg's `LearningRateDecayOptimizerConstructor` (ConvNeXt lr decay, `decay_type` 'stage_wise'
    or 'layer_wise'; no weight decay on 1-D parameters and biases) for a timm ConvNeXt in our
    `TimmBackbone`. mmseg's rules read the parameter names of mmpretrain's ConvNeXt, so timm's are
    mapped to them first (stem and `stages_N.downsample` -> `downsample_layers.N`,
    `stages_N.blocks.M` -> `stages.N.M`; a block injected into a ConvNeXt block goes with it)."""

    def add_params(self, params, module, **kwargs) -> None:
        from .timm import TimmBackbone
        backbone = getattr(module, 'backbone', None)
        if not isinstance(backbone, TimmBackbone) or not backbone.model_name.split('.')[0].startswith('convnext'):
            raise ConfigError("optim_wrapper.constructor TimmConvNeXtLayerDecayOptimizerConstructor: needs a model "
                              "whose backbone is a TimmBackbone of a timm ConvNeXt (model_name 'convnext_*'), got "
                              f"{getattr(backbone, 'model_name', type(backbone).__name__)!r}")
        super().add_params(params, _MMPretrainConvNeXtView(module), **kwargs)


def register_heads() -> None:
    """Register the heads named in `attn_plugins.registry.HEADS` in mmseg's MODELS, and the optimizer
    constructor above (idempotent)."""
    for name in HEADS:
        register_once(MODELS, name, globals()[name])
    register_once(OPTIM_WRAPPER_CONSTRUCTORS, TimmConvNeXtLayerDecayOptimizerConstructor.__name__,
                  TimmConvNeXtLayerDecayOptimizerConstructor)

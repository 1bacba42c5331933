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
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.fcn_head import FCNHead
from mmseg.registry import MODELS
from mmseg.utils import add_prefix

from ..losses import auxiliary_losses
from ..modules import ChannelAttention, NonLocal, PositionAttention, PyramidAttention
from ..registry import HEADS
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
        self.pam = PositionAttention(self.channels, qk_channels=pam_channels, chunk_elements=chunk_elements)
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

    Args:
        reduction, use_scale, mode, sub_sample: NonLocal options (mode: any of the four).
    """

    def __init__(self, reduction: int = 2, use_scale: bool = True, mode: str = 'embedded_gaussian',
                 sub_sample: bool = False, chunk_elements: int = 1 << 24, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.nl_block = NonLocal(self.channels, dim=2, mode=mode, reduction=reduction, use_scale=use_scale,
                                 sub_sample=sub_sample, norm=self.norm_cfg is not None,
                                 chunk_elements=chunk_elements)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        out = self.convs[1](self.nl_block(self.convs[0](x)))
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


class PyramidAttentionHead(BaseDecodeHead):
    """Pyramid attention over several backbone stages for segmentation.

    The target stage (`target_index` into `in_index`, default the last) is reduced to
    `channels` by a 3x3 conv; all stages feed the pyramid; a 3x3 conv and the classifier follow.

    Args:
        in_index / in_channels: lists, one entry per stage (input_transform='multiple_select').
        fuse_channels, num_components: PyramidAttention options.
        pca_loss_weight: weight of the PCA loss added to the decode losses as 'loss_pca'.
    """

    def __init__(self, fuse_channels: int | None = None, num_components: int | None = None,
                 target_index: int = -1, pca_loss_weight: float = 0.1, **kwargs):
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
                                        self.target_index, pca_loss_weight=pca_loss_weight)
        self.out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **conv)

    def forward(self, inputs):
        feats = list(self._transform_inputs(inputs))
        feats[self.target_index] = self.in_conv(feats[self.target_index])
        return self.cls_seg(self.out_conv(self.pyramid(feats)))

    def loss_by_feat(self, seg_logits, batch_data_samples, **kwargs) -> dict:
        losses = super().loss_by_feat(seg_logits, batch_data_samples)
        losses.update(auxiliary_losses(self.pyramid))      # {'loss_pca': weight · L_pca}, handed out once
        return losses


def register_heads() -> None:
    """Register the heads named in `attn_plugins.registry.HEADS` in mmseg's MODELS (idempotent)."""
    for name in HEADS:
        register_once(MODELS, name, globals()[name])

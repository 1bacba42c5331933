"""Interaction-aware (spatio-temporal) pyramid attention (Du et al., "Interaction-aware
Spatio-temporal Pyramid Attention Networks for Action Classification", ECCV 2018).

No public implementation exists; this is our reading of the paper, each choice documented:

1. Pyramid. The block takes any number of feature maps (layers of a backbone, or frames of a
   clip). Map l is reduced by a 1x1 conv to `fuse_channels` and resampled (area averaging
   down, bilinear/trilinear up) to the target map's size; the results are summed. A sum of
   per-level 1x1 convs is one 1x1 conv on their concatenation, i.e. the paper's fusion
   "concatenate, then mix". Resampling is linear, so it commutes with the 1x1 convs.
2. Interaction-aware scores (PCA). Local features f_i of the fused map are centred over all
   positions (f̃_i = f_i - mean_j f_j) and projected onto K learned principal directions
   W (fuse_channels x K): z_i = Wᵀ f̃_i. A position's code therefore depends on every other
   position (the mean, and W learned from all features), not only on its own vector.
3. Attention, extending DANet's position attention (seed text): S_ij = softmax_j(z_iᵀ z_j / √K),
   y = x_t + γ · V(x_t) Sᵀ with x_t the target map, V a 1x1 conv and γ = 0 at init (identity).
   Memory-bounded: S is computed in query chunks, never whole.
4. PCA loss. L_pca = ‖F̃ - W Wᵀ F̃‖² / ‖F̃‖² + ‖WᵀW - I‖² / K: reconstruction plus
   orthonormality, minimised by the top-K principal subspace of the features. Computed while
   training and exposed as `pca_loss`; the training loop adds it with its own weight.
5. Spatio-temporal. With dim=3 the maps are (B, C, T, H, W) and positions run over T·H·W; or
   pass a clip's frames as the list of maps (the pyramid takes any number of inputs).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from ._helpers import place, residual_add, DEFAULT_CHUNK_ELEMENTS, attend, resize_to

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class PyramidAttention(nn.Module):
    """Interaction-aware pyramid attention over a list of feature maps.

    Args:
        channels: channels of the target map (the output has the target's shape).
        in_channels: channels of each input map (default: one map of `channels`).
        fuse_channels: width of the fused pyramid (default: channels // 4).
        num_components: K principal directions (default: fuse_channels // 4).
        target_index: which input is attended and returned (default 0, the first).
        dim: 2 for images, 3 for videos (B, C, T, H, W).
        chunk_elements: memory bound (score elements per chunk and sample).
    """

    def __init__(self, channels: int, in_channels: Sequence[int] | None = None, fuse_channels: int | None = None,
                 num_components: int | None = None, target_index: int = 0, dim: int = 2,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, device=None, dtype=None):
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"dim: expected 2 (images) or 3 (videos), got {dim!r}")
        self.channels = channels
        self.in_channels = list(in_channels) if in_channels is not None else [channels]
        if not -len(self.in_channels) <= target_index < len(self.in_channels):
            raise ValueError(f"target_index: {target_index} is out of range for {len(self.in_channels)} inputs")
        if self.in_channels[target_index] != channels:
            raise ValueError(f"in_channels[{target_index}] (the target map) must equal channels={channels}, "
                             f"got {self.in_channels[target_index]}")
        self.dim, self.target_index, self.chunk_elements = dim, target_index, chunk_elements
        self.fuse_channels = fuse_channels or max(channels // 4, 1)
        self.num_components = num_components or max(self.fuse_channels // 4, 1)
        conv = _CONV[dim]
        self.reduce = nn.ModuleList(conv(c, self.fuse_channels, 1, bias=(i == 0))
                                    for i, c in enumerate(self.in_channels))
        self.components = nn.Parameter(torch.empty(self.fuse_channels, self.num_components))
        nn.init.orthogonal_(self.components)
        self.value = conv(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.pca_loss: torch.Tensor | None = None
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        place(self, device, dtype)

    def _check(self, feats: list[torch.Tensor]) -> None:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"PyramidAttention: expected {len(self.in_channels)} feature maps "
                             f"(in_channels={self.in_channels}), got {len(feats)}")
        if torch.jit.is_tracing():
            return
        for i, (f, c) in enumerate(zip(feats, self.in_channels)):
            if f.dim() != self.dim + 2 or f.shape[1] != c:
                raise ValueError(f"PyramidAttention: input {i} must be (B, {c}, {'T, ' if self.dim == 3 else ''}H, W), "
                                 f"got {tuple(f.shape)}")

    def forward(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        self._check(feats)
        target = feats[self.target_index]
        size = tuple(target.shape[2:])
        fused = sum(resize_to(conv(f), size) for conv, f in zip(self.reduce, feats))
        flat = fused.flatten(2)                                          # B, Cf, N
        centred = flat - flat.mean(-1, keepdim=True)
        codes = torch.matmul(self.components.t(), centred)              # B, K, N
        if self.training:
            self.pca_loss = self._pca_loss(centred, codes)
        query = codes.transpose(1, 2)
        value = self.value(target).flatten(2)                          # B, C, N
        out = attend(self, query, codes, value, self.num_components ** -0.5)
        return residual_add(target, self.gamma, out.view_as(target))

    def _pca_loss(self, centred: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        recon = torch.matmul(self.components, codes)                   # B, Cf, N
        recon_err = (centred - recon).pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)
        gram = self.components.t() @ self.components
        eye = torch.eye(self.num_components, device=gram.device, dtype=gram.dtype)
        return recon_err + (gram - eye).pow(2).sum() / self.num_components

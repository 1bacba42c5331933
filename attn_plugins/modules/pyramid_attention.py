"""Interaction-aware (spatio-temporal) pyramid attention (Du, Yuan, Li, Zhao, Li, Hu, "Interaction-aware
Spatio-temporal Pyramid Attention Networks for Action Classification", ECCV 2018, arXiv:1808.01106).

What the paper states: self-attention usually scores a local feature from its own elements
(s_i = wᵀ x_i), which ignores the interactions among local features; inspired by PCA, the
score of a position should come from the projection of its feature on principal directions of
all local features, with a PCA loss added to training. Maps of several layers, resampled to one
scale, form a spatial pyramid whose fused features give the scores; the scores weight the local
features of all positions. The number of input maps is free, hence spatio-temporal.
No public implementation exists; this is our reading, each choice stated against the above.
Provenance: the paper's method-section equations were not available when this was written (only
its abstract and introduction, and third-party notes whose formulas are images), so the numbers
below are ours, not the paper's equation numbers. Those notes suggest three points where this
reading may differ: (a) a projection/attention per pyramid level whose results are fused
afterwards (here the levels' features are fused first and projected once); (b) a loss term
keeping the levels' attention diverse (absent here); (c) the PCA term written as the Lagrangian
of variance maximisation with an orthogonality penalty on the row-normalised basis (here
reconstruction + ‖WᵀW − I‖², the same objective as variance maximisation when W is orthonormal).
Notation: target map X = [x_1 .. x_N] (C x N, N = H·W or T·H·W), pyramid maps X^l.

1. Pyramid fusion:  F = Σ_l R(P_l X^l)  (Cf x N), P_l a 1x1 conv, R area averaging down and
   (bi|tri)linear up to the target's size. A sum of per-level 1x1 convs is one 1x1 conv on the
   concatenation ("concatenate, then mix"); R is linear, so it commutes with the convs.
2. PCA projection:  μ = 1/N Σ_j f_j,  z_i = Wᵀ (f_i − μ)  (K values per position), W (Cf x K)
   the learned principal directions, held orthonormal and on the principal subspace of the
   fused features by the PCA loss (5).
3. Interaction-aware score, one per position:
       σ_k = sqrt(1/N Σ_j z_jk² + ε),    s_i = Σ_k v_k z_ik / σ_k,    a = softmax_i(s)
   z_ik / σ_k is the whitened k-th principal component score (σ_k² is the k-th principal
   variance when W is the PCA basis); v (K) is learned. Why the whitening: in s_i = vᵀ z_i the
   mean only adds vᵀWᵀμ to every position, a shift the softmax removes, so centring alone is a
   no-op and the score would again use x_i's own elements only. σ_k is computed from all
   positions: moving any other f_j changes a_i / a_k even with f_i and f_k fixed (tested), and
   the scores are invariant to a common shift or rescaling of the features, as PCA scores are.
4. Attended features: the scores weight the local features of all positions,
       y_i = x_i + γ · N a_i · (V x)_i,    γ = 0 at init (a new block is the identity)
   with V a 1x1 conv. N a_i averages to 1, so the weighted map keeps x's scale, and its global
   average is V(Σ_i a_i x_i), the paper's score-weighted sum of local features: a host that
   average-pools after the block (classification networks) gets mean_i y_i = mean_i x_i +
   γ V(Σ_i a_i x_i) (tested).
5. PCA loss, on the centred fused features F̃ = F − μ1ᵀ with the gradient stopped (sg):
       L_pca = ‖sg(F̃) − W Wᵀ sg(F̃)‖² / ‖sg(F̃)‖² + ‖WᵀW − I‖² / K
   Reconstruction plus orthonormality, minimised by an orthonormal basis of the top-K
   principal subspace (tested). F̃ is detached so the loss fits W to the features and never
   the features to W: with a live target it could lower itself by squeezing the fused features
   (and the backbone) into the K-dim subspace, a rank collapse that does nothing for the task.
   So L_pca has no gradient w.r.t. the inputs or the pyramid convs and does not depend on the
   features' scale (tested). It is kept, weighted by `pca_loss_weight`, from the last training
   forward and collected by `attn_plugins.auxiliary_losses(model)` in any host (mmengine:
   `AuxiliaryLossHook`); a block whose loss is computed twice without being collected warns.
6. Spatio-temporal: with dim=3 the maps are (B, C, T, H, W) and positions run over T·H·W; or
   pass a clip's frames as the list of maps.
7. Memory: everything is O(N·C); no N x N map exists. (The seed summary calls the block an
   extension of DANet's position attention: we keep its placement and zero-init residual γ,
   but the paper's score is one per position, not a pairwise map.)
"""
from __future__ import annotations

import warnings
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, residual_add, resize_to

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


@records_attention
class PyramidAttention(HostInit, nn.Module):
    """Interaction-aware pyramid attention over a list of feature maps.

    Args:
        channels: channels of the target map (the output has the target's shape).
        in_channels: channels of each input map (default: one map of `channels`).
        fuse_channels: width Cf of the fused pyramid (default: channels // 4).
        num_components: K principal directions (default: fuse_channels // 4).
        target_index: which input is attended and returned (default 0, the first).
        dim: 2 for images, 3 for videos (B, C, T, H, W).
        pca_loss_weight: weight of the PCA loss handed to `auxiliary_losses` (0: not collected).
        eps: ε of the whitening σ_k.
    """

    def __init__(self, channels: int, in_channels: Sequence[int] | None = None, fuse_channels: int | None = None,
                 num_components: int | None = None, target_index: int = 0, dim: int = 2,
                 pca_loss_weight: float = 0.1, eps: float = 1e-5, device=None, dtype=None):
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
        if pca_loss_weight < 0:
            raise ValueError(f"pca_loss_weight: expected a weight >= 0, got {pca_loss_weight!r}")
        self.dim, self.target_index = dim, target_index
        self.pca_loss_weight, self.eps = float(pca_loss_weight), float(eps)
        self.fuse_channels = fuse_channels or max(channels // 4, 1)
        self.num_components = num_components or max(self.fuse_channels // 4, 1)
        conv = _CONV[dim]
        self.reduce = nn.ModuleList(conv(c, self.fuse_channels, 1, bias=(i == 0))
                                    for i, c in enumerate(self.in_channels))
        self.components = nn.Parameter(torch.empty(self.fuse_channels, self.num_components))   # W
        self.score = nn.Parameter(torch.empty(self.num_components))                            # v
        self.value = conv(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.pca_loss: torch.Tensor | None = None
        self._pca_loss_pending = False
        self._warned_uncollected = False
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        self.reset_parameters()
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """W orthonormal, v ~ N(0, 1/K) (scores of unit spread), γ = 0; convs as PyTorch's default."""
        for conv in (*self.reduce, self.value):
            conv.reset_parameters()
        nn.init.orthogonal_(self.components)
        nn.init.normal_(self.score, std=self.num_components ** -0.5)
        nn.init.zeros_(self.gamma)

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
        centred = fused.flatten(2) - fused.flatten(2).mean(-1, keepdim=True)        # F̃: B, Cf, N
        attn = self.scores(centred).softmax(-1)                                     # a: B, N
        self._keep_pca_loss(centred)
        if self.record_attention:
            self.attention_map = attn.detach().view(target.shape[0], 1, *size)
        weights = (attn * attn.shape[-1]).to(target.dtype).view(target.shape[0], 1, *size)   # N a_i
        return residual_add(target, self.gamma, self.value(target) * weights)

    def scores(self, centred: torch.Tensor) -> torch.Tensor:
        """s_i = Σ_k v_k z_ik / σ_k from centred fused features (B, Cf, N) -> (B, N), in fp32 or wider."""
        proj = _at_least_fp32(torch.matmul(self.components.t(), centred))           # z: B, K, N
        spread = proj.pow(2).mean(-1, keepdim=True).add(self.eps).sqrt()            # σ_k: B, K, 1
        return torch.einsum('k,bkn->bn', self.score.to(proj.dtype), proj / spread)

    def _keep_pca_loss(self, centred: torch.Tensor) -> None:
        if not self.training:
            self.pca_loss, self._pca_loss_pending = None, False
            return
        if self._pca_loss_pending and self.pca_loss_weight and not self._warned_uncollected:
            self._warned_uncollected = True
            warnings.warn("PyramidAttention: the PCA loss of the previous training forward was never collected; "
                          "add sum(attn_plugins.auxiliary_losses(model).values()) to the training loss (mmengine: "
                          "custom_hooks=[dict(type='AuxiliaryLossHook')]), or set pca_loss_weight=0", stacklevel=3)
        with torch.enable_grad():   # the target is detached, so this trains W even when the forward ran under
            loss = self.pca_loss_of(centred)   # no_grad (re-entrant checkpointing, e.g. mmcv with_cp)
        if _in_backward():      # checkpointing re-runs this forward in backward (same ops, so the same saved
            return              # tensors): the forward's loss was kept already
        self.pca_loss = loss
        self._pca_loss_pending = True

    def pca_loss_of(self, centred: torch.Tensor) -> torch.Tensor:
        """L_pca of centred fused features (B, Cf, N); they are detached (the loss trains W only)."""
        target = _at_least_fp32(centred.detach())
        w = self.components.to(target.dtype)
        recon = torch.matmul(w, torch.matmul(w.t(), target))                          # W Wᵀ F̃
        recon_err = (target - recon).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
        gram = w.t() @ w
        eye = torch.eye(self.num_components, device=gram.device, dtype=gram.dtype)
        return recon_err + (gram - eye).pow(2).sum() / self.num_components

    def pop_auxiliary_losses(self) -> Dict[str, torch.Tensor]:
        """{'loss_pca': pca_loss_weight · L_pca} of the last training forward, handed out once
        (a head and a hook collecting from the same model never count it twice); {} otherwise."""
        if not self._pca_loss_pending or self.pca_loss is None or not self.pca_loss_weight:
            return {}
        self._pca_loss_pending = False
        return {'loss_pca': self.pca_loss * self.pca_loss_weight}


def _in_backward() -> bool:
    """Whether autograd is running a backward pass (where checkpointing recomputes forwards)."""
    task_id = getattr(torch._C, '_current_graph_task_id', None)
    return task_id is not None and task_id() >= 0


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

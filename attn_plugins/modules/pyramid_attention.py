"""Interaction-aware (spatio-temporal) pyramid attention (Du, Yuan, Li, Zhao, Li, Hu, "Interaction-aware
Spatio-temporal Pyramid Attention Networks for Action Classification", ECCV 2018, arXiv:1808.01106).

Paper (abstract, Sec. 1): a self-attention score is usually a function of a local feature's own
elements, ignoring the interactions among local features; inspired by PCA, the scores come from
the local features' projection on principal directions, with a PCA loss in training. Maps of
several layers, resampled to one scale, form a spatial pyramid whose multi-scale information gives
the scores; the scores weight the local features of all positions. The number of input maps is
free, hence spatio-temporal. No public implementation exists.
Provenance: the method section (Sec. 3) was in no copy we could find (only the abstract and
Sec. 1). Its structure comes from the abstract, the authors' company's article (besthub.dev, Meitu:
"downsamples feature maps from different CNN layers to a unified scale using a sampling function R.
Then, attention is applied ... at each scale ... A fusion function aggregates ...", a PCA-guided loss
for "complementary information across scales") and two reading notes (one attention map per scale,
the maps kept diverse, then combined; the PCA loss is variance maximisation via a Lagrangian, plus an
"interactive" term on L2-normalised vectors whose Gram diagonal is 1). Below, "Sec. 3" names that
structure; every exact formula is ours, and says so.
Notation: target map X = [x_1 .. x_N] (C x N, N = H·W or T·H·W), pyramid maps X^l, l = 1..L.

1. Sampling R (Sec. 3 structure; R's form ours):  F^l = R(P_l X^l)  (Cf x N), P_l a 1x1 conv, R
   area averaging down and (bi|tri)linear up to the target's size.
2. Per-level interaction-aware score (Sec. 3: attention at each scale, PCA-inspired; formula ours):
       z^l_i = W_lᵀ (f^l_i − μ^l),   σ^l_k = sqrt(1/N Σ_j (z^l_jk)² + ε),
       s^l_i = Σ_k v_lk z^l_ik / σ^l_k,   a^l = softmax_i(s^l)
   μ^l the mean over positions, W_l (Cf x K) the level's principal directions (held on the
   principal subspace by (5)), v_l (K) learned. z/σ is the whitened principal-component score: σ
   is computed from all positions, so moving other local features changes a_i / a_j with f_i, f_j
   fixed (the interaction; tested), and a^l is invariant to a common shift or rescaling of the
   features. Centring alone would be a no-op under the softmax; the whitening is what makes it count.
3. Fusion function (Sec. 3: the levels' maps combined into the layer's map; form ours):
       a = Σ_l β_l a^l,   β = softmax(b),  b = 0 at init (the levels' mean)
   a convex mixture, so each level's map stays readable and a is a distribution over positions.
4. Attended features (paper: the scores weight the local features of all positions; residual ours):
       y_i = x_i + γ · N a_i · (V x)_i,    γ = 0 at init (a new block is the identity)
   V a 1x1 conv. The global average of the weighted map is V(Σ_i a_i x_i), the score-weighted sum of
   local features: a host that average-pools after the block gets mean_i y_i = mean_i x_i +
   γ V(Σ_i a_i x_i) (tested). (The seed survey calls the block an extension of DANet's position
   attention; we keep its zero-init residual, but the score is one per position, no N x N map.)
5. PCA loss, per level, on the centred features with the gradient stopped (sg) (Sec. 3: variance
   maximisation; here its penalty form, ours):
       L_pca = 1/L Σ_l [ ‖sg(F̃^l) − W_l W_lᵀ sg(F̃^l)‖² / ‖sg(F̃^l)‖² + ‖W_lᵀW_l − I‖² / K ]
   For orthonormal W, ‖F̃ − WWᵀF̃‖² = ‖F̃‖² − ‖WᵀF̃‖², so this maximises the projected variance;
   minimised by an orthonormal basis of the top-K principal subspace (tested). The target is
   detached: the loss fits W to the features, never the features to W (a live target could lower
   it by squeezing the features into K dims), so it has no gradient w.r.t. the inputs or the convs.
6. Diversity loss (Sec. 3: the scales' maps kept diverse/complementary; the reading note's L2-normalised
   off-diagonal term; its normalisation ours), for L ≥ 2, with â^l = a^l / ‖a^l‖₂:
       L_div = 1/(L(L−1)) Σ_{l≠m} (â^lᵀ â^m)²    (batch mean; 0 when the maps do not overlap)
   It trains the scores (and the features below them). Both losses are kept, weighted by
   `pca_loss_weight` / `diversity_loss_weight` (the paper's λ is unknown: 0.1 each, ours), from the
   last training forward and collected by `attn_plugins.auxiliary_losses(model)` in any host
   (mmengine: `AuxiliaryLossHook`); a block whose losses were never collected warns once.
7. Spatio-temporal (paper: unrestricted number of maps): dim=3 maps are (B, C, T, H, W) and positions
   run over T·H·W; or pass a clip's frames as the list of maps. Memory O(L·N·C), no N x N map.
"""
from __future__ import annotations

import warnings
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, residual_add, resize_to, check_positions

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


@records_attention
class PyramidAttention(HostInit, nn.Module):
    """Interaction-aware pyramid attention over a list of feature maps.

    Args:
        channels: channels of the target map (the output has the target's shape).
        in_channels: channels of each input map, one pyramid level each (default: one map of `channels`).
        fuse_channels: width Cf of each level after its 1x1 conv P_l (default: channels // 4).
        num_components: K principal directions per level (default: fuse_channels // 4).
        target_index: which input is attended and returned (default 0, the first).
        dim: 2 for images, 3 for videos (B, C, T, H, W).
        pca_loss_weight: weight of the PCA loss (5) handed to `auxiliary_losses` (0: not collected).
        diversity_loss_weight: weight of the levels' diversity loss (6) (0: not collected; needs >= 2 levels).
        eps: ε of the whitening σ_k.
    """

    def __init__(self, channels: int, in_channels: Sequence[int] | None = None, fuse_channels: int | None = None,
                 num_components: int | None = None, target_index: int = 0, dim: int = 2,
                 pca_loss_weight: float = 0.1, diversity_loss_weight: float = 0.1, eps: float = 1e-5,
                 device=None, dtype=None):
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
        for key, weight in (('pca_loss_weight', pca_loss_weight), ('diversity_loss_weight', diversity_loss_weight)):
            if weight < 0:
                raise ValueError(f"{key}: expected a weight >= 0, got {weight!r}")
        self.dim, self.target_index = dim, target_index
        self.pca_loss_weight, self.diversity_loss_weight = float(pca_loss_weight), float(diversity_loss_weight)
        self.eps = float(eps)
        self.fuse_channels = fuse_channels or max(channels // 4, 1)
        self.num_components = num_components or max(self.fuse_channels // 4, 1)
        levels = len(self.in_channels)
        conv = _CONV[dim]
        self.reduce = nn.ModuleList(conv(c, self.fuse_channels, 1, bias=(i == 0))      # P_l (biases: centred away)
                                    for i, c in enumerate(self.in_channels))
        self.components = nn.Parameter(torch.empty(levels, self.fuse_channels, self.num_components))   # W_l
        self.score = nn.Parameter(torch.empty(levels, self.num_components))                            # v_l
        self.fusion = nn.Parameter(torch.empty(levels))                                                # b
        self.value = conv(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.pca_loss: torch.Tensor | None = None
        self.diversity_loss: torch.Tensor | None = None
        self._losses_pending = False
        self._warned = set()
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        self.level_attention_map: torch.Tensor | None = None
        self.reset_parameters()
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """W_l orthonormal, v_l ~ N(0, 1/K) (scores of unit spread), b = 0 (levels averaged), γ = 0;
        convs as PyTorch's default."""
        for conv in (*self.reduce, self.value):
            conv.reset_parameters()
        with torch.no_grad():
            for w in self.components:
                nn.init.orthogonal_(w)
        nn.init.normal_(self.score, std=self.num_components ** -0.5)
        nn.init.zeros_(self.fusion)
        nn.init.zeros_(self.gamma)

    @staticmethod
    def input_rank(dim: int) -> int:
        """Dims of the input maps, (B, C, *spatial) with `dim` spatial dims: what forward checks and
        `inject` requires."""
        return dim + 2

    def _check(self, feats: list[torch.Tensor]) -> None:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"PyramidAttention: expected {len(self.in_channels)} feature maps "
                             f"(in_channels={self.in_channels}), got {len(feats)}")
        if torch.jit.is_tracing():
            return
        for i, (f, c) in enumerate(zip(feats, self.in_channels)):
            if f.dim() != self.input_rank(self.dim) or f.shape[1] != c:
                raise ValueError(f"PyramidAttention: input {i} must be (B, {c}, {'T, ' if self.dim == 3 else ''}H, W), "
                                 f"got {tuple(f.shape)}")
            check_positions(f'PyramidAttention: input {i}', f)

    def forward(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        self._check(feats)
        target = feats[self.target_index]
        size = tuple(target.shape[2:])
        centred = self.centred_levels(feats)                                        # F̃^l: L, B, Cf, N
        level_attn = self.level_scores(centred).softmax(-1)                         # a^l: L, B, N
        attn = torch.einsum('l,lbn->bn', self.fusion.softmax(0).to(level_attn.dtype), level_attn)   # a: B, N
        self._keep_losses(centred, level_attn)
        if self.record_attention:
            self.attention_map = attn.detach().view(target.shape[0], 1, *size)
            self.level_attention_map = level_attn.detach().transpose(0, 1).reshape(target.shape[0], -1, *size)
        weights = (attn * attn.shape[-1]).to(target.dtype).view(target.shape[0], 1, *size)   # N a_i
        return residual_add(target, self.gamma, self.value(target) * weights)

    def centred_levels(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """F̃^l = R(P_l X^l) − μ^l of every level, (L, B, Cf, N) at the target's size."""
        size = tuple(feats[self.target_index].shape[2:])
        levels = [resize_to(conv(f), size).flatten(2) for conv, f in zip(self.reduce, feats)]
        return torch.stack([f - f.mean(-1, keepdim=True) for f in levels])

    def level_scores(self, centred: torch.Tensor) -> torch.Tensor:
        """s^l_i = Σ_k v_lk z^l_ik / σ^l_k of centred levels (L, B, Cf, N) -> (L, B, N), fp32 or wider."""
        w = self.components.transpose(1, 2).unsqueeze(1)                            # L, 1, K, Cf
        proj = _at_least_fp32(torch.matmul(w, centred))                             # z^l: L, B, K, N
        spread = proj.pow(2).mean(-1, keepdim=True).add(self.eps).sqrt()            # σ^l_k: L, B, K, 1
        return torch.einsum('lk,lbkn->lbn', self.score.to(proj.dtype), proj / spread)

    def level_attention(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """(L, B, N): each level's attention map a^l; the block's a is Σ_l β_l a^l, β = `level_weights()`."""
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        self._check(feats)
        return self.level_scores(self.centred_levels(feats)).softmax(-1)

    def level_weights(self) -> torch.Tensor:
        """β = softmax(b): the fusion weights of the levels' maps (L,)."""
        return self.fusion.softmax(0)

    def _keep_losses(self, centred: torch.Tensor, level_attn: torch.Tensor) -> None:
        if not self.training:
            self.pca_loss = self.diversity_loss = None
            self._losses_pending = False
            return
        if self._losses_pending and (self.pca_loss_weight or self.diversity_loss_weight):
            self._warn_once('uncollected', "PyramidAttention: the auxiliary losses of the previous training forward "
                            "were never collected; add sum(attn_plugins.auxiliary_losses(model).values()) to the "
                            "training loss (mmengine: custom_hooks=[dict(type='AuxiliaryLossHook')]), or set "
                            "pca_loss_weight=0 and diversity_loss_weight=0")
        with torch.enable_grad():   # the target is detached, so this trains W even when the forward ran under
            pca = self.pca_loss_of(centred)   # no_grad (re-entrant checkpointing, e.g. mmcv with_cp)
        diversity = self.diversity_loss_of(level_attn)
        if diversity is not None and self.diversity_loss_weight and not diversity.requires_grad:
            self._warn_once('no_grad', "PyramidAttention: a training forward ran without gradient (e.g. re-entrant "
                            "checkpointing), so the diversity loss of this step trains nothing")
        if _in_backward():      # checkpointing re-runs this forward in backward (same ops, so the same saved
            return              # tensors): the forward's losses were kept already
        self.pca_loss, self.diversity_loss = pca, diversity
        self._losses_pending = True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=6)   # the caller of the block (through nn.Module.__call__)

    def pca_loss_of(self, centred: torch.Tensor) -> torch.Tensor:
        """L_pca of centred levels (L, B, Cf, N); they are detached (the loss trains W_l only)."""
        target = _at_least_fp32(centred.detach())
        w = self.components.to(target.dtype).unsqueeze(1)                               # L, 1, Cf, K
        recon = torch.matmul(w, torch.matmul(w.transpose(-1, -2), target))              # W_l W_lᵀ F̃^l
        recon_err = (target - recon).pow(2).sum((1, 2, 3)) / target.pow(2).sum((1, 2, 3)).clamp_min(1e-12)
        gram = self.components.to(target.dtype).transpose(1, 2) @ self.components.to(target.dtype)
        eye = torch.eye(self.num_components, device=gram.device, dtype=gram.dtype)
        return (recon_err + (gram - eye).pow(2).sum((1, 2)) / self.num_components).mean()

    @staticmethod
    def diversity_loss_of(level_attn: torch.Tensor) -> torch.Tensor | None:
        """L_div of the levels' maps (L, B, N): mean squared overlap of the L2-normalised maps; None for one level."""
        levels = level_attn.shape[0]
        if levels < 2:
            return None
        unit = nn.functional.normalize(level_attn.float(), dim=-1)
        gram = torch.einsum('lbn,mbn->blm', unit, unit)                                 # â^lᵀ â^m, diagonal 1
        off = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
        return off.pow(2).sum((1, 2)).mean() / (levels * (levels - 1))

    def pop_auxiliary_losses(self) -> Dict[str, torch.Tensor]:
        """{'loss_pca': pca_loss_weight · L_pca, 'loss_diversity': diversity_loss_weight · L_div} of the last
        training forward (each only with a weight > 0; L_div only with >= 2 levels), handed out once (a head
        and a hook collecting from the same model never count them twice); {} otherwise."""
        if not self._losses_pending:
            return {}
        self._losses_pending = False
        losses = {}
        if self.pca_loss is not None and self.pca_loss_weight:
            losses['loss_pca'] = self.pca_loss * self.pca_loss_weight
        if self.diversity_loss is not None and self.diversity_loss_weight:
            losses['loss_diversity'] = self.diversity_loss * self.diversity_loss_weight
        return losses


def _in_backward() -> bool:
    """Whether autograd is running a backward pass (where checkpointing recomputes forwards)."""
    task_id = getattr(torch._C, '_current_graph_task_id', None)
    return task_id is not None and task_id() >= 0


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

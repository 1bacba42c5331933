"""Learn to Pay Attention attention estimator (Jetley et al., ICLR 2018).

    l̂_i = P l_i   (1x1 conv, only when l and g widths differ)
    c_i = ⟨u, l̂_i + g⟩  ("pc")   or   ⟨l̂_i, g⟩  ("dp")
    a = softmax_i(c_i),   g^s = Σ_i a_i l_i

The attended vector sums the original local features (as the authors' public code does);
the projection is used for compatibility only. Its direction follows the paper (Sec. 3.1: the
local features are mapped to g's width, L^s -> L̂^s, before C(L̂^s, g)) and SaoYan/LearnToPayAttention;
the authors' Lua code (3.1_vgg_atten.lua) instead maps g down, Linear(512, 256) after BN+ReLU+Dropout.
`normalize='sigmoid'` gives the public variant: a = σ(c), g^s = mean_i a_i l_i.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, check_channels


@records_attention
class PayAttention(HostInit, nn.Module):
    """Attention of a local feature map against a global feature vector.

    Args:
        channels: local map channels C_l.
        global_channels: global vector width C_g (default C_l; a projection is added if different).
        compatibility: 'pc' (parametrised, learned u) or 'dp' (dot product).
        normalize: 'softmax' (paper) or 'sigmoid'.

    forward(local (B, C_l, H, W), global (B, C_g)) -> (g^s (B, C_l), attention (B, 1, H, W)).
    """

    def __init__(self, channels: int, global_channels: int | None = None, compatibility: str = 'pc',
                 normalize: str = 'softmax', device=None, dtype=None):
        super().__init__()
        if compatibility not in ('pc', 'dp'):
            raise ValueError(f"compatibility: expected 'pc' or 'dp', got {compatibility!r}")
        if normalize not in ('softmax', 'sigmoid'):
            raise ValueError(f"normalize: expected 'softmax' or 'sigmoid', got {normalize!r}")
        self.channels = channels
        self.global_channels = global_channels or channels
        self.compatibility, self.normalize = compatibility, normalize
        self.project = (nn.Conv2d(channels, self.global_channels, 1, bias=False)
                        if self.global_channels != channels else nn.Identity())
        self.u = nn.Conv2d(self.global_channels, 1, 1, bias=False) if compatibility == 'pc' else None
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """The init of a new block: PyTorch's default for the projection and u."""
        for conv in (self.project, self.u):
            if isinstance(conv, nn.Conv2d):
                conv.reset_parameters()

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps, local features (B, C, H, W): what forward checks and `inject` requires."""
        return 4

    def forward(self, local: torch.Tensor, global_feat: torch.Tensor):
        check_channels('PayAttention', local, self.channels, min_dim=self.input_rank())
        tracing = False
        if not torch.jit.is_scripting():
            tracing = torch.jit.is_tracing() or isinstance(global_feat, torch.fx.Proxy)
        if not tracing and (global_feat.dim() != 2 or global_feat.shape[1] != self.global_channels):
            raise ValueError(f"PayAttention: global feature must be (B, {self.global_channels}), "
                             f"got {list(global_feat.shape)}")
        batch, _, height, width = local.shape
        projected = self.project(local)
        g = global_feat[:, :, None, None]
        scores = self.u(projected + g) if self.u is not None else (projected * g).sum(1, keepdim=True)
        if self.normalize == 'softmax':
            attn = torch.softmax(scores.flatten(2), dim=-1)              # B, 1, N
            attended = torch.bmm(local.flatten(2), attn.transpose(1, 2)).squeeze(-1)
        else:
            attn = torch.sigmoid(scores.flatten(2))
            attended = (local.flatten(2) * attn).mean(-1)
        attn = attn.view(batch, 1, height, width)
        if self.record_attention:
            self.attention_map = attn.detach()
        return attended, attn

"""DANet position attention module, PAM (Fu et al., "Dual Attention Network for Scene
Segmentation", CVPR 2019).

    B = Wq A,  C = Wk A  (C/8 channels),  D = Wv A  (C channels),   A: C x N, N = H·W
    S_ij = softmax_j(B_iᵀ C_j),   E = γ · D Sᵀ + A,   γ initialised to 0

The N x N map S is never materialised: queries are processed in chunks (equal to the dense
formula), so memory grows with N, not N². Set `record_attention` to keep S for pictures.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import (records_attention, HostInit, place, residual_add, DEFAULT_CHUNK_ELEMENTS, attention, inner_width,
                       check_channels, pointwise_convs, fusable_convs)


@records_attention
class PositionAttention(HostInit, nn.Module):
    """Self-attention over all positions, added to the input with a learned scale γ (0 at init).

    Args:
        channels: input (and output) channels C.
        reduction: query/key width is C // reduction (paper: 8).
        qk_channels: explicit query/key width (overrides `reduction`).
        scale: multiply the energies by this (paper: 1, no scaling).
        chunk_elements: score elements computed at once per sample (memory bound).
    """

    def __init__(self, channels: int, reduction: int = 8, qk_channels: int | None = None,
                 scale: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.qk_channels = inner_width(channels, reduction, qk_channels, 'qk_channels')
        self.query = nn.Conv2d(channels, self.qk_channels, 1)
        self.key = nn.Conv2d(channels, self.qk_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.scale = scale
        self.chunk_elements = chunk_elements
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """The init of a new block: PyTorch's default for the convs, γ = 0 (the identity)."""
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps, (B, C, H, W): what forward checks and `inject` requires."""
        return 4

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """D Sᵀ reshaped to x's shape: the attention output before γ and the residual."""
        check_channels('PositionAttention', x, self.channels, min_dim=self.input_rank())
        fuse = True
        if not torch.jit.is_scripting():
            fuse = fusable_convs(self.query, self.key, self.value)
        if fuse:
            features = pointwise_convs(x, [self.query.weight, self.key.weight, self.value.weight],
                                       [self.query.bias, self.key.bias, self.value.bias])     # one product of x
        else:       # hooked or replaced convs: called
            features = torch.cat([self.query(x), self.key(x), self.value(x)], 1).flatten(2)
        # split, not slices: one gradient pass in backward (see NonLocal._features)
        query, key, value = features.split([self.qk_channels, self.qk_channels, self.channels], dim=1)
        out, attn = attention(query.transpose(1, 2), key, value, self.scale, self.chunk_elements, self.record_attention)
        if attn is not None:
            self.attention_map = attn
        return out.view_as(x)

    @torch.jit.unused
    def query_attention(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Rows S_q of the attention map for the flat positions `queries` (indices into H·W):
        (B, Q, N), computed for those queries only (O(Q·N) memory, for pictures)."""
        check_channels('PositionAttention', x, self.channels, min_dim=self.input_rank())
        query = self.query(x).flatten(2)[:, :, queries].transpose(1, 2)      # B, Q, Ck
        return torch.softmax(self.scale * torch.bmm(query, self.key(x).flatten(2)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_add(x, self.gamma, self.context(x))

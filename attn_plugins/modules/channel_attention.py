"""DANet channel attention module, CAM (Fu et al., CVPR 2019).

    energy = A Aᵀ  (C x C),   X = softmax_j(max_j(energy_i) - energy_ij),
    E = β · X A + A,   β initialised to 0.   No convolutions.

The authors subtract each energy from its row maximum; softmax is shift-invariant per row, so
this equals softmax(-energy), which we compute directly (same numbers, one pass fewer).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, residual_add, check_channels


@records_attention
class ChannelAttention(HostInit, nn.Module):
    """Channel self-attention, added to the input with a learned scale β (0 at init).

    Args:
        channels: input (and output) channels C; the block has no convs, only β.
    """

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.gamma = nn.Parameter(torch.zeros(()))
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """β = 0: a new block is the identity."""
        nn.init.zeros_(self.gamma)

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps, (B, C, *spatial) with any number of spatial dims: what forward checks and `inject` requires."""
        return 3

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """X A reshaped to x's shape: the attention output before β and the residual."""
        check_channels('ChannelAttention', x, self.channels, min_dim=self.input_rank())
        flat = x.flatten(2)                                       # B, C, N
        attn = torch.softmax(-torch.bmm(flat, flat.transpose(1, 2)), dim=-1)
        if self.record_attention:
            self.attention_map = attn.detach()
        return torch.bmm(attn, flat).view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_add(x, self.gamma, self.context(x))

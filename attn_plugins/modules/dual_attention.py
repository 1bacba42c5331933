"""DANet dual attention (Fu et al., CVPR 2019): position and channel attention, summed.

    y = PAM(x) + CAM(x) - x = x + γ · D Sᵀ + β · X x

In the paper's head each branch has its own convs before and after and the two branch
outputs are summed. As a drop-in block both branches see the same x, so their plain sum would
count x twice; we keep one copy, which makes the block the identity at init (γ = β = 0), like
each branch. `DualAttentionHead` (mmseg integration) builds the paper's full head.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import HostInit, place, DEFAULT_CHUNK_ELEMENTS
from .channel_attention import ChannelAttention
from .position_attention import PositionAttention


class DualAttention(HostInit, nn.Module):
    """Sum of DANet's position and channel attention on one feature map.

    Args:
        channels: input (and output) channels C.
        reduction: PAM query/key width C // reduction (paper: 8).
        qk_channels: explicit PAM query/key width.
        chunk_elements: PAM memory bound (score elements per chunk).
    """

    def __init__(self, channels: int, reduction: int = 8, qk_channels: int | None = None,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.pam = PositionAttention(channels, reduction, qk_channels, chunk_elements=chunk_elements)
        self.cam = ChannelAttention(channels)
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """Both branches' init: γ = β = 0 (the identity)."""
        self.pam.reset_parameters()
        self.cam.reset_parameters()

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps: its position branch's (B, C, H, W)."""
        return PositionAttention.input_rank()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pam.gamma * self.pam.context(x) + self.cam.gamma * self.cam.context(x)

"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

    s = sigmoid(W2 · ReLU(W1 · avgpool(x) + b1) + b2),   y = x ⊙ s

W1: C -> C/r, W2: C/r -> C (1x1 convs with biases), r = 16 in every paper model. In a ResNet
bottleneck the block sits on the residual branch after the last conv+BN, before the add.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, check_channels, create_act, create_gate, reduced_channels


@records_attention
class SE(HostInit, nn.Module):
    """Channel gate from globally pooled features.

    Args:
        channels: input channels C.
        reduction: r, hidden width C / r (paper: 16).
        rd_channels: explicit hidden width (overrides `reduction`).
        rd_divisor: round the hidden width to a multiple of this (1 = paper; timm uses 8).
        act_layer: activation between the two convs.
        gate: 'sigmoid' (paper), 'hard_sigmoid', or a module.
        bias: biases on the two 1x1 convs (paper: True).
    """

    def __init__(self, channels: int, reduction: float = 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer='relu', gate='sigmoid', bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        rd_channels = rd_channels or reduced_channels(channels, reduction, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.act = create_act(act_layer)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.gate = create_gate(gate)
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """The init of a new block: PyTorch's default for both convs."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps, (B, C, H, W): what forward checks and `inject` requires."""
        return 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels('SE', x, self.channels, min_dim=self.input_rank())
        scale = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        if self.record_attention:
            self.attention_map = scale.detach()
        return x * scale

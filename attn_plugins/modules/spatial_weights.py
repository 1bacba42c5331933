"""Full-face gaze spatial weights (Zhang et al., "It's Written All over Your Face:
Full-Face Appearance-Based Gaze Estimation", CVPRW 2017).

    W = ReLU(conv3(ReLU(conv2(ReLU(conv1(U))))))    (1x1 convs C -> 256 -> 256 -> 1)
    V_c = W ⊙ U_c   for every channel c

One H x W map scales all channels of the backbone's last feature map U. The paper initialises
the convs from small Gaussians and the last bias to 1, so the map starts close to 1 (identity);
we do the same (std 0.01, 0.01, 0.001; last bias 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._helpers import records_attention, HostInit, place, check_channels, create_act


@records_attention
class SpatialWeights(HostInit, nn.Module):
    """Spatial weights: one learned H x W map multiplies every channel.

    Args:
        channels: input channels C.
        hidden_channels: width of the two hidden 1x1 convs (paper: 256).
        act_layer: activation after each conv (paper: ReLU, also after the last one).
        init_bias: bias of the last conv at init; the map starts at about this value.
    """

    def __init__(self, channels: int, hidden_channels: int = 256, act_layer='relu', init_bias: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, hidden_channels, 1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, 1)
        self.conv3 = nn.Conv2d(hidden_channels, 1, 1)
        self.act1, self.act2, self.act3 = create_act(act_layer), create_act(act_layer), create_act(act_layer)
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        self.init_bias = init_bias
        self.reset_parameters()
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """The paper's init: N(0, 0.01²), N(0, 0.01²), N(0, 0.001²) weights, last bias `init_bias`."""
        for conv, std in ((self.conv1, 0.01), (self.conv2, 0.01), (self.conv3, 0.001)):
            nn.init.normal_(conv.weight, std=std)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.conv3.bias, self.init_bias)

    @staticmethod
    def input_rank() -> int:
        """Dims of the input maps, (B, C, H, W): what forward checks and `inject` requires."""
        return 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels('SpatialWeights', x, self.channels, min_dim=self.input_rank())
        weights = self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        if self.record_attention:
            self.attention_map = weights.detach()
        return x * weights

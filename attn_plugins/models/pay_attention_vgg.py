"""VGG-16 with Learn-to-Pay-Attention at layers 7, 10 and 13 (Jetley et al., ICLR 2018).

Local features l^s are the outputs of conv layers 7, 10 and 13 (after BN+ReLU, before the
following max-pool); the global feature g is the last conv output, max-pooled, passed through
a 512-d fully connected layer (the paper's "fc" before the classifier). Each PayAttention
block gives g^s; 'concat' classifies [g^1; g^2; g^3] with one linear layer, 'indep' averages
one linear classifier per g^s.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..modules.pay_attention import PayAttention

VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)
ATTENTION_LAYERS = (7, 10, 13)   # 1-based conv indices


class PayAttentionVGG(nn.Module):
    """VGG-att3 from the paper.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        aggregation: 'concat' or 'indep'.
        compatibility: 'pc' or 'dp'.
        normalize: 'softmax' or 'sigmoid'.
        global_channels: width of g (paper: 512).
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, aggregation: str = 'concat',
                 compatibility: str = 'pc', normalize: str = 'softmax', global_channels: int = 512,
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        if aggregation not in ('concat', 'indep'):
            raise ValueError(f"aggregation: expected 'concat' or 'indep', got {aggregation!r}")
        if kwargs:
            raise TypeError(f"PayAttentionVGG: unexpected options {sorted(kwargs)}")
        self.num_classes, self.aggregation = num_classes, aggregation
        self.stages = nn.ModuleList()
        layers, conv_idx, in_c, local_channels = [], 0, in_chans, []
        for v in VGG16_CFG:
            if v == 'M':
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(in_c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_c, conv_idx = v, conv_idx + 1
            if conv_idx in ATTENTION_LAYERS:
                self.stages.append(nn.Sequential(*layers))
                layers, _ = [], local_channels.append(v)
        self.global_pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                         nn.Linear(in_c, global_channels), nn.ReLU(inplace=True))
        self.attention = nn.ModuleList(PayAttention(c, global_channels, compatibility, normalize)
                                       for c in local_channels)
        self.drop = nn.Dropout(drop_rate)
        if aggregation == 'concat':
            self.head = nn.Linear(sum(local_channels), num_classes)
        else:
            self.head = nn.ModuleList(nn.Linear(c, num_classes) for c in local_channels)
        self.pretrained_cfg = self.default_cfg = {'input_size': (in_chans, 32, 32), 'num_classes': num_classes}

    def forward_attention(self, x: torch.Tensor):
        """(attended vectors g^s, attention maps a^s)."""
        locals_ = []
        for stage in self.stages:
            x = stage(x)
            locals_.append(x)
        g = self.global_pool(x)
        outs = [att(l, g) for att, l in zip(self.attention, locals_)]
        return [o[0] for o in outs], [o[1] for o in outs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vectors, _ = self.forward_attention(x)
        if self.aggregation == 'concat':
            return self.head(self.drop(torch.cat(vectors, dim=1)))
        return torch.stack([h(self.drop(v)) for h, v in zip(self.head, vectors)]).mean(0)

"""Full-face appearance-based gaze estimation with spatial weights (Zhang, Sugano, Fritz, Bulling:
"It's Written All over Your Face: Full-Face Appearance-Based Gaze Estimation", CVPRW 2017).

    U = backbone(face)                                   (C, H, W); AlexNet conv layers: (256, 13, 13) at 448x448
    W = ReLU(conv3(ReLU(conv2(ReLU(conv1(U))))))         1x1 convs C -> 256 -> 256 -> 1 (`SpatialWeights`)
    V_c = W ⊙ U_c  for every channel c
    (pitch, yaw) = FC(V)                                 paper: flatten, FC 4096 - FC 4096 - FC 2, L1 loss

The paper's network is AlexNet's five conv layers on a 448x448 normalised face, then the spatial
weights, then three fully connected layers (ReLU and dropout between them); it reports 4.8° mean
angular error on MPIIFaceGaze (leave-one-person-out). Backbones here:
  - 'alexnet': AlexNet's conv layers in torchvision's layout (64-192-384-256-256 channels, 11x11/4
    stem, three 3x3/2 max pools; the same module indices as `torchvision.models.alexnet().features`,
    so its weights load into `backbone`), giving 256 x 13 x 13 at 448 input. Head by default: the
    paper's flatten + FC 4096 + FC 4096 (dropout 0.5) + FC 2.
  - any timm model with `features_only` support (e.g. 'resnet18', 'resnet50'): the feature map at
    `backbone_stride` (16: ResNet's layer3, 28 x 28 at 448). Head by default: global average
    pooling of the weighted map + FC 2 (flattening a 28x28 ResNet map into an FC 4096 would take
    0.8G (resnet18) to 3.3G (resnet50) parameters).
Weights are random (no downloads); load ImageNet weights yourself if you want the paper's init.

Angles are (pitch, yaw) in radians, MPIIFaceGaze's convention (see `gaze_vector`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..modules.spatial_weights import SpatialWeights
from ..registry import ConfigError, did_you_mean

ALEXNET_WIDTHS = (64, 192, 384, 256, 256)
POOLS = ('flatten', 'avg')


def alexnet_features(in_chans: int = 3, widths: Sequence[int] = ALEXNET_WIDTHS) -> nn.Sequential:
    """AlexNet's conv layers, torchvision's `alexnet().features` layout (same indices, so its
    state dict loads), with configurable widths."""
    if len(widths) != 5 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ConfigError(f"backbone_kwargs.widths: expected 5 positive ints (AlexNet's conv widths), got {widths!r}")
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(
        nn.Conv2d(in_chans, c1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


class _TimmFeatures(nn.Module):
    """A timm `features_only` model returning its one map as a tensor (not a list)."""

    def __init__(self, name: str, stride: int, in_chans: int, kwargs: Mapping[str, Any]):
        super().__init__()
        import timm
        if not timm.is_model(name):
            raise ConfigError(f"backbone: unknown model {name!r}: expected 'alexnet' or a timm model name"
                              f"{did_you_mean(name, ['alexnet', *timm.list_models()])}")
        probe = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans, **kwargs)
        strides = probe.feature_info.reduction()
        if stride not in strides:
            raise ConfigError(f"backbone_stride: {name} has feature maps at strides {strides}, not {stride}")
        index = strides.index(stride)
        self.model = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans,
                                       out_indices=(probe.feature_info.out_indices[index],), **kwargs)
        self.out_channels = self.model.feature_info.channels()[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[-1]


class FullFaceGaze(nn.Module):
    """Full-face gaze network: backbone -> `SpatialWeights` -> FC layers -> (pitch, yaw).

    Args:
        backbone: 'alexnet' (the paper's) or a timm model name ('resnet18', 'resnet50', ...).
        input_size: side of the square input face (paper: 448). The 'flatten' head is sized for it.
        backbone_kwargs: 'alexnet': `widths` (5 conv widths); timm: passed to timm.create_model
            (e.g. `channels`, `stem_width`; never `pretrained=True` in tests: it downloads).
        backbone_stride: timm backbones: stride of the feature map used (16: ResNet layer3).
        spatial_weights: False drops the block (the paper's ablation without spatial weights).
        hidden_channels: width of the spatial weights' two hidden 1x1 convs (paper: 256).
        pool: 'flatten' (paper: FC on the whole weighted map) or 'avg' (global average pooling).
            Default: 'flatten' for 'alexnet', 'avg' for timm backbones.
        fc_channels: hidden FC widths before the output FC. Default: (4096, 4096) for 'alexnet'
            (paper), () for timm backbones.
        dropout: dropout after each hidden FC (paper: 0.5).
        in_chans: input channels.
        num_outputs: regressed values (2: pitch, yaw).

    forward(x) -> (B, 2) radians. `forward_features(x)` -> the weighted map V; the block is the
    plain submodule `spatial_weights`, so forward hooks (and `record_attention`) see its map W.
    """

    def __init__(self, backbone: str = 'alexnet', input_size: int = 448, backbone_kwargs: Mapping[str, Any] | None = None,
                 backbone_stride: int = 16, spatial_weights: bool = True, hidden_channels: int = 256,
                 pool: str | None = None, fc_channels: Sequence[int] | None = None, dropout: float = 0.5,
                 in_chans: int = 3, num_outputs: int = 2):
        super().__init__()
        if not isinstance(backbone, str):
            raise ConfigError(f"backbone: expected 'alexnet' or a timm model name, got {backbone!r}")
        if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
            raise ConfigError(f"input_size: expected a positive int (side of the square face), got {input_size!r}")
        kwargs = dict(backbone_kwargs or {})
        is_alexnet = backbone == 'alexnet'
        pool = pool if pool is not None else ('flatten' if is_alexnet else 'avg')
        if pool not in POOLS:
            raise ConfigError(f"pool: expected one of {POOLS}, got {pool!r}{did_you_mean(pool, POOLS)}")
        fc_channels = tuple(fc_channels if fc_channels is not None else ((4096, 4096) if is_alexnet else ()))
        self.backbone_name, self.input_size, self.pool = backbone, input_size, pool
        if is_alexnet:
            unknown = set(kwargs) - {'widths'}
            if unknown:
                raise ConfigError(f"backbone_kwargs: 'alexnet' takes only `widths`, got {sorted(unknown)}")
            self.backbone = alexnet_features(in_chans, tuple(kwargs.get('widths', ALEXNET_WIDTHS)))
            channels = self.backbone[10].out_channels
        else:
            self.backbone = _TimmFeatures(backbone, backbone_stride, in_chans, kwargs)
            channels = self.backbone.out_channels
        self.feature_channels = channels
        self.spatial_weights = SpatialWeights(channels, hidden_channels) if spatial_weights else None
        self.feature_size = self._feature_size(in_chans)
        if min(self.feature_size) < 1:
            raise ConfigError(f"input_size: {input_size} is too small for backbone {backbone!r}")
        in_features = channels * math.prod(self.feature_size) if pool == 'flatten' else channels
        layers: list[nn.Module] = [nn.Flatten()] if pool == 'flatten' else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        for width in fc_channels:
            layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        layers.append(nn.Linear(in_features, num_outputs))
        self.head = nn.Sequential(*layers)

    @torch.no_grad()
    def _feature_size(self, in_chans: int) -> tuple[int, int]:
        was_training = self.backbone.training
        self.backbone.eval()        # no BN statistics from the probe
        size = tuple(self.backbone(torch.zeros(1, in_chans, self.input_size, self.input_size)).shape[-2:])
        self.backbone.train(was_training)
        return size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's map, weighted by the spatial weights (V)."""
        if self.pool == 'flatten' and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"FullFaceGaze: built for {self.input_size}x{self.input_size} faces (pool='flatten'), "
                             f"got {tuple(x.shape[-2:])}; resize the faces or set input_size")
        features = self.backbone(x)
        return self.spatial_weights(features) if self.spatial_weights is not None else features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def gaze_vector(angles: torch.Tensor) -> torch.Tensor:
    """(..., 2) (pitch, yaw) in radians -> (..., 3) unit gaze vectors, MPIIFaceGaze's convention
    (normalised camera space, x right, y down, z forward; the gaze points back at the camera):

        g = (-cos(pitch) sin(yaw), -sin(pitch), -cos(pitch) cos(yaw))
    """
    pitch, yaw = angles[..., 0], angles[..., 1]
    return torch.stack((-torch.cos(pitch) * torch.sin(yaw), -torch.sin(pitch), -torch.cos(pitch) * torch.cos(yaw)), -1)


def angular_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the 3D gaze vectors of (..., 2) (pitch, yaw) predictions and
    targets; atan2(|a x b|, a · b) in float64 (acos loses precision near 0°)."""
    a, b = gaze_vector(pred.double()), gaze_vector(target.double())
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))

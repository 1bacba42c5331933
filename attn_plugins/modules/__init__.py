"""The attention blocks, pure PyTorch: one block per file, constructor `Block(channels, **options)`."""
from ._helpers import HostInit, reset_attention_blocks
from .cbam import CBAM, ChannelGate, SpatialGate
from .channel_attention import ChannelAttention
from .dual_attention import DualAttention
from .non_local import NonLocal
from .pay_attention import PayAttention
from .position_attention import PositionAttention
from .pyramid_attention import PyramidAttention
from .se import SE
from .spatial_weights import SpatialWeights

__all__ = ['SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
           'ChannelGate', 'SpatialGate', 'PyramidAttention', 'NonLocal', 'PayAttention', 'HostInit',
           'reset_attention_blocks']

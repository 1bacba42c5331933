"""Whole paper models built from the blocks (pure PyTorch)."""
from .gaze import FullFaceGaze
from .pay_attention_vgg import PayAttentionVGG, VGGBNDrop

__all__ = ["FullFaceGaze", "PayAttentionVGG", "VGGBNDrop"]

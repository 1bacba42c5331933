"""Whole paper models built from the blocks (pure PyTorch)."""
from .pay_attention_vgg import PayAttentionVGG

__all__ = ["PayAttentionVGG"]

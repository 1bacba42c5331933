"""Integrations with timm and OpenMMLab; they depend on attn_plugins.modules, never the reverse."""

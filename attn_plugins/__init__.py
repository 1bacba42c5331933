"""attn_plugins."""

"""Readers for on-disk dataset formats that no framework we depend on reads for us (pure Python/NumPy)."""

"""Placeholder package: see drn.py."""

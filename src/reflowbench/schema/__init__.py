"""Shared data types at the bottom of the layering: the target set and the results schema.

Both are data, not pruner or harness code, so every layer may import them.
"""

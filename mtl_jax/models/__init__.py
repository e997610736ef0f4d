"""Flax NNX modules: mT5, XLM-R encoder with per-task heads, and Hugging Face conversion."""

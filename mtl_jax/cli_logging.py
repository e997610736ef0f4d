"""Logging set-up shared by the CLIs (train, evaluate, convert): one place, so no CLI imports
another. Third-party loggers that flood stderr (absl, jax, orbax, TensorFlow) are held back."""

from __future__ import annotations

import logging
import sys

_NOISY = ("absl", "jax._src", "orbax", "tensorflow", "etils")


def setup_logging(level: str, *, noisy_level: int = logging.WARNING, timestamps: bool = True,
                  fallback: int = logging.INFO) -> None:
    """Log to stderr at ``level`` (a name; unknown names mean ``fallback``)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), fallback),
                        format=f"%(asctime)s {fmt}" if timestamps else fmt, stream=sys.stderr)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(noisy_level)

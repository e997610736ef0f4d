"""Start-up shared by the CLIs (train, evaluate, predict, convert): logging and joining a
multi-process launch, in one place so no CLI imports another. Third-party loggers that flood stderr (absl, jax, orbax, TensorFlow) are held back."""

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


def start(args, level: str | None = None) -> int | None:
    """Logging at ``args.log_level`` (or ``level``), then ``jax.distributed`` when the launch says
    so; an exit status (2, the message on stderr) when the launch flags are inconsistent."""
    setup_logging(level or args.log_level)
    from mtl_jax import distributed

    try:
        distributed.initialize(distributed.launch_from(args))
    except distributed.DistributedConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None

"""How a CLI process learns its place in a many-process run, and joins it.

``jax.distributed.initialize`` reads ``JAX_COORDINATOR_ADDRESS`` and auto-detects the rest only
under SLURM, Open MPI, Kubernetes and Cloud TPU. The CLIs also accept the process count and id as
flags or as ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (a plain multi-node launch), and initialise
nothing when no source says there are several processes, so one process runs exactly as before.

If a peer process dies, the JAX coordination service stops the survivors: at once when the
coordinator (process 0) dies, within ``heartbeat_timeout`` seconds when another process does.
Nobody waits forever in a collective.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # jax's own default
_GOOGLE_PCI_VENDOR = "0x1ae0"  # Cloud TPU chips


class DistributedConfigError(ValueError):
    """The process flags / environment do not describe a valid many-process run."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """What this process was told (None: not told; jax may auto-detect it)."""

    mode: str = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S

    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator_address, self.num_processes,
                                           self.process_id))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every CLI that touches devices accepts (each also readable from the environment)."""
    g = parser.add_argument_group("many processes (one per host); see docs/scaling.md")
    g.add_argument("--distributed", choices=MODES, default=None,
                   help="auto (default, env MTL_JAX_DISTRIBUTED): initialise when the flags below, "
                        "their JAX_* variables, SLURM, Open MPI or Cloud TPU chips say so; "
                        "on: always call jax.distributed.initialize (its own auto-detection fills "
                        "what is not given); off: one process, whatever the environment says")
    g.add_argument("--coordinator_address", default=None,
                   help="HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num_processes", type=int, default=None, help="env JAX_NUM_PROCESSES")
    g.add_argument("--process_id", type=int, default=None, help="env JAX_PROCESS_ID")
    g.add_argument("--heartbeat_timeout", type=int, default=None,
                   help="seconds after which a silent peer counts as dead and every process stops "
                        f"(env MTL_JAX_HEARTBEAT_TIMEOUT, default {DEFAULT_HEARTBEAT_TIMEOUT_S})")


def launch_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Launch:
    """Flags win over environment variables; a malformed value names its source."""
    env = os.environ if environ is None else environ

    def pick(flag: object, var: str, kind: type) -> object:
        if flag is not None:
            return flag
        raw = env.get(var)
        if raw is None or raw == "":
            return None
        try:
            return kind(raw)
        except ValueError:
            raise DistributedConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None

    mode = args.distributed or env.get("MTL_JAX_DISTRIBUTED") or "auto"
    if mode not in MODES:
        raise DistributedConfigError(f"MTL_JAX_DISTRIBUTED={mode!r}: expected one of {MODES}")
    launch = Launch(
        mode=mode,
        coordinator_address=pick(args.coordinator_address, "JAX_COORDINATOR_ADDRESS", str),
        num_processes=pick(args.num_processes, "JAX_NUM_PROCESSES", int),
        process_id=pick(args.process_id, "JAX_PROCESS_ID", int),
        heartbeat_timeout_s=_default(
            pick(args.heartbeat_timeout, "MTL_JAX_HEARTBEAT_TIMEOUT", int),
            DEFAULT_HEARTBEAT_TIMEOUT_S),
    )
    _check(launch)
    return launch


def _check(launch: Launch) -> None:
    n, i = launch.num_processes, launch.process_id
    if n is not None and n < 1:
        raise DistributedConfigError(f"--num_processes / JAX_NUM_PROCESSES must be >= 1, got {n}")
    if i is not None and n is not None and not 0 <= i < n:
        raise DistributedConfigError(
            f"--process_id / JAX_PROCESS_ID must be in 0..{n - 1} for {n} processes, got {i}")
    if launch.heartbeat_timeout_s < 1:
        raise DistributedConfigError(
            f"--heartbeat_timeout must be >= 1 second, got {launch.heartbeat_timeout_s}")
    if launch.mode != "off" and launch.explicit() and launch.num_processes != 1:
        missing = [name for name, v in (("coordinator address", launch.coordinator_address),
                                        ("process count", n), ("process id", i)) if v is None]
        if missing and detected_cluster() is None:
            raise DistributedConfigError(
                "a many-process launch needs the coordinator address, the process count and this "
                f"process's id; missing: {', '.join(missing)} (flags --coordinator_address, "
                "--num_processes, --process_id or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                "JAX_PROCESS_ID) and no SLURM / Open MPI / Cloud TPU environment to detect them")


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """A scheduler that runs this process as one of several, detected cheaply (no network)."""
    env = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in env for v in slurm) and _int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and _int(env.get("OMPI_COMM_WORLD_SIZE", "0")) > 1:
        return "openmpi"
    if any(v in env for v in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                              "TPU_PROCESS_ADDRESSES")):
        return "cloud_tpu"
    if environ is None and _has_tpu_chips():
        return "cloud_tpu"
    return None


def _default(value: object, default: int) -> int:
    return default if value is None else int(value)  # type: ignore[arg-type]


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return 0


def _has_tpu_chips() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def should_initialize(launch: Launch) -> bool:
    if launch.mode == "off":
        return False
    if launch.mode == "on":
        return True
    if launch.explicit():
        return launch.num_processes != 1
    return detected_cluster() is not None


def initialize(launch: Launch) -> None:
    """Join the run described by ``launch`` (or do nothing for one process). Call before any jax
    computation; on CPU the collectives between processes go through gloo."""
    if not should_initialize(launch):
        return
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, object] = {"heartbeat_timeout_seconds": launch.heartbeat_timeout_s}
    for key, value in (("coordinator_address", launch.coordinator_address),
                       ("num_processes", launch.num_processes), ("process_id", launch.process_id)):
        if value is not None:
            kwargs[key] = value
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d (coordinator %s; %d local / %d global devices); a dead peer stops "
             "this process within %d s", jax.process_index(), jax.process_count(),
             launch.coordinator_address or "auto-detected", jax.local_device_count(),
             jax.device_count(), launch.heartbeat_timeout_s)


def agree(value: bool) -> bool:
    """Process 0's ``value`` on every process (a decision all must take the same way)."""
    import jax

    if jax.process_count() == 1:
        return bool(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def preemption_sync_available() -> bool:
    """True when jax's preemption service runs (initialised distributed system): it catches
    SIGTERM itself and lets every process agree on the step to save."""
    try:
        from jax._src import distributed as _dist
    except ImportError:  # pragma: no cover - layout of a future jax
        return False
    return getattr(_dist.global_state, "preemption_sync_manager", None) is not None

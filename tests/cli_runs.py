"""Running the real CLIs in subprocesses: one process, or several joined by a local coordinator.

Shared by the tests that train through ``python -m mtl_jax.train`` (resume, preemption, many
processes). A run is a tiny mT5 on the bundled CTKFacts samples.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

TINY = [
    "TrainConfig.mixture=ctkfacts_t2t",
    "T5Config.d_model=32",
    "T5Config.d_kv=8",
    "T5Config.d_ff=64",
    "T5Config.num_heads=4",
    "T5Config.num_layers=1",
    "T5Config.num_decoder_layers=1",
    "T5Config.dropout_rate=0.1",  # dropout on: resume must reproduce the dropout masks too
    "TrainConfig.batch_size=8",
    "TrainConfig.eval_batch_size=16",
    "TrainConfig.max_eval_examples=16",
    "TrainConfig.progress=False",
    # Tests extend finished runs (num_steps 4 -> 6): the demo's linear decay depends on num_steps,
    # a constant rate does not, so a resumed step redoes exactly what the first run did.
    "TrainConfig.optimizer={'name': 'adafactor', 'learning_rate': 0.03, 'schedule': 'constant'}",
]


def cli_args(model_dir: Path, *extra: str) -> list[str]:
    params = [*TINY, f"TrainConfig.model_dir={model_dir}", *extra]
    return ["--gin_file=demo_mt5.gin", *[f"--gin_param={p}" for p in params]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, process: tuple[int, int, int] | None = None,
            heartbeat_timeout: int = 15) -> dict[str, str]:
    """A subprocess environment with ``devices`` CPU devices; ``process`` = (id, count, port)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    env["PYTHONUNBUFFERED"] = "1"
    if process is not None:
        pid, count, port = process
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count),
                   JAX_PROCESS_ID=str(pid), MTL_JAX_HEARTBEAT_TIMEOUT=str(heartbeat_timeout))
    return env


def launch(module: str, args: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                            stderr=subprocess.STDOUT, env=env)


def launch_train(model_dir: Path, *extra: str, devices: int = 1) -> subprocess.Popen:
    return launch("mtl_jax.train", cli_args(model_dir, *extra),
                  model_dir.parent / f"{model_dir.name}.log", env_for(devices))


def launch_group(module: str, args: Sequence[str], log_stem: Path, processes: int = 2,
                 devices: int = 4, heartbeat_timeout: int = 15,
                 flags: bool = False) -> list[subprocess.Popen]:
    """``processes`` local processes of one run (``devices`` CPU devices each), told their place
    by JAX_* environment variables or, with ``flags``, by the CLI flags; logs
    ``{log_stem}.p{i}.log``."""
    port = free_port()
    procs = []
    for i in range(processes):
        if flags:
            place = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                     f"--process_id={i}", f"--heartbeat_timeout={heartbeat_timeout}"]
            procs.append(launch(module, [*args, *place], Path(f"{log_stem}.p{i}.log"),
                                env_for(devices)))
        else:
            procs.append(launch(module, args, Path(f"{log_stem}.p{i}.log"),
                                env_for(devices, (i, processes, port), heartbeat_timeout)))
    return procs


def wait_all(procs: Sequence[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"processes still running after {timeout} s") from None
    return codes


def records(model_dir: Path, kind: str) -> list[dict]:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def final_params(model_dir: Path, step: int) -> dict[str, np.ndarray]:
    """The parameters of checkpoint ``step`` as host arrays, whatever mesh wrote them."""
    import jax
    import orbax.checkpoint as ocp

    path = (model_dir / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    restored = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(restored["params"])}


def wait_for(predicate: Callable[[], bool], procs: subprocess.Popen | Sequence[subprocess.Popen],
             timeout: float, what: str) -> None:
    procs = [procs] if isinstance(procs, subprocess.Popen) else list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a training process exited with {p.returncode} before {what}")
        time.sleep(0.2)
    for p in procs:
        p.kill()
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_done(model_dir: Path, step: int) -> bool:
    # Orbax writes into a temporary folder and renames it when the checkpoint is complete.
    return (model_dir / "checkpoints" / str(step) / "state").is_dir()


def checkpoint_steps(model_dir: Path) -> list[int]:
    folder = model_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def logged_step(model_dir: Path) -> int:
    path = model_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)

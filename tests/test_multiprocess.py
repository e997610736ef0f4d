"""The train and evaluate CLIs as 2 local processes x 4 CPU devices (gloo collectives), against
the same run as 1 process x 8 devices: equal losses, parameters and tables; one set of output
files; preemption agreed across processes; SIGKILL of one process survived; checkpoints that move
between process counts and meshes.

The reference runs are shared by the module (a few minutes of CPU on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import cli_runs as runs
import numpy as np
import pytest

# 8 steps, evaluated at 4 and 8, checkpoints every 2; parameters and batches sharded over a
# (data 2, fsdp 2, tensor 2) mesh that spans both processes; batches from 2 data shards so the
# global batches do not depend on the process count.
STEPS = ["TrainConfig.num_steps=8", "TrainConfig.eval_every=4", "TrainConfig.checkpoint_every=2",
         "TrainConfig.mesh_data=2", "TrainConfig.mesh_fsdp=2", "TrainConfig.mesh_tensor=2",
         "TrainConfig.rules=fsdp", "TrainConfig.data_shards=2", "TrainConfig.keep_last=4"]
HEARTBEAT_S = 15
TIMEOUT = 900


def _train_pair(model_dir: Path, *extra: str) -> list:
    return runs.launch_group("mtl_jax.train", runs.cli_args(model_dir, *STEPS, *extra),
                             model_dir.parent / model_dir.name, heartbeat_timeout=HEARTBEAT_S)


def _log(model_dir: Path, process: int) -> str:
    return Path(f"{model_dir.parent / model_dir.name}.p{process}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted run as 1 process x 8 devices and as 2 processes x 4 devices."""
    root = tmp_path_factory.mktemp("reference")
    one, two = root / "one", root / "two"
    single = runs.launch_train(one, *STEPS, devices=8)
    pair = _train_pair(two)
    assert runs.wait_all([single, *pair], TIMEOUT) == [0, 0, 0], (
        (root / "one.log").read_text()[-3000:] + _log(two, 0)[-3000:] + _log(two, 1)[-3000:])
    return {"one": one, "two": two}


def _assert_same_training(a: Path, b: Path, *, exact: bool) -> None:
    ra, rb = runs.records(a, "train"), runs.records(b, "train")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 9))
    for x, y in zip(ra, rb, strict=True):
        for key in ("loss", "grad_norm"):
            if exact:
                assert x[key] == y[key], (x["step"], key, x[key], y[key])
            else:
                assert abs(x[key] - y[key]) <= 1e-5 * max(1.0, abs(x[key])), (x["step"], key)
    pa, pb = runs.final_params(a, 8), runs.final_params(b, 8)
    assert pa.keys() == pb.keys()
    for name in pa:
        if exact:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
        else:
            np.testing.assert_allclose(pa[name], pb[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _outputs(model_dir: Path) -> set[str]:
    """The run's files, less orbax's per-process array shards and TensorBoard's event names."""
    out = set()
    for p in model_dir.rglob("*"):
        rel = p.relative_to(model_dir)
        if p.is_file() and rel.parts[0] != "tensorboard" and "state" not in rel.parts:
            out.add(str(rel))
    return out


def test_two_processes_train_like_one(reference):
    one, two = reference["one"], reference["two"]
    _assert_same_training(one, two, exact=False)
    # Equal evaluation tables (the predictions of nearly equal parameters agree).
    assert runs.records(one, "eval") == runs.records(two, "eval")
    assert json.loads((one / "results.json").read_text()) == json.loads(
        (two / "results.json").read_text())
    # One set of outputs, written by process 0 alone: the same files as the 1-process run, no
    # temporary leftovers, every metrics line whole, and process 1 printed no report.
    assert _outputs(one) == _outputs(two)
    assert not [p for p in two.rglob("*") if "tmp" in p.name], "half-written files left behind"
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((one / "metrics.jsonl").read_text().splitlines())
    assert all(json.loads(line) for line in lines)
    assert "Validation results at the best step" in _log(two, 0)
    log1 = _log(two, 1)
    assert "Validation results" not in log1 and "parameters," not in log1
    assert "process 1 of 2" in log1
    assert (two / "config.gin").read_text() == (one / "config.gin").read_text().replace(
        str(one), str(two))


@pytest.mark.slow  # ~3 min / ~1 min of the default stage's 25-minute budget
def test_sigkill_of_one_process_then_preemption_then_resume_is_exact(reference, tmp_path):
    run = tmp_path / "interrupted"
    # 1) SIGKILL process 1 right after checkpoint 2: process 0 must not hang in a collective.
    procs = _train_pair(run)
    runs.wait_for(lambda: runs.checkpoint_done(run, 2), procs, 600, "checkpoint 2")
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert procs[1].wait(timeout=60) == -signal.SIGKILL
    survivor = procs[0].wait(timeout=HEARTBEAT_S + 120)
    waited = time.monotonic() - killed
    print(f"survivor exited with {survivor} {waited:.1f} s after the kill")
    assert survivor != 0 and waited < HEARTBEAT_S + 120
    assert runs.logged_step(run) < 8 and not (run / "results.json").exists(), (
        "the run had finished before the kill: the test proved nothing")
    log0 = _log(run, 0)
    assert "another task died" in log0 or "Connection closed by peer" in log0, log0[-2000:]

    # 2) Restart both; SIGTERM to process 1 only: both agree on a step, save it, exit 0.
    for i in (0, 1):
        Path(f"{run.parent / run.name}.p{i}.log").write_text("")
    procs = _train_pair(run)
    runs.wait_for(lambda: "resumed from checkpoint" in _log(run, 0) and runs.logged_step(run) >= 3,
                  procs, 600, "step 3 of the resumed run")
    procs[1].send_signal(signal.SIGTERM)
    assert runs.wait_all(procs, 300) == [0, 0]
    preempted = [int(line.split("saves step ")[1].split()[0]) for i in (0, 1)
                 for line in _log(run, i).splitlines() if "every process saves step" in line]
    assert len(preempted) == 2 and preempted[0] == preempted[1], preempted
    assert preempted[0] < 8, "preempted after the last step: the test proved nothing"
    assert runs.checkpoint_steps(run)[-1] == preempted[0]
    assert runs.logged_step(run) == preempted[0]

    # 3) Resume to the end: exactly the uninterrupted 2-process run.
    assert runs.wait_all(_train_pair(run), TIMEOUT) == [0, 0]
    _assert_same_training(reference["two"], run, exact=True)
    assert runs.records(reference["two"], "eval") == runs.records(run, "eval")


@pytest.mark.slow  # ~1 min; the default stage keeps the equality and the kill/preemption tests
def test_checkpoints_move_between_process_counts_and_meshes(reference, tmp_path):
    # Evaluate the 2-process checkpoint in 1 process on another mesh, and the 1-process
    # checkpoint in 2 processes: the tables equal the training runs' own evaluations at step 8.
    def evaluate(source: Path, out: Path, processes: int, *mesh: str) -> dict:
        args = ["--gin_file=demo_mt5.gin", *[f"--gin_param={p}" for p in
                [*runs.TINY, *STEPS, *mesh, f"TrainConfig.model_dir={source}"]],
                f"--checkpoint={source}", "--step=8", f"--output_dir={out}"]
        if processes == 1:
            procs = [runs.launch("mtl_jax.evaluate", args, out.with_suffix(".log"),
                                 runs.env_for(8))]
        else:
            procs = runs.launch_group("mtl_jax.evaluate", args, out, heartbeat_timeout=HEARTBEAT_S,
                                      flags=True)  # the place as flags, not environment
        assert runs.wait_all(procs, TIMEOUT) == [0] * processes
        return json.loads((out / "eval_validation_step8.json").read_text())

    def trained(model_dir: Path) -> dict:
        return {(r["task"], r["language"]): r["value"] for r in runs.records(model_dir, "eval")
                if r["step"] == 8 and r["metric"] == "macro_f1"}

    def table(report: dict) -> dict:
        return {(task, lang): v for task, row in report["scores"].items() for lang, v in row.items()}

    from_two = table(evaluate(reference["two"], tmp_path / "eval_1proc", 1,
                              "TrainConfig.mesh_data=8", "TrainConfig.mesh_fsdp=1",
                              "TrainConfig.mesh_tensor=1"))
    from_one = table(evaluate(reference["one"], tmp_path / "eval_2proc", 2))
    for got, model_dir in ((from_two, reference["two"]), (from_one, reference["one"])):
        want = trained(model_dir)
        assert got and all(want[k] == pytest.approx(v, abs=1e-9) for k, v in got.items())

    # Resume after the "slice" was recreated with another size: the 2-process run's checkpoint
    # 4 continued by 1 process on 8 devices ends like the uninterrupted run (same data shards).
    resized = tmp_path / "resized"
    shutil.copytree(reference["two"], resized)
    for step in runs.checkpoint_steps(resized):
        if step > 4:
            shutil.rmtree(resized / "checkpoints" / str(step))
    for name in ("results.json", "results.md", "results.csv", "curves.png"):
        (resized / name).unlink()
    assert runs.launch_train(resized, *STEPS, devices=8).wait(timeout=TIMEOUT) == 0
    assert "resumed from checkpoint 4" in (tmp_path / "resized.log").read_text()
    _assert_same_training(reference["one"], resized, exact=False)

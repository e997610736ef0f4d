"""Faults a long run meets (docs/faults.md), each injected for real.

- The loop (fast, no model): a step that reports ``skipped`` is logged with its task mix, never
  checkpointed, and ``max_consecutive_skips`` in a row stop the run; an isolated one does not; a
  fresh start drops the records an earlier attempt left without a checkpoint.
- The CLI on a tiny mT5 (subprocesses, resuming copies of one shared 4-step run): an infinite
  learning rate typed as a gin binding (``1e400``) stops the run with exit code 3 and the last
  good checkpoint intact; a disk that fills up (RLIMIT_FSIZE) or a checkpoint folder that cannot
  be written (``chattr +i``, which binds root too) stops it with exit code 4 and the earlier
  checkpoints restorable bit for bit; a truncated latest checkpoint and a torn last line of
  metrics.jsonl are repaired on resume, which then ends exactly where the original run did.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cli_runs as runs
import jax
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from mtl_jax.training.checkpoints import CheckpointStore
from mtl_jax.training.loop import EvalOutcome, LoopConfig, run_loop
from mtl_jax.training.run_log import RunLog, read_records

TASKS = ["xnli", "paws_x", "ctkfacts_nli"]

# -- the loop with a fake step ------------------------------------------------------------------


class _Batches:
    """Batch ``i`` is ``{"i": [i]}``; resumable like the real iterator (one data shard)."""

    num_shards = 1

    def __init__(self) -> None:
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        self.position += 1
        return {"i": np.array([self.position])}

    def get_state(self) -> dict:
        return {"shards": {"0": self.position}}

    def set_state(self, state: dict) -> None:
        self.position = state["shards"]["0"]


def _fake_step(bad_steps: set[int]):
    """Adds 1 to ``w`` unless the batch's step is in ``bad_steps`` (then reports a skip, keeping
    ``w``, as ``make_train_step`` does); the step counter always advances."""

    def step(state, batch):
        i = int(batch["i"][0])
        bad = i in bad_steps
        new = {"w": state["w"] if bad else state["w"] + 1, "step": state["step"] + 1}
        metrics = {"loss": np.float32(np.nan if bad else 1.0), "grad_norm": np.float32(1.0),
                   "skipped": np.int32(bad), "per_task_weight": np.array([12.0, 0.0, 5.0]),
                   "per_task_loss": np.array([1.0, 0.0, 1.0])}
        return new, metrics

    return step


def _loop(model_dir: Path, bad_steps: set[int], num_steps: int = 12, **config) -> tuple:
    sharding = SingleDeviceSharding(jax.devices()[0])
    state = {"w": jax.device_put(np.zeros(2, np.float32), sharding),
             "step": jax.device_put(np.int32(0), sharding)}
    store = CheckpointStore(model_dir / "checkpoints", keep_last=10, keep_best=0)
    run_log = RunLog(model_dir, tensorboard=False)
    cfg = LoopConfig(num_steps=num_steps, eval_every=4, checkpoint_every=2, **config)
    state, result = run_loop(
        cfg, state=state, state_shardings=jax.tree.map(lambda _: sharding, state),
        train_step=_fake_step(bad_steps), batches=_Batches(), to_global=lambda b: b,
        evaluate=lambda state, step: EvalOutcome(float(step), []), store=store, run_log=run_log,
        run_config={"model": {"toy": 1}}, count_tokens=lambda b: 1, task_names=TASKS,
        show_progress=False,
    )
    steps = store.all_steps()
    store.close()
    return state, result, steps


def test_consecutive_skips_stop_the_run_without_checkpointing_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mtl_jax.training.loop"):
        state, result, steps = _loop(tmp_path, bad_steps={5, 6, 7})
    # Step 6 (a checkpoint step) and 8 (an evaluation step) came during the skips: neither was
    # saved, so the latest checkpoint is 4, the last step before the first skip.
    assert steps == [2, 4]
    assert result.last_step == 8 and result.skipped_steps == 3
    assert result.diverged.startswith("training stopped at step 8: the updates of steps 5-7 "
                                      "(3 in a row, TrainConfig.max_consecutive_skips=3)")
    assert f"the latest checkpoint is still step 4 ({tmp_path / 'checkpoints' / '4'})" in \
        result.diverged
    assert "Lower the learning rate" in result.diverged
    assert float(state["w"][0]) == 5.0  # steps 1-4 and 8 applied (8 ran before the stop was seen)
    train = [r for r in read_records(tmp_path) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["step"] for r in train if r.get("skipped") == 1] == [5, 6, 7]
    warnings = [r.getMessage() for r in caplog.records]
    assert ("step 5: update skipped, the loss is nan; parameters and optimizer state kept. "
            "Task mix of the batch: xnli (12), ctkfacts_nli (5)") in warnings
    assert "step 6 skipped its update: no evaluation or checkpoint of it" in " ".join(warnings)
    assert [r["step"] for r in read_records(tmp_path) if r["kind"] == "eval_summary"] == [4]


def test_isolated_skips_are_logged_and_the_run_goes_on(tmp_path):
    # 6 is a checkpoint step and 8 an evaluation step: they are neither saved nor evaluated;
    # the run completes, skipping 2 updates in all.
    state, result, steps = _loop(tmp_path, bad_steps={6, 8, 10}, max_consecutive_skips=2)
    assert result.diverged is None and result.last_step == 12 and result.skipped_steps == 3
    assert steps == [2, 4, 12]
    assert float(state["w"][0]) == 9.0
    summaries = [r["step"] for r in read_records(tmp_path) if r["kind"] == "eval_summary"]
    assert summaries == [4, 12]


def test_a_limit_of_one_stops_at_the_first_skip(tmp_path):
    _, result, steps = _loop(tmp_path, bad_steps={3}, max_consecutive_skips=1)
    assert result.last_step == 4 and steps == [2]  # step 3's numbers are read after step 4 ran
    assert "the updates of steps 3-3 (1 in a row" in result.diverged


def test_fresh_start_drops_records_of_an_attempt_that_left_no_checkpoint(tmp_path, caplog):
    torn = '{"step": 1, "kind": "train", "loss": 2.0}\n{"step": 2, "kind": "tr'
    (tmp_path / "metrics.jsonl").write_text(torn)
    with caplog.at_level(logging.WARNING):
        _, result, _ = _loop(tmp_path, bad_steps=set(), num_steps=2)
    assert result.resumed_from is None
    train = [r for r in read_records(tmp_path) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and train[0].get("loss") == 1.0
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "dropping a torn last line" in text
    assert "dropped 1 records of an earlier attempt that left no checkpoint" in text


def test_torn_last_line_is_dropped_a_torn_middle_line_is_an_error(tmp_path, caplog):
    log = RunLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.write({"step": step, "kind": "train", "loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "kind": "train", "lo')
    with caplog.at_level(logging.WARNING):
        assert log.truncate_after(2) == 1  # step 3 dropped; the torn line is not a record
    assert "metrics.jsonl:4: dropping a torn last line" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        '{"step": 1, "kind": "train", "loss": 1.0}', '{"step": 2, "kind": "train", "loss": 2.0}']
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "kind"\n{"step": 4, "kind": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a JSON record .*torn LAST line"):
        log.truncate_after(2)


# -- the train CLI ------------------------------------------------------------------------------

BASE = ["TrainConfig.num_steps=4", "TrainConfig.eval_every=4", "TrainConfig.checkpoint_every=2"]
TIMEOUT = 600


_LIMITED = (
    "import resource, runpy, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "sys.argv = ['mtl_jax.train', *sys.argv[2:]]; "
    "runpy.run_module('mtl_jax.train', run_name='__main__')"
)


def _train(model_dir: Path, *extra: str, limit_file_size: int | None = None
           ) -> subprocess.CompletedProcess:
    """``python -m mtl_jax.train`` on the tiny mT5; ``limit_file_size`` caps every file the run
    writes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""

    args = runs.cli_args(model_dir, *BASE, *extra)
    command = [sys.executable, "-m", "mtl_jax.train", *args]
    if limit_file_size:  # set in the child itself: no preexec_fn in a forked JAX process
        command = [sys.executable, "-c", _LIMITED, str(limit_file_size), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=runs.env_for(1),
                          timeout=TIMEOUT)
    (model_dir.parent / f"{model_dir.name}.log").write_text(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """4 steps: checkpoints 2 and 4 (4 evaluated), and their parameters."""
    model_dir = tmp_path_factory.mktemp("faults") / "base"
    proc = _train(model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs.checkpoint_steps(model_dir) == [2, 4]
    return model_dir


def _copy(base: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run


def _error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _assert_same_params(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{what}: {name}")


@pytest.mark.slow  # ~3 min / ~1 min of the default stage's 25-minute budget
def test_infinite_learning_rate_stops_with_the_last_good_checkpoint_as_latest(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    good = runs.final_params(run, 4)
    lr = "TrainConfig.optimizer={'name': 'adafactor', 'learning_rate': 1e400}"
    proc = _train(run, lr, "TrainConfig.num_steps=12")
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = _error(proc)
    assert error.startswith("error: training stopped at step 8: the updates of steps 5-7 "
                            "(3 in a row, TrainConfig.max_consecutive_skips=3) were skipped")
    assert f"the latest checkpoint is still step 4 ({run / 'checkpoints' / '4'})" in error
    assert "Lower the learning rate" in error
    assert "step 5: update skipped, the update is not finite (loss " in proc.stderr
    assert "learning rate inf); parameters and optimizer state kept. Task mix" in proc.stderr
    # The skipped steps 6 and 8 were checkpoint/evaluation steps: nothing was written for them.
    assert runs.checkpoint_steps(run) == [2, 4]
    _assert_same_params(runs.final_params(run, 4), good, "checkpoint 4 after the stop")
    train = runs.records(run, "train")
    assert [r["step"] for r in train if r.get("skipped")] == [5, 6, 7, 8]
    assert all(r["learning_rate"] == "inf" for r in train[4:])


@pytest.mark.slow  # ~50 s: keeps the default stage within its budget
@pytest.mark.parametrize("fault", ["disk full", "unwritable folder"])
def test_failed_checkpoint_save_exits_4_and_older_checkpoints_restore(base_run, tmp_path, fault):
    run = _copy(base_run, tmp_path)
    before = {step: runs.final_params(run, step) for step in (2, 4)}
    folder = run / "checkpoints"
    if fault == "disk full":
        # Checkpoint data files of the tiny model are ~1.7 MB; metrics, config, TensorBoard
        # events stay far below 512 KiB.
        proc = _train(run, "TrainConfig.num_steps=6", limit_file_size=512 * 1024)
        reason = "File too large [EFBIG]"
    else:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not supported here (needs root on ext4/xfs/btrfs)")
        try:
            proc = _train(run, "TrainConfig.num_steps=6")
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        reason = "Operation not permitted [EPERM]"
    assert proc.returncode == 4, proc.stderr[-3000:]
    error = _error(proc)
    assert error.startswith(f"error: could not write checkpoint 6 to {folder / '6'}: {reason}")
    assert "the complete checkpoints already there (steps 2, 4) are untouched" in error
    assert runs.checkpoint_steps(run) == [2, 4]
    for step, params in before.items():
        _assert_same_params(runs.final_params(run, step), params, f"checkpoint {step}")


def test_corrupt_latest_checkpoint_and_torn_metrics_line_are_repaired_on_resume(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    original = runs.final_params(run, 4)
    data = max((run / "checkpoints" / "4" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)  # a crash mid-write, without atomic rename
    torn_line = len((run / "metrics.jsonl").read_text().splitlines()) + 1
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "kind": "train", "loss": 3.1')  # killed mid-append
    proc = _train(run, "TrainConfig.num_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints"
    assert (f"checkpoint {ckpt / '4'} cannot be read (Exception: Encountered error while reading "
            "array index") in proc.stderr
    assert f"moved it to {ckpt / '4.corrupt-1'} and resumed from the previous checkpoint " \
           f"{ckpt / '2'} instead" in proc.stderr
    assert f"metrics.jsonl:{torn_line}: dropping a torn last line (a run killed mid-write)" \
        in proc.stderr
    assert (ckpt / "4.corrupt-1").is_dir()
    assert runs.checkpoint_steps(run) == [4, 6]
    # Steps 3 and 4 were redone exactly: the new checkpoint 4 equals the one that was damaged.
    _assert_same_params(runs.final_params(run, 4), original, "checkpoint 4 redone")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone
    assert [r["step"] for r in runs.records(run, "train")] == list(range(1, 7))


@pytest.mark.slow
def test_all_checkpoints_unreadable_stops_instead_of_starting_over(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    ckpt = run / "checkpoints"
    for step in (2, 4):
        data = max((ckpt / str(step) / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
        os.truncate(data, data.stat().st_size // 2)
    proc = _train(run, "TrainConfig.num_steps=6")
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert f"error: no checkpoint in {ckpt} can be read:" in proc.stderr
    assert f"  {ckpt / '4'}: Exception: Encountered error while reading array index" in proc.stderr
    assert f"  {ckpt / '2'}: Exception: Encountered error while reading array index" in proc.stderr
    assert "No checkpoint was moved or deleted." in proc.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["2", "4"]
    assert max(r["step"] for r in runs.records(run, "train")) == 4  # no step was trained

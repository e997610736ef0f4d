"""The main job end to end: bad input, exact resume after SIGKILL, SIGTERM, evaluate CLI.

Runs the real CLI (``python -m mtl_jax.train``) on a tiny mT5 and the CTKFacts mixture of the
bundled samples, in subprocesses where signals are involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mtl_jax import train as train_cli

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
]


def _args(model_dir: Path, *extra: str) -> list[str]:
    params = [*TINY, f"TrainConfig.model_dir={model_dir}", *extra]
    return ["--gin_file=demo_mt5.gin", *[f"--gin_param={p}" for p in params]]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device: the subprocess runs are about the loop, not sharding
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _launch(model_dir: Path, *extra: str) -> subprocess.Popen:
    log = open(model_dir.parent / f"{model_dir.name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "mtl_jax.train", *_args(model_dir, *extra)],
        stdout=log, stderr=subprocess.STDOUT, env=_env(),
    )


def _train_records(model_dir: Path) -> list[dict]:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _final_params(model_dir: Path, step: int) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    path = model_dir / "checkpoints" / str(step) / "state"
    restored = ocp.StandardCheckpointer().restore(path)
    flat = {}

    def visit(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                visit(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    visit("", restored["params"])
    return flat


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before {what}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_done(model_dir: Path, step: int) -> bool:
    # Orbax writes into a temporary folder and renames it when the checkpoint is complete.
    return (model_dir / "checkpoints" / str(step) / "state").is_dir()


def _logged_step(model_dir: Path) -> int:
    path = model_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def test_killed_and_preempted_run_ends_identical_to_uninterrupted(tmp_path):
    steps = ["TrainConfig.num_steps=8", "TrainConfig.eval_every=4", "TrainConfig.checkpoint_every=2"]
    reference = tmp_path / "reference"
    assert _launch(reference, *steps).wait(timeout=900) == 0

    run = tmp_path / "interrupted"
    # 1) SIGKILL right after the first checkpoint is complete.
    proc = _launch(run, *steps)
    _wait_for(lambda: _checkpoint_done(run, 2), proc, 600, "checkpoint 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # 2) Resume, then SIGTERM (preemption) once a later step is logged: save and exit 0.
    proc = _launch(run, *steps)
    _wait_for(lambda: _logged_step(run) >= 5, proc, 600, "step 5")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    preempted_at = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert preempted_at >= 5, "SIGTERM must leave a checkpoint of the step it reached"
    # 3) Resume to the end.
    assert _launch(run, *steps).wait(timeout=900) == 0

    ref_records, run_records = _train_records(reference), _train_records(run)
    assert [r["step"] for r in run_records] == list(range(1, 9))
    for a, b in zip(ref_records, run_records, strict=True):
        assert a["loss"] == b["loss"], (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == b["grad_norm"]
    ref_params, run_params = _final_params(reference, 8), _final_params(run, 8)
    assert ref_params.keys() == run_params.keys()
    for name in ref_params:
        np.testing.assert_array_equal(ref_params[name], run_params[name], err_msg=name)
    # The evaluation records agree too, and the report files exist.
    def evals(d: Path) -> list:
        return [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "eval"]
    assert evals(reference) == evals(run)
    for name in ("results.md", "results.csv", "results.json", "curves.png", "config.gin"):
        assert (run / name).is_file(), name


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def test_unknown_gin_binding_is_named_and_nothing_is_written(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = train_cli.main(_args(model_dir, "TrainConfig.num_stepz=3"))
    assert code == 2
    err = capsys.readouterr().err
    assert "num_stepz" in err and "TrainConfig" in err
    assert not model_dir.exists()


def test_unknown_configurable_suggests_the_right_one(tmp_path, capsys):
    code = train_cli.main(_args(tmp_path / "run", "TrainConfg.num_steps=3"))
    assert code == 2
    assert "TrainConfig" in capsys.readouterr().err


def test_missing_data_path_is_named(tmp_path, capsys):
    model_dir = tmp_path / "run"
    missing = tmp_path / "no_such_ctkfacts"
    code = train_cli.main(_args(model_dir, f"TrainConfig.sources={{'ctkfacts_nli': '{missing}'}}"))
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "ctkfacts_nli" in err
    assert not model_dir.exists()


def test_recipe_without_pretrained_checkpoint_points_to_binding_and_demo(tmp_path, capsys):
    code = train_cli.main(["--gin_file=mt5_mix.gin", f"--gin_param=TrainConfig.model_dir={tmp_path}/r"])
    assert code == 2
    err = capsys.readouterr().err
    assert "TrainConfig.pretrained" in err and "demo_mt5.gin" in err


def test_incompatible_checkpoint_stops_and_leaves_model_dir_intact(tmp_path, capsys):
    from mtl_jax.training.checkpoints import CheckpointStore

    model_dir = tmp_path / "run"
    store = CheckpointStore(model_dir / "checkpoints", async_save=False)
    record = {"family": "t5", "d_model": 64, "heads": ["ctkfacts_nli", "xnli"]}
    store.save(3, {"w": np.ones((2,), np.float32)}, {"iterators": []}, {"model": record})
    store.close()
    (model_dir / "metrics.jsonl").write_text('{"step": 3, "kind": "train", "loss": 1.0}\n')
    before = _tree(model_dir)
    code = train_cli.main(_args(model_dir))
    assert code == 2
    err = capsys.readouterr().err
    assert "incompatible" in err and "d_model: checkpoint=64 run=32" in err
    assert _tree(model_dir) == before

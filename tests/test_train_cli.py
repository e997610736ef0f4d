"""The main job end to end: bad input, exact resume after SIGKILL, SIGTERM, evaluate CLI.

Runs the real CLI (``python -m mtl_jax.train``) on a tiny mT5 and the CTKFacts mixture of the
bundled samples, in subprocesses where signals are involved.
"""

from __future__ import annotations

import signal
from pathlib import Path

import cli_runs as runs
import numpy as np

from mtl_jax import train as train_cli


def _args(model_dir: Path, *extra: str) -> list[str]:
    return runs.cli_args(model_dir, *extra)


def test_killed_and_preempted_run_ends_identical_to_uninterrupted(tmp_path):
    steps = ["TrainConfig.num_steps=8", "TrainConfig.eval_every=4", "TrainConfig.checkpoint_every=2"]
    reference = tmp_path / "reference"
    assert runs.launch_train(reference, *steps).wait(timeout=900) == 0

    run = tmp_path / "interrupted"
    # 1) SIGKILL right after the first checkpoint is complete; prove the kill hit a live run.
    proc = runs.launch_train(run, *steps)
    runs.wait_for(lambda: runs.checkpoint_done(run, 2), proc, 600, "checkpoint 2")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert runs.logged_step(run) < 8 and not (run / "results.json").exists(), (
        "the run had finished before the kill: the test proved nothing")
    # 2) Resume, then SIGTERM (preemption) as soon as a step after the resumed one is logged
    #    (early: on a loaded machine the run must not reach its end first): save and exit 0.
    proc = runs.launch_train(run, *steps)
    log = tmp_path / "interrupted.log"
    runs.wait_for(lambda: log.read_text(errors="replace").count("resumed from checkpoint") == 1
                  and runs.logged_step(run) >= 3, proc, 600, "step 3 of the resumed run")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    preempted_at = runs.checkpoint_steps(run)[-1]
    assert preempted_at >= 3, "SIGTERM must leave a checkpoint of the step it reached"
    assert preempted_at < 8 and not (run / "results.json").exists(), (
        "the run had finished before SIGTERM: the test proved nothing")
    # 3) Resume to the end.
    assert runs.launch_train(run, *steps).wait(timeout=900) == 0

    ref_records, run_records = runs.records(reference, "train"), runs.records(run, "train")
    assert [r["step"] for r in run_records] == list(range(1, 9))
    for a, b in zip(ref_records, run_records, strict=True):
        assert a["loss"] == b["loss"], (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == b["grad_norm"]
    ref_params, run_params = runs.final_params(reference, 8), runs.final_params(run, 8)
    assert ref_params.keys() == run_params.keys()
    for name in ref_params:
        np.testing.assert_array_equal(ref_params[name], run_params[name], err_msg=name)
    # The evaluation records agree too, and the report files exist.
    assert runs.records(reference, "eval") == runs.records(run, "eval")
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


def test_on_bad_row_skip_reaches_the_sources_from_gin(tmp_path):
    """TrainConfig.on_bad_row applies to every source the run names (the string form of a
    source cannot carry it), and a bad value is named before anything is written."""
    from mtl_jax import configurables, experiment, gin_config
    from mtl_jax.data import sources

    data = tmp_path / "ctk"
    data.mkdir()
    gin_config.parse(["demo_mt5.gin"], [f"TrainConfig.sources={{'ctkfacts_nli': '{data}'}}",
                                        "TrainConfig.on_bad_row=skip"])
    experiment.configure_sources(configurables.train_config())
    try:
        assert sources.get_source("ctkfacts_nli").on_bad_row == "skip"
    finally:
        sources.reset_sources()
    code = train_cli.main(_args(tmp_path / "run", "TrainConfig.on_bad_row=ignore"))
    assert code == train_cli.EXIT_CONFIG
    assert not (tmp_path / "run").exists()

"""The README's demos learn every task they train on, on any seed and CPU.

A task is scored, as in the results table, by the mean of its primary metric over the languages
the demo trains it on (XNLI: all 15, through XNLI_mix; CTKFacts: cs; the other XGLUE tasks: en).
Its chance level comes from the validation labels themselves (``mtl_jax.evaluation.chance``): the
better of always predicting the majority class and the 99th percentile of 500 random predictors.
Each task must beat it by ``MARGIN``, a margin the 5-seed sweeps in docs/demo.md support (with and
without fast-math XLA rounding). Zero-shot transfer to other languages is not asserted: a model
trained from scratch has no multilingual pretraining.

The default stage runs the README's first command as written (only MODEL_DIR moved to a temporary
directory and the progress bar off) and the XLM-R demo, seed 0; the slow stage runs seeds 1-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools import demo_sweep  # noqa: E402

DEMOS = {"demo_mt5.gin": "demo_t2t", "demo_xlmr.gin": "demo_cls"}
TRAINED = {"xnli": 15, "pawsx": 1, "nc": 1, "qadsm": 1, "qam": 1, "wpr": 1, "ctkfacts_nli": 1}
# Under the tf.data order the smallest (score - chance) over 5 seeds x 2 XLA settings x 2 demos was
# 12.4 points; under the current order it is 13.4 (mT5) and 7.7 (XLM-R's XNLI, seed 3), see
# docs/demo.md. A task this close to chance means the demo stopped learning it.
MARGIN = 0.05
EVALUATION_CELLS = 41  # XNLI 15, PAWS-X 7, NC 5, QADSM 3, QAM 3, WPR 7, CTKFacts 1


def _run_demo(gin_file: str, model_dir: Path, seed: int | None) -> dict:
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mtl_jax.train", f"--gin_file={gin_file}",
           f"--gin_param=TrainConfig.model_dir={model_dir}", "--gin_param=TrainConfig.progress=False"]
    if seed is not None:
        cmd.append(f"--gin_param=TrainConfig.seed={seed}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation results at the best step" in proc.stdout
    return json.loads((model_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def chances() -> dict[str, dict]:
    return {gin: demo_sweep.task_chances(mixture) for gin, mixture in DEMOS.items()}


def _assert_learns(report: dict, chance: dict[str, dict], what: str) -> None:
    assert {t: len(c["languages"]) for t, c in chance.items()} == TRAINED
    scores = demo_sweep.task_scores(report, chance)
    failures = [
        f"{task}: {scores[task]:.3f} <= chance {c['chance']:.3f} + margin {MARGIN} "
        f"(majority {c['majority']:.3f}, random p99 {c['random_p99']:.3f})"
        for task, c in sorted(chance.items()) if not scores[task] > c["chance"] + MARGIN
    ]
    assert not failures, f"{what}:\n" + "\n".join(failures)
    # The table is complete: every (task, language) validation cell has a finite score.
    cells = [v for langs in report["metrics"].values() for metrics in langs.values()
             for v in metrics.values()]
    assert sum(len(langs) for langs in report["metrics"].values()) == EVALUATION_CELLS
    assert np.isfinite(cells).all()

@pytest.mark.parametrize("gin_file", sorted(DEMOS))
def test_demo_as_in_the_readme_learns_every_task(gin_file, chances, tmp_path):
    report = _run_demo(gin_file, tmp_path / "run", seed=None)
    _assert_learns(report, chances[gin_file], f"{gin_file} (default seed)")


@pytest.mark.slow
@pytest.mark.seeds
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("gin_file", sorted(DEMOS))
def test_demo_learns_every_task_on_other_seeds(gin_file, seed, chances, tmp_path):
    report = _run_demo(gin_file, tmp_path / "run", seed=seed)
    _assert_learns(report, chances[gin_file], f"{gin_file} seed {seed}")

"""The README's main job: the demo mT5 trains from scratch; its scores against chance.

"Chance" is computed from the validation labels themselves, per (task, language): the better of
always predicting the majority class and the 99th percentile of 500 uniformly random predictors
(random scores for nDCG). A task beats chance when it does so on every language it trains on
(XNLI: all 15, through XNLI_mix; CTKFacts: cs; the other XGLUE tasks: en). Zero-shot transfer to
the other languages is not asserted: a model trained from scratch has no multilingual pretraining.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mtl_jax.evaluation import metrics as M

STEPS = int(os.environ.get("MTL_JAX_DEMO_STEPS", "600"))
TRAIN_LANGUAGES = {"xnli": None, "ctkfacts_nli": {"cs"}}  # None = every language
DEFAULT_TRAIN_LANGUAGES = {"en"}


def _chance(info, examples, rng: np.random.Generator) -> tuple[float, float]:
    """(expected chance score, 99th-percentile chance score) of one evaluation cell."""
    labels = np.array([int(e["label"]) for e in examples])
    primary = info.metrics[0]
    k = info.num_classes
    if primary == "ndcg":
        groups = np.array([int(e["query_id"]) for e in examples])
        draws = [M.ndcg(labels, rng.random(len(labels)), groups=groups) for _ in range(500)]
        return float(np.mean(draws)), float(np.quantile(draws, 0.99))
    fn = M.METRICS[primary]
    kwargs = {"classes": list(range(k))} if primary in ("macro_f1", "micro_f1") else {}
    majority = fn(labels, np.full_like(labels, np.bincount(labels, minlength=k).argmax()), **kwargs)
    draws = [fn(labels, rng.integers(0, k, len(labels)), **kwargs) for _ in range(500)]
    return float(max(majority, np.mean(draws))), float(max(majority, np.quantile(draws, 0.99)))


@pytest.fixture(scope="module")
def demo_cells(tmp_path_factory):
    """Run the shortened demo once; return {(task, language): (score, chance, trained_on)}."""
    model_dir = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "mtl_jax.train", "--gin_file=demo_mt5.gin",
        f"--gin_param=TrainConfig.model_dir={model_dir}",
        f"--gin_param=TrainConfig.num_steps={STEPS}",
        f"--gin_param=TrainConfig.eval_every={STEPS}",
        "--gin_param=TrainConfig.progress=False",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation results at the best step" in proc.stdout
    report = json.loads((model_dir / "results.json").read_text())

    from mtl_jax.data import eval_sets, mixtures, tasks

    rng = np.random.default_rng(0)
    cells = {}
    for name in mixtures.mixture_info("demo_t2t").evaluation_tasks:
        info = tasks.task_info(name)
        langs = TRAIN_LANGUAGES.get(info.dataset, DEFAULT_TRAIN_LANGUAGES)
        examples = eval_sets.load_examples(name, "validation", {"inputs": 96, "targets": 16})
        score = report["metrics"][info.dataset][info.language][info.metrics[0]]
        trained = langs is None or info.language in langs
        cells[(info.dataset, info.language)] = (score, _chance(info, examples, rng), trained)
    return cells


def test_demo_learns_well_above_chance_overall(demo_cells):
    """The model-selection score (mean over all 41 cells) beats the mean chance level, and so does
    the mean over the cells of the languages the demo trains on."""
    scores, chances, trained = (np.array(v) for v in zip(*demo_cells.values(), strict=True))
    expected = chances[:, 0]
    assert len(scores) == 41
    assert scores.mean() > expected.mean(), (scores.mean(), expected.mean())
    assert scores[trained].mean() > expected[trained].mean() + 0.03, (
        scores[trained].mean(), expected[trained].mean())


@pytest.mark.xfail(
    strict=False,
    reason="open (issue [3/3]): the from-scratch demo does not yet beat chance on PAWS-X, QAM "
    "and CTKFacts within the CI budget; see the README's demo section",
)
def test_demo_beats_chance_on_every_task(demo_cells):
    failures = [
        f"{task}/{lang}: {score:.3f} <= chance {chance[1]:.3f} (p99)"
        for (task, lang), (score, chance, trained) in demo_cells.items()
        if trained and not score > chance[1]
    ]
    assert sum(t for *_, t in demo_cells.values()) == 15 + 1 + 5
    assert not failures, "\n".join(failures)

"""The README's main job: the demo mT5 trains from scratch; its scores against chance.

A task is scored, as in the results table, by the mean of its primary metric over the languages
it trains on (XNLI: all 15, through XNLI_mix; CTKFacts: cs; the other XGLUE tasks: en). Its
chance level comes from the validation labels themselves: the better of always predicting the
majority class and the 99th percentile of 500 uniformly random predictors (random scores for
nDCG), each averaged over the same languages. Zero-shot transfer to the other languages is not
asserted: a model trained from scratch has no multilingual pretraining.
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


def _chance_draws(info, examples, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(majority-class score, 500 random-predictor scores) of one evaluation cell."""
    labels = np.array([int(e["label"]) for e in examples])
    primary = info.metrics[0]
    k = info.num_classes
    if primary == "ndcg":
        groups = np.array([int(e["query_id"]) for e in examples])
        draws = [M.ndcg(labels, rng.random(len(labels)), groups=groups) for _ in range(500)]
        return -np.inf, np.array(draws)
    fn = M.METRICS[primary]
    kwargs = {"classes": list(range(k))} if primary in ("macro_f1", "micro_f1") else {}
    majority = fn(labels, np.full_like(labels, np.bincount(labels, minlength=k).argmax()), **kwargs)
    draws = [fn(labels, rng.integers(0, k, len(labels)), **kwargs) for _ in range(500)]
    return float(majority), np.array(draws)


@pytest.fixture(scope="module")
def demo_cells(tmp_path_factory):
    """Run the shortened demo once; return {(task, language): (score, majority, draws, trained)}."""
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
        examples = eval_sets.load_examples(name, "validation", {"inputs": 128, "targets": 16})
        score = report["metrics"][info.dataset][info.language][info.metrics[0]]
        trained = langs is None or info.language in langs
        cells[(info.dataset, info.language)] = (score, *_chance_draws(info, examples, rng), trained)
    return cells


def test_demo_learns_well_above_chance_overall(demo_cells):
    """The model-selection score (mean over all 41 cells) beats the mean chance level, and so does
    the mean over the cells of the languages the demo trains on."""
    scores = np.array([v[0] for v in demo_cells.values()])
    expected = np.array([max(v[1], v[2].mean()) for v in demo_cells.values()])
    trained = np.array([v[3] for v in demo_cells.values()])
    assert len(scores) == 41
    assert scores.mean() > expected.mean(), (scores.mean(), expected.mean())
    assert scores[trained].mean() > expected[trained].mean() + 0.05, (
        scores[trained].mean(), expected[trained].mean())


def test_demo_beats_chance_on_every_task(demo_cells):
    by_task: dict[str, list] = {}
    for (task, lang), (score, majority, draws, trained) in demo_cells.items():
        if trained:
            by_task.setdefault(task, []).append((lang, score, majority, draws))
    assert {t: len(v) for t, v in by_task.items()} == {
        "xnli": 15, "pawsx": 1, "nc": 1, "qadsm": 1, "qam": 1, "wpr": 1, "ctkfacts_nli": 1}
    failures = []
    for task, cells in sorted(by_task.items()):
        score = np.mean([c[1] for c in cells])
        draws = np.mean([c[3] for c in cells], axis=0)  # the task score of a random predictor
        chance = max(np.mean([c[2] for c in cells]), np.quantile(draws, 0.99))
        if not score > chance:
            per_language = ", ".join(f"{lang} {s:.3f}" for lang, s, *_ in cells)
            failures.append(f"{task}: {score:.3f} <= chance {chance:.3f} (p99; {per_language})")
    assert not failures, "\n".join(failures)

"""Scoring a task (``evaluation.scoring.score_task``) against scikit-learn / SciPy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, ndcg_score

from mtl_jax.data import formats, tasks
from mtl_jax.evaluation.scoring import expected_grade, primary_metrics, score_task
from mtl_jax.labels import UNPARSABLE_SCORE


def test_t2t_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    names = formats.XNLI_LABELS
    targets = [names[i] for i in rng.integers(0, 3, 200)]
    preds = [names[i] for i in rng.integers(0, 3, 200)]
    preds[:3] = ["garbage", "", "Entailment"]  # generations outside the label set count as wrong
    got = score_task(tasks.task_info("xnli_t2t_de"), targets, preds)
    assert got == {"accuracy": pytest.approx(accuracy_score(targets, preds))}


def test_ctkfacts_f1_over_the_full_label_set_matches_sklearn():
    rng = np.random.default_rng(1)
    names = formats.CTKFACTS_LABELS
    targets = [names[i] for i in rng.integers(0, 3, 300)]
    preds = [names[i] for i in rng.integers(0, 2, 300)]  # one class never predicted
    got = score_task(tasks.task_info("ctkfacts_nli_t2t_cs"), targets, preds)
    assert got["macro_f1"] == pytest.approx(f1_score(targets, preds, labels=list(names), average="macro"))
    assert got["micro_f1"] == pytest.approx(f1_score(targets, preds, labels=list(names), average="micro"))
    assert got["accuracy"] == pytest.approx(accuracy_score(targets, preds))


def _wpr_queries(rng, count=20):
    gold, qids = [], []
    for q in range(count):
        n = int(rng.integers(2, 8))
        g = rng.integers(0, 5, n)
        g[0] = max(g[0], 1)  # each query has a relevant page
        gold += list(g)
        qids += [q] * n
    return np.array(gold), np.array(qids)


def test_wpr_group_field_and_ndcg_by_predicted_grade_match_sklearn():
    info = tasks.task_info("wpr_t2t_de")
    assert info.group_field == "query_id" and tasks.task_info("wpr_cls_zh").group_field == "query_id"
    rng = np.random.default_rng(2)
    gold, qids = _wpr_queries(rng)
    pred = rng.integers(0, 5, len(gold))
    names = formats.WPR_LABELS
    got = score_task(info, [names[i] for i in gold], [names[i] for i in pred], groups=qids)
    want = np.mean([ndcg_score([gold[qids == q]], [pred[qids == q]]) for q in np.unique(qids)])
    assert got == {"ndcg": pytest.approx(want)}


def test_wpr_ranked_by_expected_grade_matches_sklearn():
    info = tasks.task_info("wpr_cls_de")
    rng = np.random.default_rng(3)
    gold, qids = _wpr_queries(rng)
    logits = rng.normal(size=(len(gold), 5))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grade = probs @ np.arange(5)  # computed independently of the code under test
    np.testing.assert_allclose(expected_grade(logits), grade, rtol=1e-12)
    got = score_task(info, gold, logits.argmax(-1), scores=expected_grade(logits), groups=qids)
    want = np.mean([ndcg_score([gold[qids == q]], [grade[qids == q]]) for q in np.unique(qids)])
    assert got["ndcg"] == pytest.approx(want)


def test_regression_from_numbers_and_generated_text_matches_scipy():
    info = dataclasses.replace(tasks.task_info("xnli_t2t_de"), name="sts_t2t_en", dataset="sts",
                               label_names=(), metrics=("pearson", "spearman"), kind="regression")
    rng = np.random.default_rng(4)
    gold = rng.uniform(0, 5, 50)
    pred = np.round((gold + rng.normal(0, 0.7, 50)) * 5) / 5
    texts = [f"{p:.1f}" for p in pred]
    texts[:2] = ["garbage", ""]  # unparsable generations score as T5 scores them
    parsed = np.array([UNPARSABLE_SCORE, UNPARSABLE_SCORE, *pred[2:]])
    got = score_task(info, gold, texts)
    assert got["pearson"] == pytest.approx(pearsonr(gold, parsed)[0])
    assert got["spearman"] == pytest.approx(spearmanr(gold, parsed)[0])
    assert score_task(info, gold, pred)["pearson"] == pytest.approx(pearsonr(gold, pred)[0])


def test_constant_regression_prediction_scores_zero_not_nan():
    """SciPy leaves r undefined for a constant prediction; the task score is 0 so the run's
    model-selection mean stays defined. Constant gold stays undefined (nan)."""
    info = dataclasses.replace(tasks.task_info("xnli_t2t_de"), name="sts_t2t_en", dataset="sts",
                               label_names=(), metrics=("pearson", "spearman"), kind="regression")
    gold = np.linspace(0, 5, 20)
    assert score_task(info, gold, ["2.6"] * 20) == {"pearson": 0.0, "spearman": 0.0}
    assert score_task(info, gold, ["junk"] * 20) == {"pearson": 0.0, "spearman": 0.0}
    both = score_task(info, np.full(20, 3.0), ["2.6"] * 20)
    assert np.isnan(both["pearson"]) and np.isnan(both["spearman"])


def test_primary_metric_is_each_datasets_first():
    infos = [tasks.task_info(n) for n in ("ctkfacts_nli_cls_cs", "wpr_cls_de", "xnli_cls_de")]
    assert primary_metrics(infos) == {"ctkfacts_nli": "macro_f1", "wpr": "ndcg", "xnli": "accuracy"}

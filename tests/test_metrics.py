"""Metrics against scikit-learn / SciPy (the independent references) on random inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from mtl_jax.evaluation import metrics as M

SEEDS = range(40)


def _classes(rng: np.random.Generator, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, n_classes, size=n)
    # Predictions agree with the labels part of the time and may use a class the labels lack.
    p = np.where(rng.random(n) < 0.5, y, rng.integers(0, n_classes + 1, size=n))
    return y, p


def _sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division / constant-input warnings are expected
        return fn(*args, **kwargs)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    y, p = _classes(rng, n, int(rng.integers(1, 6)))
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert M.macro_f1(y, p) == pytest.approx(_sk(skm.f1_score, y, p, average="macro"), abs=1e-12)
    assert M.micro_f1(y, p) == pytest.approx(_sk(skm.f1_score, y, p, average="micro"), abs=1e-12)
    assert M.mcc(y, p) == pytest.approx(_sk(skm.matthews_corrcoef, y, p), abs=1e-12)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=40),
)
@settings(max_examples=150, deadline=None)
def test_classification_metrics_match_sklearn_hypothesis(pairs):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    assert M.macro_f1(y, p) == pytest.approx(_sk(skm.f1_score, y, p, average="macro"), abs=1e-12)
    assert M.micro_f1(y, p) == pytest.approx(_sk(skm.f1_score, y, p, average="micro"), abs=1e-12)
    assert M.mcc(y, p) == pytest.approx(_sk(skm.matthews_corrcoef, y, p), abs=1e-12)


def test_string_labels_match_sklearn():
    rng = np.random.default_rng(7)
    names = np.array(["entailment", "neutral", "contradiction"])
    y, p = names[rng.integers(0, 3, 50)], names[rng.integers(0, 3, 50)]
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert M.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert M.mcc(y, p) == pytest.approx(skm.matthews_corrcoef(y, p))


@pytest.mark.parametrize(
    "y, p, classes",
    [
        ([0, 0, 1], [0, 0, 1], [0, 1, 2]),  # class 2 in neither array: its F1 is 0 (zero division)
        ([0, 0, 1], [0, 0, 1], [2]),  # only an absent class: every F1 is 0
        ([0, 1, 1, 2], [1, 1, 1, 1], [0, 1]),  # a subset of the classes
        ([0, 0, 0], [1, 1, 1], None),  # no true positive anywhere
    ],
)
def test_f1_zero_division_and_explicit_classes_match_sklearn(y, p, classes):
    for avg, fn in (("macro", M.macro_f1), ("micro", M.micro_f1)):
        expected = _sk(skm.f1_score, y, p, labels=classes, average=avg)
        assert fn(y, p, classes=classes) == pytest.approx(expected, abs=1e-12), avg


def test_mcc_constant_marginals_is_zero_like_sklearn():
    for y, p in (([1, 1, 1], [1, 1, 1]), ([0, 1, 0], [0, 0, 0]), ([2], [2])):
        assert M.mcc(y, p) == _sk(skm.matthews_corrcoef, y, p) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    y = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4)
    p = 0.5 * y + rng.normal(size=n)
    if seed % 3 == 0:  # many ties (rounded scores, as with STS-like 0-5 grades)
        y, p = np.round(y), np.round(p)
    expected_r = _sk(stats.pearsonr, y, p).statistic
    expected_rho = _sk(stats.spearmanr, y, p).statistic
    if np.isnan(expected_r):
        assert math.isnan(M.pearson(y, p))
    else:
        assert M.pearson(y, p) == pytest.approx(expected_r, abs=1e-10)
    if np.isnan(expected_rho):
        assert math.isnan(M.spearman(y, p))
    else:
        assert M.spearman(y, p) == pytest.approx(expected_rho, abs=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_average_ranks_match_scipy_rankdata(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=int(rng.integers(1, 30))).astype(float)
    np.testing.assert_array_equal(M.average_ranks(x), stats.rankdata(x, method="average"))


def test_correlations_constant_input_is_nan_like_scipy():
    y, c = [1.0, 2.0, 3.0], [4.0, 4.0, 4.0]
    for ours, ref in ((M.pearson, stats.pearsonr), (M.spearman, stats.spearmanr)):
        assert np.isnan(_sk(ref, y, c).statistic) and math.isnan(ours(y, c))
        assert np.isnan(_sk(ref, c, y).statistic) and math.isnan(ours(c, y))
    # Fewer than two examples: SciPy raises; we return nan (documented) so an eval never crashes.
    assert math.isnan(M.pearson([1.0], [2.0])) and math.isnan(M.spearman([1.0], [2.0]))


# --------------------------------------------------------------------------- nDCG


def _random_ranking_data(rng: np.random.Generator, n_queries: int, with_singletons: bool):
    rel, scores, groups = [], [], []
    for q in range(n_queries):
        size = int(rng.integers(1 if with_singletons else 2, 25))
        r = rng.integers(0, 5, size=size).astype(float)  # graded 0..4, many ties
        if rng.random() < 0.15:
            r[:] = 0.0  # no relevant document: ideal DCG 0
        s = rng.normal(size=size)
        if rng.random() < 0.5:
            s = np.round(s)  # ties in the scores
        rel.append(r)
        scores.append(s)
        groups.append(np.full(size, f"q{q}"))
    return rel, scores, groups


def _sklearn_query_ndcg(r: np.ndarray, s: np.ndarray, k: int | None) -> float:
    """scikit-learn's ndcg_score for one query.

    scikit-learn refuses queries of one document; adding an irrelevant document ranked last
    changes neither the DCG nor the ideal DCG, so it gives the single document's own score.
    """
    if r.shape[0] == 1:
        r, s = np.append(r, 0.0), np.append(s, s[0] - 1.0)
    return skm.ndcg_score(r[None, :], s[None, :], k=k)


@pytest.mark.parametrize("k", [None, 1, 3, 10])
@pytest.mark.parametrize("seed", range(12))
def test_ndcg_matches_sklearn_per_query_average(seed, k):
    rng = np.random.default_rng(seed)
    rel, scores, groups = _random_ranking_data(rng, int(rng.integers(1, 12)), seed % 2 == 0)
    expected = np.mean([_sklearn_query_ndcg(r, s, k) for r, s in zip(rel, scores, strict=True)])
    # Shuffle examples across queries: grouping must not depend on contiguity.
    perm = rng.permutation(sum(len(r) for r in rel))
    got = M.ndcg(
        np.concatenate(rel)[perm],
        np.concatenate(scores)[perm],
        groups=np.concatenate(groups)[perm],
        k=k,
    )
    assert got == pytest.approx(expected, abs=1e-12)


def test_ndcg_single_document_and_irrelevant_queries():
    # A single relevant document is a perfect ranking; an all-irrelevant query scores 0 (as in
    # scikit-learn) and still counts in the average.
    assert M.ndcg([2.0], [0.3], groups=[0]) == 1.0
    assert M.ndcg([0.0], [0.3], groups=[0]) == 0.0
    assert skm.ndcg_score([[0.0, 0.0]], [[0.1, 0.2]]) == 0.0
    assert M.ndcg([0, 0, 3, 1], [0.1, 0.2, 0.5, 0.4], groups=["a", "a", "b", "b"]) == 0.5


def test_ndcg_tie_handling_matches_sklearn_docstring_case():
    rel = np.array([10, 0, 0, 1, 5], dtype=float)
    tied = np.array([1, 0, 0, 0, 1], dtype=float)
    expected = skm.ndcg_score(rel[None], tied[None], k=1)
    assert M.ndcg(rel, tied, groups=np.zeros(5), k=1) == pytest.approx(expected)


def test_ndcg_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        M.ndcg([-1.0, 1.0], [0.1, 0.2], groups=[0, 0])
    with pytest.raises(ValueError, match="group ids"):
        M.ndcg([1.0, 1.0], [0.1, 0.2], groups=[0])
    with pytest.raises(ValueError, match="k must be"):
        M.ndcg([1.0, 1.0], [0.1, 0.2], groups=[0, 0], k=0)


# --------------------------------------------------------------------------- registry / helper


def test_registry_and_compute_metrics():
    rng = np.random.default_rng(3)
    y, p = _classes(rng, 40, 3)
    groups = rng.integers(0, 5, size=40)
    scores = rng.normal(size=40)
    out = M.compute_metrics(
        ["accuracy", "macro_f1", "ndcg", "ndcg@3"], y, p, scores=scores, groups=groups
    )
    assert list(out) == ["accuracy", "macro_f1", "ndcg", "ndcg@3"]
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert out["macro_f1"] == pytest.approx(_sk(skm.f1_score, y, p, average="macro"))
    assert out["ndcg"] == M.METRICS["ndcg"](y, scores, groups=groups)
    assert out["ndcg@3"] == M.ndcg(y, scores, groups=groups, k=3)
    # Without scores, ranking metrics rank by the predictions (ties averaged).
    no_scores = M.compute_metrics(["ndcg"], y, p, groups=groups)
    assert no_scores["ndcg"] == M.ndcg(y, p, groups=groups)
    assert set(M.METRICS) == {
        "accuracy",
        "macro_f1",
        "micro_f1",
        "f1",
        "mcc",
        "pearson",
        "spearman",
        "ndcg",
    }


def test_bad_input_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        M.get_metric("bleu")
    with pytest.raises(KeyError, match="ndcg@10"):
        M.get_metric("accuracy@10")
    with pytest.raises(ValueError, match="needs `groups`"):
        M.compute_metrics(["ndcg"], [1, 0], [1, 0])
    with pytest.raises(ValueError, match="accuracy: 2 labels but 3 predictions"):
        M.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="macro_f1: no examples"):
        M.macro_f1([], [])
    with pytest.raises(ValueError, match="pearson: labels and predictions must be numeric"):
        M.pearson(["a", "b"], [1.0, 2.0])

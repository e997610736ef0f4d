"""Chance levels against closed forms: binomial quantiles (SciPy) and exact nDCG expectations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mtl_jax.evaluation.chance import Cell, chance


def test_majority_class_score():
    labels = np.array([0, 0, 0, 1, 2, 0])
    c = chance("accuracy", 3, [Cell(labels)], draws=50)
    assert c.majority == pytest.approx(4 / 6)
    assert c.level == max(c.majority, c.random_quantile)


def test_random_accuracy_follows_the_binomial():
    """A uniform random guess over k classes is right with p = 1/k whatever the labels, so the
    accuracy of n rows is Binomial(n, 1/k) / n; over several equal cells the task mean is the
    binomial of all rows (drawn jointly), narrower than any one cell."""
    rng = np.random.default_rng(1)
    cells = [Cell(rng.integers(0, 3, 200)) for _ in range(4)]
    one = chance("accuracy", 3, cells[:1], draws=4000, quantile=0.99)
    four = chance("accuracy", 3, cells, draws=4000, quantile=0.99)
    assert one.random_mean == pytest.approx(1 / 3, abs=0.005)
    assert one.random_quantile == pytest.approx(stats.binom.ppf(0.99, 200, 1 / 3) / 200, abs=0.01)
    assert four.random_quantile == pytest.approx(stats.binom.ppf(0.99, 800, 1 / 3) / 800, abs=0.006)
    assert four.random_quantile < one.random_quantile


def test_macro_f1_uses_every_declared_class():
    """Always predicting class 0 of three balanced classes: F1 of class 0 = 2*1/3/(1+1/3) = 0.5,
    the other two 0 (they are declared, never predicted), macro 1/6."""
    labels = np.repeat([0, 1, 2], 10)
    assert chance("macro_f1", 3, [Cell(labels)], draws=20).majority == pytest.approx(1 / 6)


def test_random_ndcg_mean_is_the_expectation_over_orders():
    """One query, relevances [1, 0]: the relevant page ranks first half the time (nDCG 1), else
    second (nDCG 1/log2(3))."""
    cell = Cell(np.array([1, 0]), groups=np.array([7, 7]))
    c = chance("ndcg", 2, [cell] * 10, draws=1000)
    assert c.random_mean == pytest.approx((1 + 1 / np.log2(3)) / 2, abs=0.006)
    assert c.majority == -np.inf and c.level == c.random_quantile


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no evaluation cells"):
        chance("accuracy", 2, [])
    with pytest.raises(ValueError, match="quantile"):
        chance("accuracy", 2, [Cell(np.array([0, 1]))], quantile=1.0)
    with pytest.raises(ValueError, match="query ids"):
        chance("ndcg", 2, [Cell(np.array([0, 1]))])

"""Mixing-rate rules against their defining formulas, computed independently here."""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from mtl_jax.data import rates as R

sizes_st = st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=12)


def _frac_normalise(xs):
    total = sum(xs)
    return [x / total for x in xs]


def test_examples_proportional_exact_fractions():
    sizes = [392_702, 49_401, 100_000, 7, 0]
    cap = 2**17
    expected = _frac_normalise([Fraction(min(n, cap)) for n in sizes])
    assert R.examples_proportional(sizes, cap=cap) == pytest.approx([float(x) for x in expected])
    expected_uncapped = _frac_normalise([Fraction(n) for n in sizes])
    assert R.examples_proportional(sizes) == pytest.approx([float(x) for x in expected_uncapped])


def _seqio_reference(sizes, cap, temp):
    """seqio's own mixing_rate_num_examples on fake tasks, normalised as a Mixture samples."""
    seqio = pytest.importorskip("seqio")
    raw = []
    for i, n in enumerate(sizes):
        task = SimpleNamespace(
            name=f"t{i}", cache_dir=None, num_input_examples=lambda split, n=n: n
        )
        raw.append(seqio.mixing_rate_num_examples(task, maximum=cap, temperature=temp))
    return [r / sum(raw) for r in raw]


@pytest.mark.parametrize("temp", [1.0, 2.0, 3.5, 10.0])
@pytest.mark.parametrize("cap", [None, 50_000])
def test_temperature_matches_seqio(temp, cap):
    sizes = [392_702, 49_401, 100_000, 2_000, 12_345]
    assert R.temperature(sizes, temp, cap=cap) == pytest.approx(_seqio_reference(sizes, cap, temp))
    if temp == 1.0:
        assert R.temperature(sizes, temp, cap=cap) == pytest.approx(
            R.examples_proportional(sizes, cap=cap)
        )


@settings(max_examples=60, deadline=None)
@given(sizes=sizes_st, temp=st.floats(min_value=0.25, max_value=20.0))
def test_temperature_formula(sizes, temp):
    p = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    q = p ** (1.0 / temp)
    np.testing.assert_allclose(R.temperature(sizes, temp), q / q.sum(), rtol=1e-9)


def test_temperature_limits():
    sizes = [1000, 10, 1]
    assert R.temperature(sizes, math.inf) == pytest.approx(R.equal(sizes))
    # Higher temperature -> flatter: the largest task's share shrinks monotonically.
    shares = [R.temperature(sizes, t)[0] for t in (1, 2, 4, 8, 1000)]
    assert all(a > b for a, b in zip(shares, shares[1:], strict=False))
    assert shares[-1] == pytest.approx(1 / 3, abs=0.01)


def test_equal_and_explicit():
    assert R.equal([5, 1, 1000, 3]) == [0.25] * 4
    assert R.explicit([5, 1, 1000], [2, 0, 6]) == pytest.approx([0.25, 0.0, 0.75])
    assert R.compute_rates("explicit", [1, 1], weights=[1, 3]) == pytest.approx([0.25, 0.75])


def test_unimax_hand_computed():
    # sizes 10, 100, 1000; budget 600; N=1. Smallest first: 600/3=200 > 10 -> 10;
    # 590/2=295 > 100 -> 100; 490/1 -> 490 (below 1000).
    assert R.unimax_allocation([1000, 10, 100], 600, 1) == pytest.approx([490, 10, 100])
    assert R.unimax([1000, 10, 100], 600, 1) == pytest.approx([490 / 600, 10 / 600, 100 / 600])
    # N=4: 600/3=200 > 4*10 -> 40; 560/2=280 <= 4*100 -> 280; 280/1 -> 280.
    assert R.unimax_allocation([1000, 10, 100], 600, 4) == pytest.approx([280, 40, 280])
    # A budget every task can take uniformly gives equal rates.
    assert R.unimax([1000, 500, 300], 900, 1) == pytest.approx([1 / 3] * 3)


def _water_filling(sizes, budget, n_epochs):
    """UniMax as a water level: U_i = min(N * n_i, level) with sum U_i = budget."""
    caps = np.asarray(sizes, dtype=np.float64) * n_epochs

    def excess(level):
        return np.minimum(caps, level).sum() - budget

    level = brentq(excess, 0.0, caps.max(), xtol=1e-9, rtol=1e-12)
    return np.minimum(caps, level)


@settings(max_examples=80, deadline=None)
@given(
    sizes=sizes_st,
    frac=st.floats(min_value=0.01, max_value=1.0),
    n_epochs=st.sampled_from([0.5, 1, 2, 5, 10]),
)
def test_unimax_equals_water_filling(sizes, frac, n_epochs):
    budget = frac * n_epochs * sum(sizes)
    got = np.asarray(R.unimax_allocation(sizes, budget, n_epochs))
    np.testing.assert_allclose(got, _water_filling(sizes, budget, n_epochs), rtol=1e-6, atol=1e-6)
    assert got.sum() == pytest.approx(budget)
    assert np.all(got <= np.asarray(sizes) * n_epochs * (1 + 1e-9))
    np.testing.assert_allclose(R.unimax(sizes, budget, n_epochs), got / budget, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_st, cap=st.integers(min_value=1, max_value=10**6))
def test_every_rule_is_normalised(sizes, cap):
    for r in (
        R.examples_proportional(sizes, cap=cap),
        R.temperature(sizes, 3.0, cap=cap),
        R.equal(sizes),
        R.unimax(sizes, 0.5 * sum(sizes), 1.0),
        R.explicit(sizes, list(range(1, len(sizes) + 1))),
    ):
        assert len(r) == len(sizes)
        assert min(r) >= 0
        assert sum(r) == pytest.approx(1.0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="non-empty"):
        R.equal([])
    with pytest.raises(ValueError, match=">= 0"):
        R.examples_proportional([3, -1])
    with pytest.raises(ValueError, match="all rates are zero"):
        R.examples_proportional([0, 0])
    with pytest.raises(ValueError, match="cap must be > 0"):
        R.examples_proportional([1, 2], cap=0)
    with pytest.raises(ValueError, match="T must be > 0"):
        R.temperature([1, 2], 0)
    with pytest.raises(ValueError, match="max_epochs"):
        R.unimax([10, 10], budget=100, max_epochs=2)
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        R.explicit([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="unknown rate rule"):
        R.compute_rates("proportional", [1, 2])
    with pytest.raises(TypeError, match="temperature"):
        R.compute_rates("temperature", [1, 2], tau=2)

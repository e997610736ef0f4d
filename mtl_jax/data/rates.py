"""Mixing-rate rules: how often each task of a mixture is sampled, from the tasks' sizes.

Every rule takes the member tasks' training-set sizes (number of examples, in mixture order) and
returns normalised rates (non-negative, summing to 1) in the same order. Plain Python/NumPy, so the
rules can be used and tested without TensorFlow; ``mixtures.py`` applies them to seqio tasks.

- ``examples_proportional(sizes, cap)``: T5 (Raffel et al. 2020, sec. 3.5.2): r_i ∝ min(n_i, K).
  The cap keeps one huge task from drowning the others.
- ``temperature(sizes, T, cap)``: T5's temperature scaling: the capped proportional rates raised to
  1/T and renormalised. T=1 is ``examples_proportional``, T -> inf approaches ``equal``.
- ``equal(sizes)``: every task the same rate.
- ``unimax(sizes, budget, max_epochs)``: UniMax (Chung et al. 2023, Algorithm 1): spread a total
  budget of examples uniformly over tasks, visiting them from the smallest up, but never give a
  task more than ``max_epochs`` passes over its data; what a small task cannot use is shared by
  the larger ones.
- ``explicit(sizes, weights)``: user-given weights, normalised.

Rates may also change during training (a *rate schedule*, a function of the batch counter):
- ``AnnealedRates``: annealed sampling (Stickland & Murray 2019, "BERT and PALs"; MT-DNN):
  r_i ∝ n_i^α with α linear in the batch counter from ``alpha_start`` (batch 0) to ``alpha_end``
  (the last batch, ``num_steps - 1``) and ``alpha_end`` after. The paper anneals per epoch,
  α = 1 - 0.8 (e - 1) / (E - 1), i.e. 1 -> 0.2; the default here is 1 -> 0.5 (examples-
  proportional to square-root sampling), step by step so that every batch has its own rates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

RateFn = Callable[..., list[float]]


def _check_sizes(sizes: Sequence[float]) -> np.ndarray:
    arr = np.asarray(sizes, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"task sizes must be a non-empty 1-D sequence, got {sizes!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"task sizes must be finite and >= 0, got {list(sizes)}")
    return arr


def _normalise(weights: np.ndarray, what: str) -> list[float]:
    total = float(weights.sum())
    if not total > 0:
        raise ValueError(f"{what}: all rates are zero (sizes/weights {weights.tolist()})")
    return (weights / total).tolist()


def examples_proportional(sizes: Sequence[float], cap: float | None = None) -> list[float]:
    """Rates ∝ min(n_i, cap) (``cap=None``: no cap, plain examples-proportional)."""
    arr = _check_sizes(sizes)
    if cap is not None:
        if not cap > 0:
            raise ValueError(f"examples_proportional: cap must be > 0, got {cap}")
        arr = np.minimum(arr, cap)
    return _normalise(arr, "examples_proportional")


def temperature(
    sizes: Sequence[float], temperature: float, cap: float | None = None
) -> list[float]:
    """T5 temperature scaling: capped proportional rates r_i, then r_i^(1/T) renormalised."""
    if not temperature > 0:
        raise ValueError(f"temperature: T must be > 0, got {temperature}")
    rates = np.asarray(examples_proportional(sizes, cap))
    if math.isinf(temperature):
        return _normalise((rates > 0).astype(np.float64), "temperature")
    return _normalise(rates ** (1.0 / temperature), "temperature")


def equal(sizes: Sequence[float]) -> list[float]:
    """The same rate for every task (sizes only give the count)."""
    arr = _check_sizes(sizes)
    return [1.0 / arr.size] * arr.size


def unimax_allocation(sizes: Sequence[float], budget: float, max_epochs: float) -> list[float]:
    """UniMax's per-task example budgets U_i (before normalisation), in the input order."""
    arr = _check_sizes(sizes)
    if not budget > 0:
        raise ValueError(f"unimax: budget must be > 0 examples, got {budget}")
    if not max_epochs > 0:
        raise ValueError(f"unimax: max_epochs must be > 0, got {max_epochs}")
    if budget > max_epochs * arr.sum() * (1 + 1e-12):
        raise ValueError(
            f"unimax: a budget of {budget:g} examples needs more than max_epochs={max_epochs:g} "
            f"passes over the {arr.sum():g} examples of the mixture; raise max_epochs or lower "
            f"the budget"
        )
    alloc = np.zeros_like(arr)
    remaining = float(budget)
    order = np.argsort(arr, kind="stable")  # smallest first; ties keep mixture order
    for k, i in enumerate(order):
        uniform_share = remaining / (arr.size - k)
        alloc[i] = min(uniform_share, arr[i] * max_epochs)
        remaining -= alloc[i]
    return alloc.tolist()


def unimax(sizes: Sequence[float], budget: float, max_epochs: float = 1.0) -> list[float]:
    """UniMax rates: the allocation of ``unimax_allocation`` normalised by the budget."""
    return _normalise(np.asarray(unimax_allocation(sizes, budget, max_epochs)), "unimax")


def explicit(sizes: Sequence[float], weights: Sequence[float]) -> list[float]:
    """User-given non-negative weights (one per task), normalised."""
    arr = _check_sizes(sizes)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != arr.shape:
        raise ValueError(f"explicit: {len(w)} weights for {arr.size} tasks")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"explicit: weights must be finite and >= 0, got {list(weights)}")
    return _normalise(w, "explicit")


RATE_FUNCTIONS: dict[str, RateFn] = {
    "examples_proportional": examples_proportional,
    "temperature": temperature,
    "equal": equal,
    "unimax": unimax,
    "explicit": explicit,
}


def compute_rates(rule: str, sizes: Sequence[float], **kwargs) -> list[float]:
    """Apply the rule named ``rule`` (a key of ``RATE_FUNCTIONS``) with its keyword arguments."""
    if rule not in RATE_FUNCTIONS:
        raise ValueError(f"unknown rate rule {rule!r}; expected one of {sorted(RATE_FUNCTIONS)}")
    try:
        return RATE_FUNCTIONS[rule](sizes, **kwargs)
    except TypeError as e:
        raise TypeError(f"rate rule {rule!r}: {e}") from e


@dataclasses.dataclass(frozen=True)
class AnnealedRates:
    """Annealed sampling (see the module docstring): the rates of batch k are ∝ n_i^α(k).

    ``sizes`` are the tasks' training example counts, in the iterator's task order;
    ``num_steps`` the run's length in batches (one batch per update).
    """

    sizes: tuple[float, ...]
    num_steps: int
    alpha_start: float = 1.0
    alpha_end: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(float(n) for n in _check_sizes(self.sizes)))
        if self.num_steps < 1:
            raise ValueError(f"annealed: num_steps must be >= 1, got {self.num_steps}")
        for name in ("alpha_start", "alpha_end"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"annealed: {name} must be finite and >= 0, got {value}")
        _normalise(np.asarray(self.sizes), "annealed")  # some task must have examples

    def alpha(self, step: int) -> float:
        """α of batch ``step``: linear from alpha_start (0) to alpha_end (num_steps - 1)."""
        frac = min(step / (self.num_steps - 1), 1.0) if self.num_steps > 1 else 1.0
        return self.alpha_start + (self.alpha_end - self.alpha_start) * frac

    def rates(self, step: int) -> list[float]:
        """Normalised rates of batch ``step``: n^α is temperature scaling with T = 1/α
        (α = 0: every non-empty task alike)."""
        a = self.alpha(step)
        return temperature(self.sizes, math.inf if a == 0 else 1.0 / a)

    def describe(self) -> dict[str, Any]:
        """What an iterator state records (a restore under another schedule is refused)."""
        return {"name": "annealed", **dataclasses.asdict(self), "sizes": list(self.sizes)}


RATE_SCHEDULES: dict[str, type[AnnealedRates]] = {"annealed": AnnealedRates}


def rate_schedule(spec: Mapping[str, Any], sizes: Sequence[float],
                  num_steps: int) -> AnnealedRates:
    """The schedule ``spec`` names (``{"name": "annealed", "alpha_start": 1.0, ...}``) over tasks
    of ``sizes`` for a run of ``num_steps`` batches."""
    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    if name not in RATE_SCHEDULES:
        raise ValueError(
            f"unknown rate schedule {name!r}; expected one of {sorted(RATE_SCHEDULES)}")
    try:
        return RATE_SCHEDULES[name](tuple(sizes), int(num_steps), **kwargs)
    except TypeError as e:
        raise TypeError(f"rate schedule {name!r}: {e}") from e

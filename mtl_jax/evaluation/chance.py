"""Chance levels of an evaluation: what a model that learned nothing scores.

A score means little without the score of guessing on the same labels: macro-F1 of a random
3-class predictor on 80 rows is ~0.33 on average but reaches ~0.46 one time in a hundred, and
nDCG of a random ranking is far above 0. The demo's tests and ``tools/demo_sweep.py`` compare
every task with the better of two baselines computed from the validation labels themselves:

- the majority class (always predict the most frequent label; none for ranking metrics), and
- a high quantile (default the 99th percentile) of uniformly random predictors (random scores
  for ranking metrics), drawn ``draws`` times.

A task spanning several languages is scored by the mean over its cells, so its random baseline is
the quantile of the *mean* of per-cell random scores (drawn jointly), not the mean of quantiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mtl_jax.evaluation import metrics as M


@dataclasses.dataclass(frozen=True)
class Cell:
    """The gold labels of one (task, language) evaluation split."""

    labels: np.ndarray  # int class ids (or graded relevance for ranking metrics)
    groups: np.ndarray | None = None  # query ids, ranking metrics only


def _cell_baselines(
    metric: str, num_classes: int, cell: Cell, draws: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """(majority-class score, ``draws`` random-predictor scores) of one cell."""
    labels = np.asarray(cell.labels).astype(np.int64)
    fn = M.get_metric(metric)
    if M.is_ranking_metric(metric):
        if cell.groups is None:
            raise ValueError(f"chance: metric {metric!r} needs the query ids of the cell")
        scores = [fn(labels, rng.random(len(labels)), groups=cell.groups) for _ in range(draws)]
        return -np.inf, np.asarray(scores)
    kwargs = {"classes": list(range(num_classes))} if metric in ("macro_f1", "micro_f1") else {}
    majority = np.full_like(labels, np.bincount(labels, minlength=num_classes).argmax())
    scores = [fn(labels, rng.integers(0, num_classes, len(labels)), **kwargs)
              for _ in range(draws)]
    return float(fn(labels, majority, **kwargs)), np.asarray(scores)


@dataclasses.dataclass(frozen=True)
class Chance:
    """A task's baselines over its cells (means over cells, like the task's score)."""

    majority: float
    random_mean: float
    random_quantile: float
    quantile: float

    @property
    def level(self) -> float:
        """The score a task must beat to show it learned something."""
        return max(self.majority, self.random_quantile)


def chance(
    metric: str,
    num_classes: int,
    cells: Sequence[Cell],
    *,
    quantile: float = 0.99,
    draws: int = 500,
    seed: int = 0,
) -> Chance:
    """Baselines of a task scored by the mean of ``metric`` over ``cells``."""
    if not cells:
        raise ValueError("chance: no evaluation cells")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"chance: quantile must lie in (0, 1), got {quantile}")
    rng = np.random.default_rng(seed)
    majority, random = zip(
        *(_cell_baselines(metric, num_classes, c, draws, rng) for c in cells), strict=True
    )
    task_random = np.mean(np.stack(random), axis=0)  # one random predictor over every cell
    return Chance(
        majority=float(np.mean(majority)),
        random_mean=float(task_random.mean()),
        random_quantile=float(np.quantile(task_random, quantile)),
        quantile=quantile,
    )

"""Evaluation metrics in plain NumPy, with scikit-learn's / SciPy's definitions.

Why NumPy only: the data layer (seqio metric wrappers), the trainer's eval loop and the evaluate
CLI all call these, and the trainer must run on machines without scikit-learn or SciPy (the GPU
image). The tests check every function against scikit-learn / SciPy on random inputs.

Conventions shared by all metrics (``fn(labels, predictions, ...) -> float``):

- ``labels`` are the gold values, ``predictions`` the model's; both 1-D, same length, not empty
  (an empty eval split is a bug upstream, so it raises ``ValueError`` instead of returning nan).
- Classification metrics accept any comparable class values (ints or strings), like scikit-learn.
- The class set of the F1 scores is the sorted union of the values in ``labels`` and
  ``predictions`` unless ``classes`` is given (scikit-learn's ``labels=`` argument).
- Zero division follows scikit-learn's default (``zero_division="warn"``, which yields 0):
  a class's F1 is ``2 tp / (2 tp + fp + fn)`` and 0 when that denominator is 0 (only possible
  for a class in ``classes`` that occurs in neither array); MCC is 0 when either marginal is
  constant (scikit-learn returns 0.0 there).
- Pearson / Spearman return nan when either input is constant (SciPy returns nan with a
  ``ConstantInputWarning``) and also for fewer than 2 examples (where SciPy raises): a nan then
  shows up in the report instead of crashing a long training run at its first evaluation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

MetricFn = Callable[..., float]


def _pair(labels, predictions, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (gold, predicted) pair; errors name the metric at fault."""
    y = np.asarray(labels)
    p = np.asarray(predictions)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(
            f"{metric}: labels and predictions must be 1-D, got shapes {y.shape} and {p.shape}"
        )
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"{metric}: {y.shape[0]} labels but {p.shape[0]} predictions (lengths must match)"
        )
    if y.shape[0] == 0:
        raise ValueError(f"{metric}: no examples (empty labels and predictions)")
    return y, p


def _float_pair(labels, predictions, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y, p = _pair(labels, predictions, metric)
    try:
        return y.astype(np.float64), p.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{metric}: labels and predictions must be numeric ({e})") from e


# --------------------------------------------------------------------------- classification


def accuracy(labels, predictions) -> float:
    """Fraction of examples whose prediction equals the label."""
    y, p = _pair(labels, predictions, "accuracy")
    return float(np.mean(y == p))


def _per_class_counts(
    y: np.ndarray, p: np.ndarray, classes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per class (one-vs-rest)."""
    if classes is None:
        cls = np.unique(np.concatenate([y, p]))
    else:
        cls = np.asarray(list(classes))
        if cls.ndim != 1 or cls.size == 0:
            raise ValueError("f1: `classes` must be a non-empty 1-D sequence of class values")
    is_y = y[None, :] == cls[:, None]  # [classes, examples]
    is_p = p[None, :] == cls[:, None]
    tp = np.sum(is_y & is_p, axis=1).astype(np.float64)
    fp = np.sum(~is_y & is_p, axis=1).astype(np.float64)
    fn = np.sum(is_y & ~is_p, axis=1).astype(np.float64)
    return tp, fp, fn


def _f1_from_counts(tp, fp, fn) -> np.ndarray:
    denominator = 2.0 * tp + fp + fn
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, 2.0 * tp / safe, 0.0)


def macro_f1(labels, predictions, *, classes: Iterable | None = None) -> float:
    """Unweighted mean over classes of the one-vs-rest F1 (rare classes count as much as common)."""
    y, p = _pair(labels, predictions, "macro_f1")
    tp, fp, fn = _per_class_counts(y, p, classes)
    return float(np.mean(_f1_from_counts(tp, fp, fn)))


def micro_f1(labels, predictions, *, classes: Iterable | None = None) -> float:
    """F1 of the pooled counts; equals accuracy for single-label data when all classes count."""
    y, p = _pair(labels, predictions, "micro_f1")
    tp, fp, fn = _per_class_counts(y, p, classes)
    return float(_f1_from_counts(tp.sum(), fp.sum(), fn.sum()))


def f1(labels, predictions, *, positive: int = 1) -> float:
    """Binary F1 of the positive class (label id 1): GLUE's F1 for MRPC and QQP."""
    y, p = _pair(labels, predictions, "f1")
    tp, fp, fn = _per_class_counts(y, p, [positive])
    return float(_f1_from_counts(tp, fp, fn)[0])


def mcc(labels, predictions) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K), as scikit-learn computes it."""
    y, p = _pair(labels, predictions, "mcc")
    _, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    n_classes = int(codes.max()) + 1
    y_codes, p_codes = codes[: y.shape[0]], codes[y.shape[0] :]
    confusion = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(confusion, (y_codes, p_codes), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    n = float(y.shape[0])
    correct = float(np.trace(confusion))
    cov_yp = correct * n - float(np.dot(t_sum, p_sum))
    cov_pp = n * n - float(np.dot(p_sum, p_sum))
    cov_yy = n * n - float(np.dot(t_sum, t_sum))
    if cov_pp * cov_yy == 0.0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_pp * cov_yy))


# --------------------------------------------------------------------------- regression


def pearson(labels, predictions) -> float:
    """Pearson's r; nan for constant inputs or fewer than 2 examples (see module docstring)."""
    y, p = _float_pair(labels, predictions, "pearson")
    if y.shape[0] < 2 or np.all(y == y[0]) or np.all(p == p[0]):
        return float("nan")
    yc = y - y.mean()
    pc = p - p.mean()
    # Normalise before the dot product (as SciPy does) to stay accurate for large magnitudes.
    r = float(np.dot(yc / np.linalg.norm(yc), pc / np.linalg.norm(pc)))
    return max(-1.0, min(1.0, r))


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties get the mean of the ranks they span (SciPy's ``rankdata`` 'average')."""
    x = np.asarray(values)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start of each run of equal values in sorted order.
    new_value = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    starts = np.flatnonzero(new_value)
    ends = np.concatenate([starts[1:], [x.shape[0]]])  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of 1-based ranks starts+1 .. ends
    run_of_sorted = np.cumsum(new_value) - 1
    ranks = np.empty(x.shape[0], dtype=np.float64)
    ranks[order] = run_rank[run_of_sorted]
    return ranks


def spearman(labels, predictions) -> float:
    """Spearman's rho: Pearson's r of the average ranks; nan like :func:`pearson`."""
    y, p = _float_pair(labels, predictions, "spearman")
    if np.isnan(y).any() or np.isnan(p).any():
        return float("nan")  # ranks of nan are undefined; SciPy's default also propagates nan
    return pearson(average_ranks(y), average_ranks(p))


# --------------------------------------------------------------------------- ranking


def _discounts(n: int, k: int | None) -> np.ndarray:
    """log2 position discounts 1/log2(rank+1) for ranks 1..n, zero beyond rank k."""
    d = 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)
    if k is not None:
        d[k:] = 0.0
    return d


def _query_ndcg(relevance: np.ndarray, scores: np.ndarray, k: int | None) -> float:
    """nDCG of one query, ties in ``scores`` averaged (McSherry & Najork; sklearn's default)."""
    discount = _discounts(relevance.shape[0], k)
    ideal = float(np.dot(np.sort(relevance)[::-1], discount))
    if ideal == 0.0:
        return 0.0
    # Tied scores form one block of ranks: every member gets the block's mean gain, i.e. the block
    # contributes mean(gain) * sum(discounts of its ranks) -- the expectation over tie orders.
    distinct, block, block_size = np.unique(-scores, return_inverse=True, return_counts=True)
    block_gain = np.zeros(distinct.shape[0])
    np.add.at(block_gain, block.reshape(-1), relevance)
    block_end = np.cumsum(block_size)
    cumulative = np.concatenate([[0.0], np.cumsum(discount)])
    block_discount = cumulative[block_end] - cumulative[block_end - block_size]
    dcg = float(np.sum(block_gain / block_size * block_discount))
    return dcg / ideal


def ndcg(labels, predictions, *, groups, k: int | None = None) -> float:
    """nDCG(@k) per query, averaged over queries with equal weight.

    ``labels`` are graded relevances (>= 0, linear gain), ``predictions`` the model's ranking
    scores, ``groups`` the query id of each example (any values; examples of one query need not be
    contiguous). Per query this is ``sklearn.metrics.ndcg_score([rel], [scores], k=k)``
    (log2 discount, tied scores averaged). Edge cases: a query whose ideal DCG is 0 (all
    relevances 0) scores 0, as in scikit-learn, and still counts in the average; a
    single-document query scores 1 if relevant, else 0 (scikit-learn raises for it; this is what
    its formula gives, and what it returns once an irrelevant document is appended last).
    """
    rel, scores = _float_pair(labels, predictions, "ndcg")
    g = np.asarray(groups)
    if g.shape != rel.shape:
        raise ValueError(
            f"ndcg: {g.shape[0] if g.ndim else 0} group ids for {rel.shape[0]} examples "
            "(need one query id per example)"
        )
    if k is not None and (not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"ndcg: k must be a positive integer or None, got {k!r}")
    if np.any(rel < 0) or np.any(np.isnan(rel)):
        raise ValueError("ndcg: relevance labels must be non-negative numbers")
    if np.any(np.isnan(scores)):
        raise ValueError("ndcg: prediction scores contain nan")
    _, query = np.unique(g, return_inverse=True)
    query = query.reshape(-1)
    order = np.argsort(query, kind="stable")
    bounds = np.flatnonzero(np.diff(query[order])) + 1
    per_query = [_query_ndcg(rel[idx], scores[idx], k) for idx in np.split(order, bounds)]
    return float(np.mean(per_query))


# --------------------------------------------------------------------------- registry

METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "micro_f1": micro_f1,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "ndcg": ndcg,
}
"""Metric functions by name; ``ndcg@K`` (e.g. ``ndcg@10``) is also accepted by :func:`get_metric`."""

RANKING_METRICS = frozenset({"ndcg"})
"""Metrics that need query ``groups`` and read ranking ``scores`` rather than predicted labels."""


def _split_name(name: str) -> tuple[str, int | None]:
    base, sep, cutoff = name.partition("@")
    if not sep:
        return name, None
    if base not in RANKING_METRICS or not cutoff.isdigit() or int(cutoff) < 1:
        raise KeyError(
            f"bad metric name {name!r}: '@K' only applies to {sorted(RANKING_METRICS)} "
            "with a positive integer K (e.g. 'ndcg@10')"
        )
    return base, int(cutoff)


def get_metric(name: str) -> MetricFn:
    """The metric function for a name in :data:`METRICS`, or ``ndcg@K`` with ``k`` bound."""
    base, k = _split_name(name)
    if base not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)} (and 'ndcg@K')")
    fn = METRICS[base]
    return functools.partial(fn, k=k) if k is not None else fn


def is_ranking_metric(name: str) -> bool:
    return _split_name(name)[0] in RANKING_METRICS


def compute_metrics(
    names: Iterable[str],
    labels,
    predictions,
    *,
    scores=None,
    groups=None,
    metric_kwargs: Mapping[str, Mapping] | None = None,
) -> dict[str, float]:
    """Compute a task's declared metrics, keyed by the declared names.

    Classification/regression metrics compare ``labels`` with ``predictions``. Ranking metrics
    (``ndcg``, ``ndcg@K``) rank by ``scores`` when given (e.g. the model's probability of the
    relevant class) and by ``predictions`` otherwise (predicted grades; ties are then averaged),
    and need ``groups``. ``metric_kwargs`` passes extra keyword arguments per name (e.g.
    ``{"macro_f1": {"classes": [0, 1, 2]}}``).
    """
    metric_kwargs = metric_kwargs or {}
    results: dict[str, float] = {}
    for name in names:
        fn = get_metric(name)
        kwargs = dict(metric_kwargs.get(name, {}))
        if is_ranking_metric(name):
            if groups is None:
                raise ValueError(f"metric {name!r} needs `groups` (the query id of each example)")
            ranked_by = predictions if scores is None else scores
            results[name] = fn(labels, ranked_by, groups=groups, **kwargs)
        else:
            results[name] = fn(labels, predictions, **kwargs)
    return results

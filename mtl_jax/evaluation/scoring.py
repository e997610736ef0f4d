"""Scoring one task: its declared metrics from gold values and a model's predictions.

The task is described by a :class:`TaskDescription`, which the data layer's ``TaskInfo``
satisfies; evaluation never imports the data layer (it needs TensorFlow), it only reads these
attributes. One function, :func:`score_task`, serves the ``Evaluator``, ``inspect`` and scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from mtl_jax.evaluation import metrics as metrics_lib
from mtl_jax.labels import UNPARSABLE_SCORE, parse_regression_text


class TaskDescription(Protocol):
    """What evaluation needs to know of a task (``mtl_jax.data.tasks.TaskInfo`` has it all)."""

    name: str
    dataset: str
    language: str
    format: str  # "t2t" | "cls"
    head: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    kind: str  # "classification" | "regression" | "span_corruption"
    group_field: str | None


def label_id(info: TaskDescription, value: Any) -> int:
    """A class id from an id or a label name; -1 for a name outside the label set (scored as
    wrong, as T5 scores a generation that is no label)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return info.label_names.index(value) if value in info.label_names else -1
    return int(value)


def regression_value(value: Any) -> float:
    """A regression score from a number or from (generated) text; unparsable text is T5's -1."""
    if isinstance(value, bytes | str):
        return parse_regression_text(value)
    value = float(value)
    return value if np.isfinite(value) else UNPARSABLE_SCORE


_CORRELATIONS = frozenset({"pearson", "spearman"})


def _constant(x: np.ndarray) -> bool:
    return x.shape[0] >= 2 and bool(np.all(x == x[0]))


def expected_grade(scores: np.ndarray) -> np.ndarray:
    """``sum_c softmax(scores)_c * c`` per row: how WPR's pages are ranked (grades 0..C-1),
    from head logits or from rank-classification log-likelihoods alike."""
    scores = np.asarray(scores, np.float64)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs @ np.arange(scores.shape[-1], dtype=np.float64)


def score_task(
    info: TaskDescription,
    labels: Sequence[Any],
    predictions: Sequence[Any],
    *,
    scores: np.ndarray | None = None,
    groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The task's declared metrics.

    Classification: ``labels``/``predictions`` are class ids or label names (a name outside the
    label set counts as wrong); F1 scores are over the task's full label set. Regression: numbers
    or generated text (parsed; unparsable = -1.0). Ranking metrics (``ndcg``) rank each group
    (``groups``: the ``info.group_field`` value per example) by ``scores`` when given (one value
    per example, e.g. :func:`expected_grade`), else by the predicted grade.
    """
    if info.kind == "regression":
        gold = np.array([regression_value(v) for v in labels], np.float64)
        pred = np.array([regression_value(v) for v in predictions], np.float64)
        out = metrics_lib.compute_metrics(info.metrics, gold, pred, groups=groups, scores=scores)
        if _constant(pred) and not _constant(gold):
            # SciPy leaves r undefined (nan) for a constant prediction; a model that predicts one
            # score for everything has no correlation with varying gold scores, and a nan cell
            # would make the run's model-selection score nan. Score it 0, as MCC does.
            out = {k: 0.0 if k in _CORRELATIONS and np.isnan(v) else v for k, v in out.items()}
        return out
    gold_ids = [label_id(info, v) for v in labels]
    pred_ids = [label_id(info, v) for v in predictions]
    classes = list(range(len(info.label_names)))
    ranked = None if scores is None else np.asarray(scores, np.float64)
    return metrics_lib.compute_metrics(
        info.metrics, gold_ids, pred_ids, scores=ranked, groups=groups,
        metric_kwargs={"macro_f1": {"classes": classes}, "micro_f1": {"classes": classes}},
    )


def primary_metrics(infos: Sequence[TaskDescription]) -> dict[str, str]:
    """``{dataset: its first declared metric}`` (the report table's model-selection metric)."""
    out: dict[str, str] = {}
    for info in infos:
        if info.metrics:
            out.setdefault(info.dataset, info.metrics[0])
    return out

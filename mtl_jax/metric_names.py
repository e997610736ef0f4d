"""The metric names a dataset may declare, shared by the data layer and evaluation.

Pure Python: the data registry validates declarations against these names without importing
``mtl_jax.evaluation`` (which implements them; a test keeps the two in step).
"""

from __future__ import annotations

CLASSIFICATION = ("accuracy", "macro_f1", "micro_f1", "f1", "mcc")  # f1: binary, class 1
REGRESSION = ("pearson", "spearman")
RANKING = ("ndcg",)  # also "ndcg@K"; needs a per-example group id
ALL = CLASSIFICATION + REGRESSION + RANKING


def base_name(name: str) -> str:
    """``ndcg@10`` -> ``ndcg``; other names unchanged."""
    return name.partition("@")[0]


def check(name: str, kind: str, *, grouped: bool = False) -> str | None:
    """Why ``name`` cannot be a metric of a ``kind`` dataset (None when it can)."""
    base, sep, cutoff = name.partition("@")
    if base not in ALL or (sep and (base not in RANKING or not cutoff.isdigit() or int(cutoff) < 1)):
        return f"unknown metric {name!r}; known: {list(ALL)} (and 'ndcg@K')"
    if kind == "regression" and base not in REGRESSION:
        return f"{name!r} is not a regression metric; expected some of {list(REGRESSION)}"
    if kind == "classification" and base in REGRESSION:
        return f"{name!r} is a regression metric; this dataset has label_names (a classification)"
    if base in RANKING and not grouped:
        return f"{name!r} ranks examples within groups: declare the group field (group=...)"
    return None

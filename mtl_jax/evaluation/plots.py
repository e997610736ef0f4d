"""Validation curves per task from the run's ``metrics.jsonl``.

Record format (one JSON object per line of ``MODEL_DIR/metrics.jsonl``; the trainer appends them,
scripts read them). Evaluation records, made by
:func:`mtl_jax.training.run_log.eval_record` and read by its ``read_jsonl``::

    {"step": 200, "kind": "eval", "split": "validation", "task": "xnli", "language": "de",
     "metric": "accuracy", "value": 0.71}

- ``step``: int, the optimizer step whose parameters were evaluated.
- ``kind``: ``"eval"`` for a (task, language) metric; other kinds (e.g. ``"train"`` records of
  losses, learning rate, throughput) may share the file and are ignored here.
- ``split``: the evaluated split (``"validation"`` or ``"test"``).
- ``task``, ``language``: strings, as in the report table.
- ``metric``: a metric name of :mod:`mtl_jax.evaluation.metrics` (e.g. ``"ndcg@10"``).
- ``value``: float, as a fraction (the table and plots show x100); nan is written as ``NaN``
  (Python's json default) and read back as nan.

If the same (step, split, task, language, metric) appears twice (a resumed run re-evaluating a
step), the later line wins. A truncated last line (a crash mid-append) is skipped.

Plots are drawn with matplotlib's Agg canvas on a private Figure (no pyplot, no global backend
switch), so they work headless and never disturb an interactive session.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mtl_jax.evaluation.tables import Results, write_atomic
from mtl_jax.training.run_log import EVAL_KEYS, EVAL_KIND, eval_record  # noqa: F401
from mtl_jax.training.run_log import read_jsonl as read_records  # noqa: F401

log = logging.getLogger(__name__)

LINE_MODES = ("languages", "average", "both")


def _eval_points(
    records: Iterable[Mapping[str, Any]], split: str
) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(task, language, metric): {step: value}} of the split's eval records (later lines win)."""
    points: dict[tuple[str, str, str], dict[int, float]] = {}
    for i, record in enumerate(records):
        if record.get("kind") != EVAL_KIND:
            continue
        missing = [k for k in EVAL_KEYS if k not in record]
        if missing:
            raise ValueError(f"eval record #{i} lacks {missing}: {dict(record)!r}")
        if record["split"] != split:
            continue
        key = (str(record["task"]), str(record["language"]), str(record["metric"]))
        points.setdefault(key, {})[int(record["step"])] = float(record["value"])
    return points


def eval_results(
    records: Iterable[Mapping[str, Any]], step: int | None = None, split: str = "validation"
) -> tuple[int, Results]:
    """The ``{(task, language): {metric: value}}`` of one step (default: the latest evaluated).

    Feeds :func:`mtl_jax.evaluation.tables.build_report`, e.g. for the best step of a run.
    """
    points = _eval_points(records, split)
    steps = {s for values in points.values() for s in values}
    if not steps:
        raise ValueError(f"no '{EVAL_KIND}' records for split {split!r}")
    chosen = max(steps) if step is None else int(step)
    if chosen not in steps:
        raise ValueError(f"no {split!r} evaluation at step {chosen}; evaluated: {sorted(steps)}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for (task, language, metric), values in points.items():
        if chosen in values:
            results.setdefault((task, language), {})[metric] = values[chosen]
    return chosen, results


def _task_metric(
    task: str, available: Iterable[str], primary_metrics: Mapping[str, str] | None
) -> str:
    available = list(dict.fromkeys(available))
    if primary_metrics is not None and task in primary_metrics:
        metric = primary_metrics[task]
        if metric not in available:
            raise ValueError(
                f"task {task!r}: no eval records of its primary metric {metric!r} "
                f"(records have {available})"
            )
        return metric
    return available[0]  # no primary given: the task's first metric in record order


def plot_validation_curves(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    primary_metrics: Mapping[str, str] | None = None,
    lines: str = "both",
    split: str = "validation",
    title: str | None = None,
) -> Path:
    """Save a PNG with one subplot per task: its metric (x100) against the step.

    ``lines``: ``"languages"`` (one line per language), ``"average"`` (the per-step mean over the
    languages evaluated at that step) or ``"both"``. ``primary_metrics`` picks each task's metric
    (default: the first metric the records give for the task). Tasks appear in the order of
    ``primary_metrics``, then in record order. The file is written atomically.
    """
    if lines not in LINE_MODES:
        raise ValueError(f"lines must be one of {LINE_MODES}, got {lines!r}")
    # Matplotlib is imported here: only plotting needs it, and it takes a while to import.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = _eval_points(records, split)
    if not points:
        raise ValueError(f"no '{EVAL_KIND}' records for split {split!r} to plot")
    record_tasks = list(dict.fromkeys(task for task, _, _ in points))
    ordered = [t for t in (primary_metrics or {}) if t in record_tasks]
    tasks = ordered + [t for t in record_tasks if t not in ordered]

    n_cols = min(3, len(tasks))
    n_rows = math.ceil(len(tasks) / n_cols)
    fig = Figure(figsize=(5.2 * n_cols, 3.8 * n_rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks, strict=False):
        metric = _task_metric(task, (m for t, _, m in points if t == task), primary_metrics)
        curves = {
            lang: values for (t, lang, m), values in points.items() if (t, m) == (task, metric)
        }
        if lines in ("languages", "both"):
            # The default cycle repeats after 10 colours; XNLI has 15 languages.
            palette = colormaps["tab20"] if len(curves) > 10 else colormaps["tab10"]
            for i, lang in enumerate(sorted(curves)):
                steps = sorted(curves[lang])
                ax.plot(
                    steps,
                    [100.0 * curves[lang][s] for s in steps],
                    marker="o" if len(steps) < 30 else None,
                    markersize=3,
                    linewidth=1.0,
                    alpha=0.8 if lines == "both" else 1.0,
                    color=palette(i % palette.N),
                    label=lang,
                )
        if lines in ("average", "both"):
            all_steps = sorted({s for values in curves.values() for s in values})
            mean = [
                100.0
                * sum(v[s] for v in curves.values() if s in v)
                / sum(1 for v in curves.values() if s in v)
                for s in all_steps
            ]
            ax.plot(all_steps, mean, color="black", linewidth=2.4, label="average")
        ax.set_title(f"{task} ({split})")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} (x100)")
        ax.grid(True, alpha=0.3)
        if len(curves) > 8:  # many languages: keep the legend off the curves
            ax.legend(fontsize="x-small", ncols=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.legend(fontsize="x-small", loc="best")
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def plot_best_sources(
    best: Mapping[str, str],
    path: str | os.PathLike,
    *,
    tasks: Iterable[str] = (),
    title: str | None = "best source task per target",
) -> Path:
    """Save a PNG of the tasks as nodes on a circle with an arrow from each target's best source
    to the target (``best``: target -> source), as the intermediate-task figures draw them.
    ``tasks`` adds nodes (and fixes their order) beyond the ones ``best`` names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    names = list(dict.fromkeys([*tasks, *best, *best.values()]))
    if not names:
        raise ValueError("no task to draw")
    n = len(names)
    pos = {t: (math.cos(math.pi / 2 - 2 * math.pi * i / n), math.sin(math.pi / 2 - 2 * math.pi * i / n))
           for i, t in enumerate(names)}
    fig = Figure(figsize=(6.4, 6.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for target, source in best.items():
        if source == target:
            continue
        ax.add_patch(FancyArrowPatch(pos[source], pos[target], arrowstyle="-|>", mutation_scale=18,
                                     shrinkA=22, shrinkB=22, linewidth=1.6, color="tab:blue",
                                     connectionstyle="arc3,rad=0.12"))
    targets = set(best)
    for t, (x, y) in pos.items():
        ax.scatter([x], [y], s=900, color="tab:orange" if t in targets else "lightgray",
                   edgecolors="black", zorder=3)
        ax.annotate(t, (x, y), xytext=(x * 1.28, y * 1.2), ha="center", va="center", fontsize=9)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(f"{title} (arrow: source -> target)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())

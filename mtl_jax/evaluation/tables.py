"""The task x language report: one primary score per (task, language), with averages.

Layout (as multilingual benchmark papers print it): rows are the languages in sorted order
(plain string sort of the codes, so the order never depends on which task finished first) and a
final ``AVG`` row; columns are the tasks, in the order of the ``primary_metrics`` mapping (the
run's task order), and a final ``AVG`` column. A task evaluated without some language shows ``-``.

- ``AVG`` row, task column: mean of that task's scores over the languages it has.
- ``AVG`` column, language row: mean of that language's scores over the tasks it has.
- bottom-right (``overall``): mean over all (task, language) cells that exist, every cell weighted
  equally -- a task with 15 languages weighs 15 times a one-language task. This is the
  model-selection score of the recipes ("average over all tasks and languages"). The JSON also
  records ``mean_of_task_averages`` (each task weighted equally) for comparison with papers that
  average per-task averages.

A nan score (e.g. Pearson of constant predictions) propagates into the averages that include it.
Screen/Markdown show scores x100 with one decimal; CSV and JSON keep full-precision fractions.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AVG = "AVG"
MISSING = "-"
LANGUAGE_HEADER = "language"
REPORT_FORMAT = "mtl_jax.report/1"

Results = Mapping[tuple[str, str], Mapping[str, float]]


@dataclass(frozen=True)
class ReportTable:
    """Scores of one evaluation; build it with :func:`build_report`."""

    tasks: tuple[str, ...]
    languages: tuple[str, ...]
    primary_metrics: dict[str, str]
    metrics: dict[tuple[str, str], dict[str, float]]  # every metric of every (task, language)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. step, split, checkpoint

    def score(self, task: str, language: str) -> float | None:
        """The primary score of a cell, None where the task lacks the language."""
        cell = self.metrics.get((task, language))
        return None if cell is None else cell[self.primary_metrics[task]]

    def task_average(self, task: str) -> float:
        return _mean(self.score(task, lang) for lang in self.languages)

    def language_average(self, language: str) -> float:
        return _mean(self.score(task, language) for task in self.tasks)

    @property
    def overall(self) -> float:
        """Mean over all existing (task, language) cells: the model-selection score."""
        return _mean(self.score(t, lang) for t in self.tasks for lang in self.languages)

    @property
    def mean_of_task_averages(self) -> float:
        return _mean(self.task_average(t) for t in self.tasks)

    def grid(self) -> list[list[float | None]]:
        """Rows of values in display order: languages then AVG; columns: tasks then AVG."""
        rows = [
            [self.score(t, lang) for t in self.tasks] + [self.language_average(lang)]
            for lang in self.languages
        ]
        rows.append([self.task_average(t) for t in self.tasks] + [self.overall])
        return rows

    @property
    def header(self) -> list[str]:
        return [LANGUAGE_HEADER, *self.tasks, AVG]

    @property
    def row_names(self) -> list[str]:
        return [*self.languages, AVG]


def _mean(values) -> float:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else float("nan")


def build_report(
    results: Results,
    primary_metrics: Mapping[str, str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> ReportTable:
    """Make the table from ``{(task, language): {metric: value}}`` and each task's primary metric.

    Tasks appear in the order of ``primary_metrics``; tasks named there without results are left
    out (a run may evaluate a subset). Every task with results needs a primary metric, and every
    cell must hold it.
    """
    if not results:
        raise ValueError("build_report: no results (empty mapping of (task, language) -> metrics)")
    metrics: dict[tuple[str, str], dict[str, float]] = {}
    for key, cell in results.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"build_report: result key {key!r} is not a (task, language) pair")
        task, language = key
        if AVG in key:
            raise ValueError(f"build_report: {AVG!r} is reserved for averages, got key {key!r}")
        if task not in primary_metrics:
            raise ValueError(
                f"build_report: task {task!r} has results but no primary metric "
                f"(primary_metrics has {sorted(primary_metrics)})"
            )
        primary = primary_metrics[task]
        if primary not in cell:
            raise ValueError(
                f"build_report: ({task!r}, {language!r}) lacks its primary metric {primary!r} "
                f"(has {sorted(cell)})"
            )
        try:
            metrics[key] = {str(name): float(value) for name, value in cell.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"build_report: ({task!r}, {language!r}) has a non-numeric metric: {e}"
            ) from e
    present = {task for task, _ in metrics}
    tasks = tuple(t for t in primary_metrics if t in present)
    languages = tuple(sorted({lang for _, lang in metrics}))
    return ReportTable(
        tasks=tasks,
        languages=languages,
        primary_metrics={t: primary_metrics[t] for t in tasks},
        metrics=metrics,
        extra=dict(extra or {}),
    )


# --------------------------------------------------------------------------- rendering


def _percent(value: float | None) -> str:
    if value is None:
        return MISSING
    return "nan" if math.isnan(value) else f"{100.0 * value:.1f}"


def _caption(table: ReportTable) -> str:
    used = ", ".join(f"{t}: {m}" for t, m in table.primary_metrics.items())
    cells = len(table.metrics)
    return (
        f"Scores x100 ({used}).\n"
        f"AVG row: mean over a task's languages; AVG column: mean over a language's tasks;\n"
        f"bottom-right: mean over all {cells} (task, language) cells."
    )


def _display_rows(table: ReportTable) -> list[list[str]]:
    body = [
        [name, *(_percent(v) for v in row)]
        for name, row in zip(table.row_names, table.grid(), strict=True)
    ]
    return [table.header, *body]


def format_text(table: ReportTable) -> str:
    """Aligned plain text for the terminal (first column left-aligned, scores right-aligned)."""
    rows = _display_rows(table)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(rows) - 2:  # rules under the header and above the AVG row
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n" + _caption(table) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_markdown(table: ReportTable) -> str:
    rows = _display_rows(table)
    out = ["| " + " | ".join(_markdown_cell(c) for c in rows[0]) + " |"]
    out.append("|" + "|".join([":---"] + ["---:"] * (len(rows[0]) - 1)) + "|")
    for row in rows[1:]:
        name = f"**{AVG}**" if row[0] == AVG else _markdown_cell(row[0])
        out.append("| " + " | ".join([name, *row[1:]]) + " |")
    return "\n".join(out) + "\n\n" + _caption(table) + "\n"


def has_secondary_metrics(table: ReportTable) -> bool:
    """Whether some cell holds a metric beyond its task's primary one (e.g. Quora's F1)."""
    return any(len(cell) > 1 for cell in table.metrics.values())


def format_metrics_markdown(table: ReportTable) -> str:
    """Every metric of every task, x100: one row per (task, metric) in task order (primary
    metric first, then the others by name), one column per language."""
    out = ["| task | metric | " + " | ".join(table.languages) + " |",
           "|:---|:---|" + "---:|" * len(table.languages)]
    for task in table.tasks:
        names = {m for lang in table.languages for m in table.metrics.get((task, lang), {})}
        primary = table.primary_metrics[task]
        for metric in [primary, *sorted(names - {primary})]:
            cells = [_percent(table.metrics[(task, lang)].get(metric))
                     if (task, lang) in table.metrics else MISSING for lang in table.languages]
            out.append("| " + " | ".join([_markdown_cell(task), metric, *cells]) + " |")
    return "\n".join(out) + "\n\nScores x100; - where a task lacks the language or metric.\n"


def format_csv(table: ReportTable) -> str:
    """The displayed layout with full-precision fractions (``repr`` round-trips exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.header)
    for name, row in zip(table.row_names, table.grid(), strict=True):
        writer.writerow([name, *(MISSING if v is None else repr(v) for v in row)])
    return buffer.getvalue()


def _json_number(value: float | None) -> float | None:
    """Strict JSON has no nan/inf: they become null (documented in the README)."""
    return None if value is None or not math.isfinite(value) else value


def to_json_dict(table: ReportTable) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "tasks": list(table.tasks),
        "languages": list(table.languages),
        "primary_metrics": dict(table.primary_metrics),
        "scores": {
            t: {
                lang: _json_number(table.score(t, lang))
                for lang in table.languages
                if (t, lang) in table.metrics
            }
            for t in table.tasks
        },
        "task_averages": {t: _json_number(table.task_average(t)) for t in table.tasks},
        "language_averages": {
            lang: _json_number(table.language_average(lang)) for lang in table.languages
        },
        "overall": _json_number(table.overall),
        "overall_definition": "mean over all (task, language) cells, each cell weighted equally",
        "mean_of_task_averages": _json_number(table.mean_of_task_averages),
        "metrics": {
            t: {
                lang: {m: _json_number(v) for m, v in table.metrics[(t, lang)].items()}
                for lang in table.languages
                if (t, lang) in table.metrics
            }
            for t in table.tasks
        },
        "extra": table.extra,
    }


def format_json(table: ReportTable) -> str:
    return json.dumps(to_json_dict(table), indent=2, allow_nan=False) + "\n"


def report_from_json_dict(data: Mapping[str, Any]) -> ReportTable:
    """Rebuild a table from :func:`to_json_dict` output (null metric values come back as nan)."""
    if data.get("format") != REPORT_FORMAT:
        raise ValueError(
            f"not an mtl_jax report (format {data.get('format')!r}, want {REPORT_FORMAT!r})"
        )
    results = {
        (task, lang): {m: float("nan") if v is None else v for m, v in cell.items()}
        for task, per_lang in data["metrics"].items()
        for lang, cell in per_lang.items()
    }
    primary = {t: data["primary_metrics"][t] for t in data["tasks"]}
    return build_report(results, primary, extra=data.get("extra") or {})


def load_report(path: str | os.PathLike) -> ReportTable:
    """Read a report saved by :func:`save_report` (its ``.json`` file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
        return report_from_json_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


# --------------------------------------------------------------------------- files


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a file so that readers see the old content or the new one, never a partial file.

    The data goes to a temporary file in the same directory (same filesystem), is flushed to
    disk, then renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_report(table: ReportTable, directory: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Save ``stem.md``, ``stem.csv`` and ``stem.json`` in ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "md": format_markdown(table),
        "csv": format_csv(table),
        "json": format_json(table),
    }
    return {
        kind: write_atomic(directory / f"{stem}.{kind}", text) for kind, text in contents.items()
    }

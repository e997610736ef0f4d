"""Where a run's numbers go: ``MODEL_DIR/metrics.jsonl`` for scripts, TensorBoard for people.

The record format is documented in ``mtl_jax.evaluation.plots``. Only process 0 writes. On
resume the JSONL file is cut back to the restored step (atomically), so a
run that was killed and restarted ends with exactly the lines an uninterrupted run writes; a run
that starts with no checkpoint cuts it back to step 0 (it redoes everything that was logged). A
torn last line (killed mid-write) is dropped then, with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVAL_KIND = "eval"
EVAL_KEYS = ("step", "split", "task", "language", "metric", "value")


def eval_record(
    step: int, task: str, language: str, metric: str, value: float, split: str = "validation"
) -> dict[str, Any]:
    """One evaluation record in the documented ``metrics.jsonl`` format."""
    return {
        "step": int(step),
        "kind": EVAL_KIND,
        "split": split,
        "task": task,
        "language": language,
        "metric": metric,
        "value": float(value),
    }


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file; a truncated final line is dropped, others raise."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                # The writer died mid-line; everything before it is complete.
                log.warning("%s:%d: dropping a torn last line (a run killed mid-write): %.80r",
                            path, number, line)
                break
            raise ValueError(
                f"{path}:{number}: not a JSON record ({e}); only a torn LAST line is dropped, "
                "this one is followed by others: fix or remove it by hand"
            ) from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a record must be a JSON object, got {record!r}")
        records.append(record)
    return records


def _is_writer() -> bool:
    return jax.process_index() == 0


def read_records(model_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``MODEL_DIR/metrics.jsonl`` (none if it does not exist yet)."""
    path = Path(model_dir) / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


class RunLog:
    """Append-only JSONL plus TensorBoard scalars for one MODEL_DIR."""

    def __init__(self, model_dir: str | Path, tensorboard: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / METRICS_FILE
        self._tb = None
        if _is_writer():
            self.model_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.model_dir / "tensorboard"))

    def truncate_after(self, step: int) -> int:
        """Drop records with ``step > step`` (what a killed run logged after its last checkpoint)
        and a torn last line (killed mid-write; ``read_records`` warns); returns how many
        complete records were dropped. A corrupt line followed by others still raises."""
        if not _is_writer() or not self.path.is_file():
            return 0
        records = read_records(self.model_dir)
        keep = [r for r in records if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for record in keep:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(records) - len(keep)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (``step`` and ``kind`` required) and mirror its numbers to TensorBoard."""
        if not _is_writer():
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = int(clean["step"])
            for tag, value in _scalars(clean):
                self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _scalars(record: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    kind = record.get("kind", "train")
    if kind == "eval":
        # One record per (task, language, metric), see eval_record.
        if isinstance(record.get("value"), int | float):
            yield (
                f"eval/{record.get('task')}/{record.get('language')}/{record.get('metric')}",
                float(record["value"]),
            )
        return
    for key, value in record.items():
        if key in ("step", "kind") or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            yield f"{kind}/{key}", float(value)

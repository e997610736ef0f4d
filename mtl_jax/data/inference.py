"""New inputs for prediction: rows of a JSON Lines / CSV / TSV file -> a task's model examples.

The rows carry a task's input fields (``TaskInfo.fields``, e.g. XNLI's ``premise`` and
``hypothesis``), or columns renamed to them; they need no label. They go through the task's
own seqio preprocessors (the same prompt, truncation and tokenisation as training and
evaluation), with a placeholder label that nothing reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from mtl_jax.data.tasks import TaskInfo, task_info
from mtl_jax.data.tfdata import numpy_iterator

INPUT_FORMATS = ("jsonl", "csv", "tsv")


class InputFileError(ValueError):
    """An input file that cannot be read as the task's inputs (the message names file and row)."""


def input_format(path: Path, declared: str | None = None) -> str:
    """``jsonl``/``csv``/``tsv``: ``declared``, else from the suffix (``.json``/``.jsonl``/
    ``.csv``/``.tsv``/``.txt`` = TSV)."""
    if declared is not None:
        if declared not in INPUT_FORMATS:
            raise InputFileError(f"input format {declared!r}: expected one of {INPUT_FORMATS}")
        return declared
    suffix = path.suffix.lower()
    fmt = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}.get(suffix)
    if fmt is None:
        raise InputFileError(f"{path}: cannot tell the format from the suffix {suffix!r}; name it "
                             f"with --input_format ({', '.join(INPUT_FORMATS)})")
    return fmt


def read_rows(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """The rows of an input file as dicts (CSV/TSV: the first line is the header)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"input file {path} does not exist")
    fmt = input_format(path, fmt)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(f"{path}:{number}: not a JSON object ({e})") from None
                if not isinstance(row, dict):
                    raise InputFileError(f"{path}:{number}: expected a JSON object, got {row!r:.80}")
                rows.append(row)
        else:
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            if reader.fieldnames is None:
                raise InputFileError(f"{path}: empty file (expected a header line)")
            for number, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    raise InputFileError(f"{path}:{number}: {len(reader.fieldnames)} columns in the "
                                         "header, a different number in this row")
                rows.append(row)
    if not rows:
        raise InputFileError(f"{path}: no rows")
    return rows


def task_inputs(info: TaskInfo, rows: Sequence[Mapping[str, Any]],
                columns: Mapping[str, str] | None = None, where: str = "input") -> list[dict[str, str]]:
    """Each row's task input fields as strings; ``columns`` maps a field to the row key holding
    it (default: the field's own name). A missing key names the field, the column and the row."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(info.fields))
    if unknown:
        raise InputFileError(f"--columns names {unknown}, which are not input fields of task "
                             f"'{info.name}' (its fields: {list(info.fields)})")
    out = []
    for number, row in enumerate(rows, start=1):
        values = {}
        for field in info.fields:
            column = columns.get(field, field)
            if column not in row or row[column] is None:
                raise InputFileError(
                    f"{where}: row {number} has no column '{column}' (input field '{field}' of "
                    f"task '{info.name}'; it needs {list(info.fields)}; the row has "
                    f"{sorted(row)}). Rename the column or map it with --columns {field}=NAME")
            values[field] = str(row[column])
        out.append(values)
    return out


def examples_from_inputs(task: str, inputs: Sequence[Mapping[str, str]],
                         sequence_length: Mapping[str, int]) -> list[dict[str, Any]]:
    """The task's preprocessed, truncated examples of ``inputs`` (dicts of its input fields),
    in order, as the Evaluator's examples are (a placeholder label, never read)."""
    info = task_info(task)
    if not inputs:
        return []
    t = seqio.get_mixture_or_task(task)
    n = len(inputs)
    columns: dict[str, tf.Tensor] = {
        field: tf.constant([x[field] for x in inputs], tf.string) for field in info.fields
    }
    columns["task"] = tf.constant([info.head] * n, tf.string)
    columns["language"] = tf.constant([info.language] * n, tf.string)
    if info.kind == "regression":
        columns["label"] = tf.zeros([n], tf.float32)
    else:
        columns["label"] = tf.zeros([n], tf.int32)
    if info.group_field is not None:
        columns[info.group_field] = tf.zeros([n], tf.int32)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = t.preprocess_precache(ds)
    ds = t.preprocess_postcache(ds, sequence_length=dict(sequence_length))
    ds = seqio.utils.trim_dataset(ds, dict(sequence_length), t.output_features)
    examples = list(numpy_iterator(ds))
    if len(examples) != n:
        raise RuntimeError(f"task '{task}': {len(examples)} examples for {n} inputs")
    return [{k: np.asarray(v) if not isinstance(v, bytes) else v for k, v in ex.items()}
            for ex in examples]

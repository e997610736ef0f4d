"""Evaluation examples: every example of one (task, language) split, in order, once.

Training streams shuffle, repeat and mix; evaluation must see each example exactly once, keep
labels and query ids beside the model inputs, and pad the last batch with rows that are marked
invalid so one compiled function serves every batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from mtl_jax.data.converters import FeatureConverter
from mtl_jax.data.tasks import TaskInfo, get_vocabulary, task_info
from mtl_jax.data.tfdata import numpy_iterator

VALID = "valid"


def load_examples(
    task: str,
    split: str,
    sequence_length: Mapping[str, int],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The preprocessed (tokenized, truncated) examples of ``task``/``split`` in file order."""
    info = task_info(task)
    if split not in info.splits:
        raise ValueError(f"task '{task}' has no split '{split}'; it has {list(info.splits)}")
    ds = seqio.get_mixture_or_task(task).get_dataset(
        dict(sequence_length), split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    if limit is not None:
        ds = ds.take(limit)
    return list(numpy_iterator(ds))


def label_candidates(info: TaskInfo, length: int) -> np.ndarray:
    """Token ids of every label name (EOS appended, 0-padded): ``[num_labels, length]``.

    These are the strings rank classification scores; a name longer than ``length`` is an error
    because truncating it could make two labels identical.
    """
    vocab = get_vocabulary(info.format)
    out = np.zeros((info.num_classes, length), np.int32)
    for i, name in enumerate(info.label_names):
        ids = list(vocab.encode(name)) + [vocab.eos_id]
        if len(ids) > length:
            raise ValueError(
                f"label '{name}' of task '{info.name}' is {len(ids)} tokens with EOS; raise "
                f"sequence_length['targets'] (now {length}) to at least {len(ids)}"
            )
        out[i, : len(ids)] = ids
    return out


def eval_batches(
    examples: Sequence[Mapping[str, Any]],
    converter: FeatureConverter,
    sequence_length: Mapping[str, int],
    batch_size: int,
    rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global batch of ``batch_size``; ``valid`` marks real rows.

    Global batch k holds examples ``[k*B, (k+1)*B)``; this process builds its rows
    ``[start, stop)`` of each (``partitioning.local_rows``: what its devices hold), which is how
    ``make_array_from_process_local_data`` lays them out. Default: the whole batch.
    """
    start, stop = rows if rows is not None else (0, batch_size)
    if not 0 <= start < stop <= batch_size:
        raise ValueError(f"rows {rows} are not a range inside an eval batch of {batch_size}")
    local = stop - start
    for first in range(0, max(len(examples), 1), batch_size):
        chunk = examples[first + start : first + stop]
        builder = converter.builder(local, sequence_length)
        for ex in chunk:
            if not builder.add(ex):
                raise ValueError("an evaluation example does not fit its own row")
        batch = builder.build()
        valid = np.zeros((local,), np.int32)
        valid[: len(chunk)] = 1
        batch[VALID] = valid
        yield batch

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
    return list(ds.as_numpy_iterator())


def process_shard(index: int, count: int) -> seqio.ShardInfo:
    """The data shard of process ``index`` of ``count`` (multi-host input pipelines)."""
    return seqio.ShardInfo(index=index, num_shards=count)


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
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global batch of ``batch_size``; ``valid`` marks real rows.

    Global batch k holds examples ``[k*B, (k+1)*B)``; process p contributes the contiguous rows
    ``[p*B/P, (p+1)*B/P)`` of it, which is how ``make_array_from_process_local_data`` lays them out.
    """
    if batch_size % process_count:
        raise ValueError(f"eval batch size {batch_size} not divisible by {process_count} processes")
    local = batch_size // process_count
    for start in range(0, max(len(examples), 1), batch_size):
        rows = examples[start + process_index * local : start + (process_index + 1) * local]
        builder = converter.builder(local, sequence_length)
        for ex in rows:
            if not builder.add(ex):
                raise ValueError("an evaluation example does not fit its own row")
        batch = builder.build()
        valid = np.zeros((local,), np.int32)
        valid[: len(rows)] = 1
        batch[VALID] = valid
        yield batch

"""Mixture batches read through seqio: the tokenizing (uncached) side of training data.

Examples come from each seqio Task's ``get_dataset(shuffle=False)`` on this process's shard, in
source order; the order, the task choices, packing and the exactly restorable position are
:mod:`mtl_jax.data.batching`'s, shared with the pre-tokenized cache
(:mod:`mtl_jax.data.cache_reader`), so both paths yield the same batches for the same seed.
Examples are pulled from tf.data in small padded batches and split again in NumPy (one iterator
call per example costs more than the whole conversion). A restore reopens one epoch of each task
and skips inside tf.data to the start of the window it was in (``Dataset.skip``): at most one
epoch of preprocessing per task, paid once per restore.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from mtl_jax.data.batching import (  # noqa: F401  (re-exported: the trainer's names)
    BATCH_MODES,
    SHUFFLE_WINDOW,
    STATE_VERSION,
    MixtureBatches,
    Shard,
    ShardedBatches,
    shard_blocks,
    sharded_batches,
    task_seed,
)
from mtl_jax.data.converters import FeatureConverter
from mtl_jax.data.rates import AnnealedRates
from mtl_jax.data.tfdata import numpy_iterator

log = logging.getLogger(__name__)


def get_task(name: str) -> seqio.Task:
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise KeyError(f"'{name}' is not a registered seqio Task or Mixture") from e
    if not isinstance(provider, seqio.Task):
        raise TypeError(
            f"'{name}' is a seqio Mixture; BatchIterator mixes Tasks itself "
            "(use mixture_iterator(...) for a Mixture)"
        )
    return provider


# Examples are pulled from tf.data in small padded batches (and split again in NumPy): one
# iterator call per example costs more than the whole conversion. Positions still count examples.
FETCH_EXAMPLES = 64
_LENGTH_PREFIX = "__length__/"


def _batched(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Padded batches of FETCH_EXAMPLES, with each variable-length feature's true lengths."""
    spec = ds.element_spec

    def add_lengths(ex):
        out = dict(ex)
        for k, s in spec.items():
            if s.shape.rank and s.shape.rank >= 1:
                out[_LENGTH_PREFIX + k] = tf.shape(ex[k])[0]
        return out

    return ds.map(add_lengths).padded_batch(FETCH_EXAMPLES)


def _unbatch(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    keys = [k for k in batch if not k.startswith(_LENGTH_PREFIX)]
    n = len(next(iter(batch.values())))
    out = []
    for i in range(n):
        ex = {}
        for k in keys:
            v = batch[k][i]
            lengths = batch.get(_LENGTH_PREFIX + k)
            ex[k] = v[: lengths[i]] if lengths is not None else v
        out.append(ex)
    return out


class SeqioSource:
    """A seqio Task's examples on one data shard, in source order (``shuffle=False``).

    Each epoch is one ``get_dataset(num_epochs=1)`` read whose preprocessors get the seed
    ``task_seed(seed, task, epoch)`` (only random preprocessors, e.g. span corruption, use it).
    Reading on from where the last read stopped continues the open pipeline; reading from
    anywhere else reopens the epoch and skips to ``start`` inside tf.data.
    """

    def __init__(self, name: str, split: str, sequence_length: Mapping[str, int], seed: int,
                 shard: Shard):
        self.name, self.split = name, split
        self._sequence_length = dict(sequence_length)
        self._seed = seed
        self._shard = seqio.ShardInfo(index=shard.index, num_shards=shard.num_shards)
        self._it: Iterator[Mapping[str, np.ndarray]] | None = None
        self._at: tuple[int, int] | None = None  # (epoch, next index) of the open pipeline
        self._fetched: collections.deque[dict[str, Any]] = collections.deque()
        _check_split(name, split)

    def _open(self, epoch: int, start: int) -> None:
        ds = get_task(self.name).get_dataset(
            sequence_length=self._sequence_length, split=self.split, shuffle=False,
            seed=task_seed(self._seed, self.name, epoch), shard_info=self._shard, num_epochs=1,
        )
        if start:
            ds = ds.skip(start)
        self._it = numpy_iterator(_batched(ds))
        self._fetched.clear()

    def read(self, epoch: int, start: int, count: int) -> list[dict[str, Any]]:
        if self._at != (epoch, start):
            self._open(epoch, start)
        out: list[dict[str, Any]] = []
        while len(out) < count:
            if not self._fetched:
                try:
                    self._fetched.extend(_unbatch(next(self._it)))
                except StopIteration:
                    break
            out.append(self._fetched.popleft())
        self._at = (epoch, start + len(out))
        return out


def _check_split(name: str, split: str) -> None:
    task = get_task(name)
    if split not in task.splits:
        raise KeyError(f"task '{name}' has no split '{split}'; it has {list(task.splits)}")


class BatchIterator(MixtureBatches):
    """:class:`~mtl_jax.data.batching.MixtureBatches` over seqio Tasks, named (see there for
    the arguments; ``shard_info`` is this process's data shard)."""

    def __init__(
        self,
        tasks: Sequence[str],
        rates: Sequence[float],
        split: str,
        sequence_length: Mapping[str, int],
        batch_size: int,
        converter: FeatureConverter,
        seed: int,
        shard_info: seqio.ShardInfo | Shard | None = None,
        batch_mode: str = "heterogeneous",
        shuffle: bool = True,
        repeat: bool | None = None,
        shuffle_window: int = SHUFFLE_WINDOW,
        rate_schedule: AnnealedRates | None = None,
    ):
        shard = Shard(0, 1) if shard_info is None else Shard(shard_info.index,
                                                             shard_info.num_shards)
        super().__init__(
            [SeqioSource(str(t), split, sequence_length, int(seed), shard) for t in tasks], rates,
            split, sequence_length, batch_size, converter, seed, shard=shard,
            batch_mode=batch_mode, shuffle=shuffle, repeat=repeat, shuffle_window=shuffle_window,
            rate_schedule=rate_schedule,
        )


def mixture_members(mixture_name: str, split: str) -> list[tuple[str, float]]:
    """(task, rate) of a registered seqio Mixture (or one Task) that have ``split`` and rate > 0."""
    provider = seqio.get_mixture_or_task(mixture_name)
    if isinstance(provider, seqio.Task):
        members: list[tuple[str, float]] = [(provider.name, 1.0)]
    else:
        members = [(t.name, float(provider.get_rate(t))) for t in provider.tasks]
    kept = [(n, r) for n, r in members if r > 0 and split in get_task(n).splits]
    left = sorted({n for n, _ in members} - {n for n, _ in kept})
    if left:
        log.info(
            "mixture %s split %s: leaving out %s (rate 0 or no such split)",
            mixture_name,
            split,
            left,
        )
    if not kept:
        raise ValueError(f"mixture '{mixture_name}' has no task with split '{split}' and rate > 0")
    return kept


def mixture_iterator(
    mixture_name: str,
    split: str,
    sequence_length: Mapping[str, int],
    batch_size: int,
    converter: FeatureConverter,
    seed: int,
    shard_info: seqio.ShardInfo | None = None,
    batch_mode: str = "heterogeneous",
    shuffle: bool = True,
    repeat: bool | None = None,
    shuffle_window: int = SHUFFLE_WINDOW,
    rate_schedule: AnnealedRates | None = None,
) -> BatchIterator:
    """A :class:`BatchIterator` over a registered seqio Mixture's tasks and rates (or one Task).

    Member tasks whose rate is 0 or that lack ``split`` are left out (with a log line).
    """
    kept = mixture_members(mixture_name, split)
    return BatchIterator(
        [n for n, _ in kept],
        [r for _, r in kept],
        split,
        sequence_length,
        batch_size,
        converter,
        seed,
        shard_info=shard_info,
        batch_mode=batch_mode,
        shuffle=shuffle,
        repeat=repeat,
        shuffle_window=shuffle_window,
        rate_schedule=rate_schedule,
    )


def sharded_mixture_iterator(
    mixture_name: str,
    sequence_length: Mapping[str, int],
    batch_size: int,
    rows: tuple[int, int],
    num_shards: int,
    converter: FeatureConverter,
    seed: int,
    batch_mode: str = "heterogeneous",
    rate_schedule: AnnealedRates | None = None,
) -> ShardedBatches:
    """The training batches of a mixture: rows ``[start, stop)`` of each global batch of
    ``batch_size``, built from data shards of ``batch_size / num_shards`` rows each."""
    return sharded_batches(
        lambda shard, rows_per_shard: mixture_iterator(
            mixture_name, "train", sequence_length, rows_per_shard, converter, seed,
            shard_info=shard, batch_mode=batch_mode, rate_schedule=rate_schedule),
        batch_size, rows, num_shards)

"""Mixture batches for training and evaluation, with an exactly restorable position.

Design (why it is exact):
- Each task has its own example stream from ``seqio`` ``Task.get_dataset`` with the process's
  ``ShardInfo``. A repeating stream is a sequence of blocks of whole epochs (about
  ``block_examples`` examples each), block b read with seed ``task_seed(seed, task, b)``. Seeds
  deliberately ignore the process index: seqio shards a non-file source by taking every n-th
  example of the (seeded, hence identical) source order, so equal seeds are what make the
  processes' shards disjoint. A stream's position is (block, examples taken from the block).
- Which task the next example comes from is a pure function of a counter, not of hidden RNG state:
  the task of the i-th example of the mixed stream (heterogeneous mode) is drawn from
  ``np.random.default_rng([seed, 1, process_index, block])`` for ``block = i // 4096``, and the
  task of the k-th batch (homogeneous mode) from ``default_rng([seed, 2, k // 4096])`` (no process
  index: every process picks the same task for batch k, so the GLOBAL batch is homogeneous).
- Packing peeks: an example that does not fit the batch any more stays at the head of its stream
  and is not counted, so the counters always describe exactly what was handed out.

The state is therefore a small JSON dict: batches drawn, mixed-stream position, each stream's
(block, position), plus the configuration it belongs to (checked on restore). ``set_state``
reopens each stream's block and skips its position inside tf.data (``Dataset.skip``): the cost is
O(examples taken from the current block) preprocessing work per task, so at most about
max(block_examples, one epoch) per task however long the run was, paid once per restore.
tf.data's own iterator checkpoints would restore faster but are binary blobs holding shuffle
buffers, tied to the TF version; this state is a few hundred bytes of JSON.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from mtl_jax.data.converters import FeatureConverter

log = logging.getLogger(__name__)

BATCH_MODES = ("heterogeneous", "homogeneous")
STATE_VERSION = 1
# Task choices are drawn in blocks; any block size gives a valid mixture, this one keeps the
# per-block RNG set-up cost negligible and the cache small.
CHOICE_BLOCK = 4096
# A repeating task stream restarts (new seed) after about this many examples, rounded up to whole
# epochs; it bounds what a restore must skip per task (see _TaskStream).
BLOCK_EXAMPLES = 100_000
# Distinguishes the two uses of the counter-based RNG (and leaves room for future ones).
_HETEROGENEOUS_STREAM, _HOMOGENEOUS_STREAM = 1, 2


def task_seed(seed: int, task: str, block: int = 0) -> int:
    """Seed of one block of a task's stream: stable across runs, Python versions and processes."""
    digest = hashlib.sha256(f"{seed}/{task}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def _get_task(name: str) -> seqio.Task:
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


class _TaskStream:
    """One task's examples as NumPy dicts, with a peekable head and an exact position.

    A repeating stream is a sequence of BLOCKS: block b is ``get_dataset(num_epochs=E,
    seed=task_seed(seed, task, b))`` with ``E`` epochs chosen once so that a block holds about
    ``block_examples`` examples (one epoch for large tasks, many for small ones). The position is
    (block, examples taken from it), so a restore skips at most one block, not the whole history.
    A task whose size seqio cannot tell (e.g. a streamed hub dataset) is one endless block.
    """

    def __init__(
        self,
        name: str,
        split: str,
        sequence_length: Mapping[str, int],
        seed: int,
        shuffle: bool,
        shard_info: seqio.ShardInfo,
        repeat: bool,
        block_examples: int,
    ):
        self.name, self.split = name, split
        self._sequence_length = dict(sequence_length)
        self._seed, self._shuffle, self._shard, self._repeat = seed, shuffle, shard_info, repeat
        self._block_examples = block_examples
        self.consumed = 0  # examples taken in total (informational)
        self.block = 0
        self.position = 0  # examples taken from the current block
        self.epochs_per_block: int | None = None  # None: endless block
        self._sized = False  # epochs_per_block decided (computed, or restored from a state)
        self._it: Iterator[dict[str, Any]] | None = None
        self._fetched: collections.deque[dict[str, Any]] = collections.deque()
        self._head: dict[str, Any] | None = None
        self._exhausted = False

    def state(self) -> dict[str, Any]:
        self._size()
        return {
            "consumed": self.consumed,
            "block": self.block,
            "position": self.position,
            "epochs_per_block": self.epochs_per_block,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Forget the open pipeline; the next peek reopens the saved block and skips into it."""
        self.consumed = int(state["consumed"])
        self.block = int(state["block"])
        self.position = int(state["position"])
        epb = state["epochs_per_block"]
        self.epochs_per_block = None if epb is None else int(epb)
        self._sized = True
        self._it, self._head, self._exhausted = None, None, False
        self._fetched.clear()

    def _task(self) -> seqio.Task:
        task = _get_task(self.name)
        if self.split not in task.splits:
            raise KeyError(
                f"task '{self.name}' has no split '{self.split}'; it has {list(task.splits)}"
            )
        return task

    def _size(self) -> None:
        if self._sized:
            return
        if not self._repeat:
            self.epochs_per_block = 1
        else:
            n = self._task().num_input_examples(self.split)
            if n:
                per_shard = max(1, n // self._shard.num_shards)
                self.epochs_per_block = max(1, -(-self._block_examples // per_shard))
            else:
                self.epochs_per_block = None
        self._sized = True

    def _open(self) -> None:
        task = self._task()
        self._size()
        ds = task.get_dataset(
            sequence_length=self._sequence_length,
            split=self.split,
            shuffle=self._shuffle,
            seed=task_seed(self._seed, self.name, self.block),
            shard_info=self._shard,
            num_epochs=self.epochs_per_block,
        )
        if self.position:
            ds = ds.skip(self.position)
        self._it = _batched(ds).as_numpy_iterator()
        self._fetched.clear()

    def _next_example(self) -> dict[str, Any]:
        if not self._fetched:
            self._fetched.extend(_unbatch(next(self._it)))
        return self._fetched.popleft()

    def peek(self) -> dict[str, Any] | None:
        """The next example without consuming it; None once a non-repeating stream ends."""
        while self._head is None and not self._exhausted:
            if self._it is None:
                self._open()
            try:
                self._head = self._next_example()
            except StopIteration:
                self._it = None
                if self._repeat and self.position > 0 and self.epochs_per_block is not None:
                    self.block, self.position = self.block + 1, 0  # next block
                    continue
                self._exhausted = True
                if self._repeat:
                    raise ValueError(
                        f"task '{self.name}' split '{self.split}' yields no examples on shard "
                        f"{self._shard.index} of {self._shard.num_shards}"
                    ) from None
        return self._head

    def pop(self) -> dict[str, Any]:
        ex = self.peek()
        if ex is None:
            raise RuntimeError(f"pop() past the end of task '{self.name}'")
        self._head = None
        self.consumed += 1
        self.position += 1
        return ex


class BatchIterator:
    """Batches (dicts of NumPy arrays, mtl_jax/features.py) from a rate-weighted set of Tasks.

    Args:
      tasks: seqio Task names; rates: their mixing rates (normalised here).
      split: the split every task reads. sequence_length: task feature lengths
        (``inputs``/``targets`` for t2t; ``inputs`` for classification).
      batch_size: rows per batch ON THIS PROCESS. converter: an ``EncDecConverter`` or
        ``ClassificationConverter`` (mtl_jax/data/converters.py).
      seed: one integer for everything (task streams, preprocessors, task choices).
      shard_info: this process's shard (default: the only one).
      batch_mode: "heterogeneous" (every example draws its task; batches mix tasks) or
        "homogeneous" (every batch draws one task, the same on every process).
      shuffle: shuffle each task's examples. repeat: loop over each task forever (default: only
        for the "train" split). Without repeat, iteration stops at the first exhausted task a
        draw needs, after a last, partly filled batch (its empty rows are all padding).
      block_examples: examples per block of a repeating task stream (bounds restore cost).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        rates: Sequence[float],
        split: str,
        sequence_length: Mapping[str, int],
        batch_size: int,
        converter: FeatureConverter,
        seed: int,
        shard_info: seqio.ShardInfo | None = None,
        batch_mode: str = "heterogeneous",
        shuffle: bool = True,
        repeat: bool | None = None,
        block_examples: int = BLOCK_EXAMPLES,
    ):
        tasks = [str(t) for t in tasks]
        if not tasks:
            raise ValueError("BatchIterator needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(
                f"tasks listed twice: {sorted({t for t in tasks if tasks.count(t) > 1})}"
            )
        rates_arr = np.asarray(rates, dtype=np.float64)
        if rates_arr.shape != (len(tasks),):
            raise ValueError(f"{len(tasks)} tasks but {rates_arr.size} rates")
        if not np.all(np.isfinite(rates_arr)) or np.any(rates_arr < 0) or rates_arr.sum() <= 0:
            raise ValueError(
                f"rates must be finite, >= 0 and not all 0; got {dict(zip(tasks, rates, strict=True))}"
            )
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got '{batch_mode}'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
        if not 0 <= shard_info.index < shard_info.num_shards:
            raise ValueError(f"invalid shard_info {shard_info}")
        self.tasks = tasks
        self.rates = (rates_arr / rates_arr.sum()).tolist()
        self._cdf = np.cumsum(self.rates)
        self.split = split
        self.sequence_length = {k: int(v) for k, v in sequence_length.items()}
        self.batch_size = int(batch_size)
        self.converter = converter
        self.seed = int(seed)
        self.shard_info = shard_info
        self.batch_mode = batch_mode
        self.shuffle = bool(shuffle)
        self.repeat = (split == "train") if repeat is None else bool(repeat)
        if block_examples < 1:
            raise ValueError(f"block_examples must be >= 1, got {block_examples}")
        self.block_examples = int(block_examples)
        self._streams = [
            _TaskStream(
                t,
                split,
                self.sequence_length,
                self.seed,
                self.shuffle,
                shard_info,
                self.repeat,
                self.block_examples,
            )
            for t in tasks
        ]
        self._batches = 0  # batches handed out
        self._position = 0  # examples handed out from the mixed stream (heterogeneous mode)
        self._done = False
        self._block: tuple[int, np.ndarray] | None = None

    # ----------------------------------------------------------------------- task choice

    def _task_index(self, counter: int) -> int:
        """Task of mixed-stream example ``counter`` (or of batch ``counter``, homogeneous)."""
        block, offset = divmod(counter, CHOICE_BLOCK)
        if self._block is None or self._block[0] != block:
            if self.batch_mode == "heterogeneous":
                key = [self.seed, _HETEROGENEOUS_STREAM, self.shard_info.index, block]
            else:
                key = [self.seed, _HOMOGENEOUS_STREAM, block]
            u = np.random.default_rng(key).random(CHOICE_BLOCK)
            choices = np.searchsorted(self._cdf, u * self._cdf[-1], side="right")
            self._block = (block, np.minimum(choices, len(self.tasks) - 1))
        return int(self._block[1][offset])

    # -------------------------------------------------------------------------- iteration

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        builder = self.converter.builder(self.batch_size, self.sequence_length)
        full_at = None if self.converter.pack else self.batch_size
        fixed_task = self._task_index(self._batches) if self.batch_mode == "homogeneous" else None
        while full_at is None or builder.num_examples < full_at:
            t = fixed_task if fixed_task is not None else self._task_index(self._position)
            stream = self._streams[t]
            ex = stream.peek()
            if ex is None:
                self._done = True
                break
            if not builder.add(ex):
                break  # does not fit: stays at the head of its stream for the next batch
            stream.pop()
            self._position += 1
        if builder.num_examples == 0:
            raise StopIteration
        self._batches += 1
        return builder.build()

    # ------------------------------------------------------------------------------ state

    def _config(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "rates": list(self.rates),
            "split": self.split,
            "sequence_length": dict(sorted(self.sequence_length.items())),
            "batch_size": self.batch_size,
            "batch_mode": self.batch_mode,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "repeat": self.repeat,
            "shard": [self.shard_info.index, self.shard_info.num_shards],
            "block_examples": self.block_examples,
            "converter": self.converter.describe(),
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position (one per process: it includes the shard)."""
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "batches": self._batches,
            "position": self._position,
            "streams": {s.name: s.state() for s in self._streams},
            "done": self._done,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the iterator that wrote ``state`` was.

        Raises ValueError when the state belongs to another configuration (naming the keys).
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"iterator state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        # Round-trip through JSON so a state that was saved and loaded compares like a fresh one.
        saved = json.loads(json.dumps(state["config"]))
        current = json.loads(json.dumps(self._config()))
        diff = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current[k]}
        if diff:
            lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"iterator state does not match this iterator's configuration: {lines}"
            )
        for s in self._streams:
            s.restore(state["streams"][s.name])
        self._batches = int(state["batches"])
        self._position = int(state["position"])
        self._done = bool(state.get("done", False))


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
) -> BatchIterator:
    """A :class:`BatchIterator` over a registered seqio Mixture's tasks and rates (or one Task).

    Member tasks whose rate is 0 or that lack ``split`` are left out (with a log line).
    """
    provider = seqio.get_mixture_or_task(mixture_name)
    if isinstance(provider, seqio.Task):
        members: list[tuple[str, float]] = [(provider.name, 1.0)]
    else:
        members = [(t.name, float(provider.get_rate(t))) for t in provider.tasks]
    kept = [(n, r) for n, r in members if r > 0 and split in _get_task(n).splits]
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
    )


class ShardedBatches:
    """This process's rows of every global batch, built from fixed *data shards*.

    The global batch of ``B`` rows is ``num_shards`` blocks of ``B / num_shards`` rows; block k
    always comes from data shard k (a :class:`BatchIterator` reading seqio shard k of K of every
    task). A process builds the blocks its devices hold. The global batches therefore depend on
    ``num_shards``, never on how many processes share the work: a 2-process run and a 1-process
    run with the same ``num_shards`` see the same batches, and a run resumed on another process
    count continues each shard's stream exactly (when both counts divide ``num_shards``).

    The state is one entry per shard this process builds (``{"shards": {k: state}}``); the
    trainer merges every process's entries into one list ordered by shard.
    """

    def __init__(self, shards: Mapping[int, BatchIterator], num_shards: int) -> None:
        if not shards:
            raise ValueError("ShardedBatches needs at least one shard")
        bad = [k for k in shards if not 0 <= k < num_shards]
        if bad:
            raise ValueError(f"shard indices {bad} outside 0..{num_shards - 1}")
        self.num_shards = int(num_shards)
        self._shards = dict(sorted(shards.items()))

    @property
    def shard_indices(self) -> list[int]:
        return list(self._shards)

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._shards.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {"num_shards": self.num_shards,
                "shards": {str(k): it.get_state() for k, it in self._shards.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore this process's shards from a state holding (at least) all of them."""
        saved = {int(k): v for k, v in state["shards"].items()}
        if int(state["num_shards"]) != self.num_shards:
            raise ValueError(
                f"the checkpoint's data has {state['num_shards']} shards, this run "
                f"{self.num_shards}")
        missing = [k for k in self._shards if k not in saved]
        if missing:
            raise ValueError(f"the checkpoint's data state lacks shards {missing}")
        for k, it in self._shards.items():
            it.set_state(saved[k])


def shard_blocks(batch_size: int, rows: tuple[int, int], num_shards: int) -> range:
    """The data shards whose blocks make rows ``[start, stop)`` of a global batch; ValueError
    when the batch does not split into whole blocks for this process."""
    start, stop = rows
    if num_shards < 1 or batch_size % num_shards:
        raise ValueError(
            f"the global batch size {batch_size} must be divisible by the number of data shards "
            f"({num_shards})")
    per_shard = batch_size // num_shards
    if start % per_shard or stop % per_shard:
        raise ValueError(
            f"this process holds rows [{start}, {stop}) of each batch of {batch_size}; with "
            f"{num_shards} data shards of {per_shard} rows a process must hold whole shards: use a "
            "number of data shards that is a multiple of the number of processes")
    return range(start // per_shard, stop // per_shard)


def sharded_mixture_iterator(
    mixture_name: str,
    sequence_length: Mapping[str, int],
    batch_size: int,
    rows: tuple[int, int],
    num_shards: int,
    converter: FeatureConverter,
    seed: int,
    batch_mode: str = "heterogeneous",
) -> ShardedBatches:
    """The training batches of a mixture: rows ``[start, stop)`` of each global batch of
    ``batch_size``, built from data shards of ``batch_size / num_shards`` rows each."""
    blocks = shard_blocks(batch_size, rows, num_shards)
    per_shard = batch_size // num_shards
    shards = {
        k: mixture_iterator(mixture_name, "train", sequence_length, per_shard, converter, seed,
                            shard_info=seqio.ShardInfo(index=k, num_shards=num_shards),
                            batch_mode=batch_mode)
        for k in blocks
    }
    return ShardedBatches(shards, num_shards)

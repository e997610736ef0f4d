"""Mixture batches from per-task example sources, with an exactly restorable position (no TF).

This module holds everything about the ORDER of training data, so that a run reads the same
batches whether its examples come from seqio (tokenized on the fly, :mod:`mtl_jax.data.iterator`)
or from a pre-tokenized cache (:mod:`mtl_jax.data.cache_reader`); it imports neither TensorFlow
nor seqio, so an accelerator host without them can train from a cache.

Design (why it is exact, and why the cached and uncached paths agree by construction):
- An :class:`ExampleSource` yields this process's data shard of one task's tokenized examples in
  SOURCE ORDER, epoch after epoch: shard k of n is every n-th example of the split, starting
  at k (what seqio does when it shards a one-file source, and what the cache does with its
  arrays). A source only reads; it never shuffles.
- The shuffle is ours: epoch e of a task is its shard's source order cut into windows of
  ``shuffle_window`` examples, each window permuted by
  ``default_rng([task_seed(seed, task, e), window])``. A window of 10k examples mixes more than
  seqio's default shuffle buffer (1,000) did, the uncached path streams with memory bounded by
  one window, and a restore re-reads from the start of one window (cost <= one window of
  skipping inside an epoch, whatever the run's length). Seeds ignore the process index: shards
  are disjoint because they hold different examples, not because they are shuffled differently.
- Which task the next example comes from is a pure function of a counter, not of hidden RNG
  state: the task of the i-th example of the mixed stream (heterogeneous mode) is drawn from
  ``np.random.default_rng([seed, 1, shard index, i // 4096])``, and the task of the k-th batch
  (homogeneous mode) from ``default_rng([seed, 2, k // 4096])`` (no shard index: every shard
  picks the same task for batch k, so the GLOBAL batch is homogeneous). Round-robin mode draws
  nothing: batch k holds task ``k mod T`` of the tasks with a rate > 0, in the sources' order
  (again the same on every shard).
- A rate schedule (annealed sampling, :class:`mtl_jax.data.rates.AnnealedRates`) changes the
  rates with the batch counter k. The draws stay the same counter-keyed uniforms; batch k maps
  them through the cumulative rates of batch k (every example of batch k in heterogeneous mode,
  the batch's one draw in homogeneous mode). Still a pure function of the counters.
- Pool mode ("uncertainty", CA-MTL's MT-Uncertainty sampling, :mod:`mtl_jax.training.uncertainty`):
  every batch is a candidate POOL of ``batch_size`` examples from EVERY task, task-major
  (``len(tasks) * batch_size`` rows); no draw is involved, so each task's stream position is the
  whole state. The train step picks ``batch_size`` rows of each shard's pool.
- Packing peeks: an example that does not fit the batch any more stays at the head of its stream
  and is not counted, so the counters always describe exactly what was handed out.

The state is a small JSON dict (batches drawn, mixed-stream position, each task's (epoch,
position)) plus the configuration it belongs to, checked on restore. It does not say where the
examples came from: a run may switch between the cache and seqio and still resume exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from mtl_jax.data.converters import FeatureConverter
from mtl_jax.data.rates import AnnealedRates

BATCH_MODES = ("heterogeneous", "homogeneous", "round_robin", "uncertainty")
# 2: the order became ours (windowed permutations of the source order); version-1 states came
# from tf.data shuffles and cannot be continued exactly.
STATE_VERSION = 2
# Task choices are drawn in blocks; any block size gives a valid mixture, this one keeps the
# per-block RNG set-up cost negligible.
CHOICE_BLOCK = 4096
# Examples permuted together (see the module docstring): bounds memory and restore cost.
SHUFFLE_WINDOW = 10_000
# Distinguishes the two uses of the counter-based RNG (and leaves room for future ones).
_HETEROGENEOUS_STREAM, _HOMOGENEOUS_STREAM = 1, 2


class Shard(NamedTuple):
    """One data shard of n (``seqio.ShardInfo`` has the same two fields and works too)."""

    index: int
    num_shards: int


def task_seed(seed: int, task: str, epoch: int = 0) -> int:
    """Seed of one epoch of a task's stream: stable across runs, Python versions and processes."""
    digest = hashlib.sha256(f"{seed}/{task}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def window_order(seed: int, task: str, epoch: int, window: int, size: int) -> np.ndarray:
    """The order in which a window of ``size`` examples is handed out (a permutation)."""
    return np.random.default_rng([task_seed(seed, task, epoch), window]).permutation(size)


def shard_indices(num_examples: int, shard: Shard) -> np.ndarray:
    """Source-order indices of a shard's examples: every n-th, from the shard's index."""
    return np.arange(shard.index, num_examples, shard.num_shards)


class ExampleSource(Protocol):
    """One task's examples on one data shard, in source order (see the module docstring)."""

    name: str

    def read(self, epoch: int, start: int, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` examples of ``epoch`` from index ``start`` of the shard's source
        order; fewer (none) at the end of the epoch."""


class _TaskStream:
    """One task's examples as NumPy dicts, with a peekable head and an exact position."""

    def __init__(self, source: ExampleSource, seed: int, shuffle: bool, repeat: bool,
                 window: int, shard: Shard):
        self.source, self.name = source, source.name
        self._seed, self._shuffle, self._repeat, self._window = seed, shuffle, repeat, window
        self._shard = shard
        self.consumed = 0  # examples taken in total (informational)
        self.epoch = 0
        self.position = 0  # examples taken from the current epoch
        self._loaded: tuple[int, int, list[dict[str, Any]]] | None = None  # (epoch, window, exs)
        self._exhausted = False

    def state(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "epoch": self.epoch, "position": self.position}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.consumed = int(state["consumed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._loaded, self._exhausted = None, False

    def _window_examples(self) -> list[dict[str, Any]]:
        w = self.position // self._window
        if self._loaded is None or self._loaded[:2] != (self.epoch, w):
            examples = self.source.read(self.epoch, w * self._window, self._window)
            if self._shuffle and len(examples) > 1:
                order = window_order(self._seed, self.name, self.epoch, w, len(examples))
                examples = [examples[i] for i in order]
            self._loaded = (self.epoch, w, examples)
        return self._loaded[2]

    def peek(self) -> dict[str, Any] | None:
        """The next example without consuming it; None once a non-repeating stream ends."""
        while not self._exhausted:
            examples = self._window_examples()
            i = self.position % self._window
            if i < len(examples):
                return examples[i]
            if self.position == 0:  # an empty epoch
                self._exhausted = True
                if self._repeat:
                    raise ValueError(
                        f"task '{self.name}' yields no examples on shard {self._shard.index} of "
                        f"{self._shard.num_shards}")
            elif self._repeat:
                self.epoch, self.position = self.epoch + 1, 0
            else:
                self._exhausted = True
        return None

    def pop(self) -> dict[str, Any]:
        ex = self.peek()
        if ex is None:
            raise RuntimeError(f"pop() past the end of task '{self.name}'")
        self.consumed += 1
        self.position += 1
        return ex


class MixtureBatches:
    """Batches (dicts of NumPy arrays, mtl_jax/features.py) from a rate-weighted set of sources.

    Args:
      sources: one :class:`ExampleSource` per task (this shard's examples); rates: their mixing
        rates (normalised here). split: the split the sources read (recorded in the state).
      sequence_length: task feature lengths (``inputs``/``targets`` for t2t; ``inputs`` for
        classification). batch_size: rows per batch of this shard. converter: an
        ``EncDecConverter`` or ``ClassificationConverter`` (mtl_jax/data/converters.py).
      seed: one integer for everything (orders, task choices). shard: this data shard.
      batch_mode: "heterogeneous" (every example draws its task; batches mix tasks) or
        "homogeneous" (every batch draws one task, the same on every shard), "round_robin"
        (batch k holds the (k mod T)-th task of those with a rate > 0, in the order given; the
        rates only decide which tasks take part) or "uncertainty" (every batch is a pool of
        ``batch_size`` examples of every task, task-major; not packed).
      shuffle: permute each task's examples (windowed). repeat: loop over each task forever
        (default: only for the "train" split). Without repeat, iteration stops at the first
        exhausted task a draw needs, after a last, partly filled batch.
      shuffle_window: examples permuted together.
      rate_schedule: rates that change with the batch counter (annealed sampling), in place of
        ``rates`` for the tasks whose rate is > 0 (a task at rate 0 stays out); its sizes are in
        the order of ``sources``. Not with "round_robin".
    """

    def __init__(
        self,
        sources: Sequence[ExampleSource],
        rates: Sequence[float],
        split: str,
        sequence_length: Mapping[str, int],
        batch_size: int,
        converter: FeatureConverter,
        seed: int,
        shard: Shard | None = None,
        batch_mode: str = "heterogeneous",
        shuffle: bool = True,
        repeat: bool | None = None,
        shuffle_window: int = SHUFFLE_WINDOW,
        rate_schedule: AnnealedRates | None = None,
    ):
        tasks = [s.name for s in sources]
        if not tasks:
            raise ValueError("a batch iterator needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(
                f"tasks listed twice: {sorted({t for t in tasks if tasks.count(t) > 1})}")
        rates_arr = np.asarray(rates, dtype=np.float64)
        if rates_arr.shape != (len(tasks),):
            raise ValueError(f"{len(tasks)} tasks but {rates_arr.size} rates")
        if not np.all(np.isfinite(rates_arr)) or np.any(rates_arr < 0) or rates_arr.sum() <= 0:
            raise ValueError(
                f"rates must be finite, >= 0 and not all 0; got {dict(zip(tasks, rates, strict=True))}"
            )
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got '{batch_mode}'")
        if rate_schedule is not None:
            if batch_mode in ("round_robin", "uncertainty"):
                raise ValueError(f"batch_mode {batch_mode!r} does not draw tasks by rate: it "
                                 "takes no rate schedule")
            if len(rate_schedule.sizes) != len(tasks):
                raise ValueError(f"{len(tasks)} tasks but the rate schedule has "
                                 f"{len(rate_schedule.sizes)} sizes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_mode == "uncertainty" and converter.pack:
            raise ValueError("batch_mode 'uncertainty' selects examples, so it cannot pack them")
        shard = shard if shard is not None else Shard(0, 1)
        shard = Shard(int(shard.index), int(shard.num_shards))
        if not 0 <= shard.index < shard.num_shards:
            raise ValueError(f"invalid shard {shard}")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        self.tasks = tasks
        self.rates = (rates_arr / rates_arr.sum()).tolist()
        self._cdf = np.cumsum(self.rates)
        self._cycle = [i for i, r in enumerate(self.rates) if r > 0]  # round-robin order
        self.rate_schedule = rate_schedule
        self._scheduled: tuple[int, list[float]] | None = None  # (batch, its cumulative rates)
        if rate_schedule is not None:
            for step in (0, rate_schedule.num_steps - 1):
                if self._scheduled_cdf(step)[-1] <= 0:
                    raise ValueError(
                        f"the rate schedule gives every task with a rate > 0 rate 0 at batch "
                        f"{step} (sizes {dict(zip(tasks, rate_schedule.sizes, strict=True))})")
        self.split = split
        self.sequence_length = {k: int(v) for k, v in sequence_length.items()}
        self.batch_size = int(batch_size)
        self.converter = converter
        self.seed = int(seed)
        self.shard_info = shard
        self.batch_mode = batch_mode
        self.shuffle = bool(shuffle)
        self.repeat = (split == "train") if repeat is None else bool(repeat)
        self.shuffle_window = int(shuffle_window)
        self._streams = [_TaskStream(s, self.seed, self.shuffle, self.repeat, self.shuffle_window,
                                     shard) for s in sources]
        self._batches = 0  # batches handed out
        self._position = 0  # examples handed out from the mixed stream (heterogeneous mode)
        self._done = False
        self._block: tuple[int, np.ndarray] | None = None  # (block, its uniform draws)
        self._choices: np.ndarray | None = None  # the block's tasks at the mixture's rates

    def _scheduled_cdf(self, batch: int) -> list[float]:
        """Cumulative (unnormalised) rates of batch ``batch`` under the rate schedule."""
        if self._scheduled is None or self._scheduled[0] != batch:
            weights = np.asarray(self.rate_schedule.rates(batch)) * (np.asarray(self.rates) > 0)
            self._scheduled = (batch, np.cumsum(weights).tolist())
        return self._scheduled[1]

    def _task_index(self, counter: int, batch: int | None = None) -> int:
        """Task of mixed-stream example ``counter`` (or of batch ``counter``, homogeneous), drawn
        with the rates of batch ``batch`` (default: the batch being built)."""
        batch = self._batches if batch is None else batch
        block, offset = divmod(counter, CHOICE_BLOCK)
        if self._block is None or self._block[0] != block:
            if self.batch_mode == "heterogeneous":
                key = [self.seed, _HETEROGENEOUS_STREAM, self.shard_info.index, block]
            else:
                key = [self.seed, _HOMOGENEOUS_STREAM, block]
            self._block = (block, np.random.default_rng(key).random(CHOICE_BLOCK))
            self._choices = None
        if self.rate_schedule is not None:
            # The rates change every batch: place only this example's uniform (bisect_right on
            # the same float64 values is searchsorted(side="right")), not the whole block's.
            cdf = self._scheduled_cdf(batch)
            u = float(self._block[1][offset]) * cdf[-1]
            return min(bisect.bisect_right(cdf, u), len(self.tasks) - 1)
        if self._choices is None:  # one searchsorted per block at the mixture's fixed rates
            choices = np.searchsorted(self._cdf, self._block[1] * self._cdf[-1], side="right")
            self._choices = np.minimum(choices, len(self.tasks) - 1)
        return int(self._choices[offset])

    def _batch_task(self, batch: int) -> int | None:
        """The one task of batch ``batch`` (None in heterogeneous mode: each example draws)."""
        if self.batch_mode == "round_robin":
            return self._cycle[batch % len(self._cycle)]
        if self.batch_mode == "homogeneous":
            return self._task_index(batch, batch)
        return None

    def __iter__(self) -> MixtureBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        if self.batch_mode == "uncertainty":
            return self._next_pool()
        builder = self.converter.builder(self.batch_size, self.sequence_length)
        full_at = None if self.converter.pack else self.batch_size
        fixed_task = self._batch_task(self._batches)
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

    def _next_pool(self) -> dict[str, np.ndarray]:
        """``batch_size`` examples of every task in task order (a candidate pool); a task that
        ends (no repeat) ends the iteration after this last, partly filled pool."""
        builder = self.converter.builder(self.batch_size * len(self.tasks), self.sequence_length)
        for stream in self._streams:
            for _ in range(self.batch_size):
                if stream.peek() is None:
                    self._done = True
                    break
                builder.add(stream.pop())
        if builder.num_examples == 0:
            raise StopIteration
        self._batches += 1
        return builder.build()

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
            "shuffle_window": self.shuffle_window,
            "converter": self.converter.describe(),
            "rate_schedule": (None if self.rate_schedule is None
                              else self.rate_schedule.describe()),
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position (one per shard: it includes the shard)."""
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

        Raises ValueError when the state belongs to another configuration (naming the keys) or
        to an older data order.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"iterator state version {state.get('version')!r}, expected {STATE_VERSION}: "
                "states of version 1 were written before the data order moved out of tf.data "
                "and cannot be continued exactly; restart the run (or resume it with the mtl_jax "
                "version that wrote it)")
        # Round-trip through JSON so a state that was saved and loaded compares like a fresh one.
        saved = json.loads(json.dumps(state["config"]))
        current = json.loads(json.dumps(self._config()))
        diff = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current[k]}
        if diff:
            lines = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"iterator state does not match this iterator's configuration: {lines}")
        for s in self._streams:
            s.restore(state["streams"][s.name])
        self._batches = int(state["batches"])
        self._position = int(state["position"])
        self._done = bool(state.get("done", False))


class ShardedBatches:
    """This process's rows of every global batch, built from fixed *data shards*.

    The global batch of ``B`` rows is ``num_shards`` blocks of ``B / num_shards`` rows; block k
    always comes from data shard k (a :class:`MixtureBatches` reading shard k of K of every
    task). A process builds the blocks its devices hold. The global batches therefore depend on
    ``num_shards``, never on how many processes share the work: a 2-process run and a 1-process
    run with the same ``num_shards`` see the same batches, and a run resumed on another process
    count continues each shard's stream exactly (when both counts divide ``num_shards``).

    The state is one entry per shard this process builds (``{"shards": {k: state}}``); the
    trainer merges every process's entries into one list ordered by shard.
    """

    def __init__(self, shards: Mapping[int, MixtureBatches], num_shards: int) -> None:
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


def sharded_batches(
    make: Callable[[Shard, int], MixtureBatches],
    batch_size: int,
    rows: tuple[int, int],
    num_shards: int,
) -> ShardedBatches:
    """Rows ``[start, stop)`` of each global batch of ``batch_size``, from data shards of
    ``batch_size / num_shards`` rows each; ``make(shard, rows_per_shard)`` builds one shard."""
    blocks = shard_blocks(batch_size, rows, num_shards)
    per_shard = batch_size // num_shards
    return ShardedBatches({k: make(Shard(k, num_shards), per_shard) for k in blocks}, num_shards)

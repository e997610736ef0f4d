"""Sampling schedules of the data order: round-robin batches and annealed rates (docs/data.md).

Fast tests use in-memory example sources (no TF); one test per mode compares the seqio and the
cached paths on two data shards.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import seqio

from mtl_jax import features as F
from mtl_jax.data.batching import MixtureBatches, Shard
from mtl_jax.data.cache_reader import open_cache, sharded_cache_iterator
from mtl_jax.data.cache_writer import write_cache
from mtl_jax.data.converters import EncDecConverter
from mtl_jax.data.iterator import sharded_mixture_iterator
from test_cache import VOCAB, _same, _toy_fn

LENGTHS = {"inputs": 16, "targets": 8}
# name -> examples; sizes differ so the tasks roll over epochs at different times.
SIZES = {"a": 130, "b": 70, "c": 41, "d": 9}
HEADS = tuple(SIZES)
TOY = {"test_sched_a": ("a", 130), "test_sched_b": ("b", 70), "test_sched_c": ("c", 41)}
MIX = "test_sched_mix"


class ListSource:
    """A task's examples held in memory, sharded like the real sources (every n-th example)."""

    def __init__(self, name: str, n: int, shard: Shard):
        self.name = name
        self._examples = [
            {"inputs": np.full(1 + i % 11, 10 + i, np.int32),
             "targets": np.full(1 + i % 3, 10 + i, np.int32), "task": name, "idx": i}
            for i in range(shard.index, n, shard.num_shards)]

    def read(self, epoch: int, start: int, count: int) -> list[dict[str, Any]]:
        del epoch
        return self._examples[start:start + count]


def _batches(rates, batch_mode, shard=Shard(0, 1), pack=False, batch_size=6, seed=7, **kw):
    conv = EncDecConverter(HEADS, pack=pack, passthrough=() if pack else ("idx",))
    return MixtureBatches([ListSource(t, n, shard) for t, n in SIZES.items()], rates, "train",
                          LENGTHS, batch_size, conv, seed, shard=shard, batch_mode=batch_mode,
                          **kw)


def _batch_tasks(batch: dict[str, np.ndarray], pack: bool) -> set[int]:
    if pack:
        return set(batch[F.DECODER_TASK_IDS][batch[F.DECODER_SEGMENT_IDS] > 0].tolist())
    return set(batch[F.TASK_ID].tolist())


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """Three seqio tasks (test_cache's toy data under other names), a mixture and its cache."""
    features = {"inputs": seqio.Feature(VOCAB, add_eos=False),
                "targets": seqio.Feature(VOCAB, add_eos=False)}
    for name, (head, n) in TOY.items():
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
            _toy_fn(head, n), splits=["train"], num_input_examples={"train": n}),
            output_features=features, preprocessors=[])
    seqio.MixtureRegistry.add(MIX, [(t, 1.0) for t in TOY])
    root = tmp_path_factory.mktemp("cache") / "toy"
    write_cache(MIX, root, LENGTHS, splits=("train",))
    yield root
    seqio.MixtureRegistry.remove(MIX)
    for name in TOY:
        seqio.TaskRegistry.remove(name)


# --- round-robin ---------------------------------------------------------------------------


@pytest.mark.parametrize("pack", [False, True])
def test_round_robin_cycles_the_tasks_in_order_on_every_shard(pack):
    """Batch k holds only task k mod T of the tasks with a rate > 0 (mixture order), on each of
    two shards; rates do not weight anything (a rate-0 task is skipped)."""
    rates = [0.5, 0.0, 0.1, 0.4]  # b is out: the cycle is a, c, d
    cycle = [HEADS.index(t) for t in ("a", "c", "d")]
    shards = [_batches(rates, "round_robin", Shard(k, 2), pack=pack) for k in range(2)]
    for k in range(40):  # past several epochs of every task
        for s, it in enumerate(shards):
            assert _batch_tasks(next(it), pack) == {cycle[k % 3]}, (k, s)
    consumed = {t: s["consumed"] for t, s in shards[0].get_state()["streams"].items()}
    assert consumed["b"] == 0 and consumed["d"] > SIZES["d"], consumed


def test_round_robin_resumes_exactly_mid_cycle():
    it = _batches([1, 1, 1, 1], "round_robin", pack=True, shuffle_window=16)
    for _ in range(22):  # 22 = 5 cycles + 2: the next batch is task c
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(9)]
    resumed = _batches([1, 1, 1, 1], "round_robin", pack=True, shuffle_window=16)
    resumed.set_state(state)
    for i, b in enumerate(expected):
        _same(next(resumed), b, f"resumed batch {i}")
    assert _batch_tasks(expected[0], True) == {HEADS.index("c")}
    other = _batches([1, 1, 1, 1], "homogeneous", pack=True, shuffle_window=16)
    with pytest.raises(ValueError, match="batch_mode: saved 'round_robin', now 'homogeneous'"):
        other.set_state(state)


# --- both data paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["round_robin"])
def test_seqio_and_cache_paths_give_the_same_global_batches(toy_cache, mode):
    """Two data shards of 3 rows each make the global batch of 6; the seqio and cached paths
    agree batch for batch, across epochs, and a round-robin global batch holds one task."""
    conv = EncDecConverter(HEADS, passthrough=("idx",))
    cache = open_cache(toy_cache, MIX, LENGTHS)
    paths = [sharded_mixture_iterator(MIX, LENGTHS, 6, (0, 6), 2, conv, 5, batch_mode=mode),
             sharded_cache_iterator(cache, LENGTHS, 6, (0, 6), 2, conv, 5, batch_mode=mode)]
    for k in range(50):
        a, b = next(paths[0]), next(paths[1])
        _same(a, b, f"batch {k}")
        if mode == "round_robin":
            assert set(a[F.TASK_ID].tolist()) == {k % 3}, k

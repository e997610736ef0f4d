"""Sampling schedules of the data order: round-robin batches and annealed rates (docs/data.md).

Most tests use in-memory example sources; one test per mode compares the seqio and the
cached paths on two data shards.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import scipy.stats
from test_cache import _same, toy_mixture_cache

from mtl_jax import features as F
from mtl_jax.data.batching import MixtureBatches, Shard
from mtl_jax.data.cache_reader import open_cache, sharded_cache_iterator
from mtl_jax.data.converters import EncDecConverter
from mtl_jax.data.iterator import sharded_mixture_iterator
from mtl_jax.data.rates import AnnealedRates, rate_schedule
from mtl_jax.experiment import ConfigError, training_rate_schedule
from mtl_jax.run_config import TrainConfig

LENGTHS = {"inputs": 16, "targets": 8}
# name -> examples; sizes differ so the tasks roll over epochs at different times.
SIZES = {"a": 130, "b": 70, "c": 41, "d": 9}
HEADS = tuple(SIZES)
TOY = {"test_sched_a": ("a", 130), "test_sched_b": ("b", 70), "test_sched_c": ("c", 41)}
MIX = "test_sched_mix"
SIGNIFICANCE = 1e-4  # the frequency tests fail a correct sampler with probability 1e-4
# Schedule sizes far apart, so that α = 1 and α = 0.5 give clearly different rates.
SCHEDULE_SIZES = (4000, 1000, 250, 60)


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


def _batches(rates, batch_mode, shard=None, pack=False, batch_size=6, seed=7, **kw):
    shard = shard or Shard(0, 1)
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
    yield from toy_mixture_cache(tmp_path_factory, TOY, MIX, [(t, 1.0) for t in TOY])


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


# --- annealed sampling ---------------------------------------------------------------------


def test_alpha_and_rates_follow_the_formula():
    """α(k) = α0 + (α1 - α0) min(k / (N - 1), 1); rates(k) = n^α(k) / Σ n^α(k)."""
    sched = rate_schedule({"name": "annealed", "alpha_start": 1.0, "alpha_end": 0.2},
                          SCHEDULE_SIZES, num_steps=11)
    n = np.asarray(SCHEDULE_SIZES, np.float64)
    for k, want in [(0, 1.0), (5, 0.6), (10, 0.2), (11, 0.2), (1000, 0.2)]:
        assert sched.alpha(k) == pytest.approx(want, abs=1e-12), k
        np.testing.assert_allclose(sched.rates(k), n**want / (n**want).sum(), rtol=1e-12)
    default = AnnealedRates(SCHEDULE_SIZES, 101)
    assert (default.alpha(0), default.alpha(50), default.alpha(100)) == (1.0, 0.75, 0.5)
    flat = AnnealedRates((5, 0, 20), 3, alpha_start=0.0, alpha_end=0.0)
    assert flat.rates(1) == [0.5, 0.0, 0.5]  # α = 0: every non-empty task alike
    with pytest.raises(ValueError, match="unknown rate schedule 'cosine'"):
        rate_schedule({"name": "cosine"}, SCHEDULE_SIZES, 10)
    with pytest.raises(TypeError, match="'annealed'.*alpha"):
        rate_schedule({"name": "annealed", "alpha": 0.5}, SCHEDULE_SIZES, 10)


def _annealed(num_steps, batch_mode="heterogeneous", batch_size=64, **kw):
    sched = AnnealedRates(SCHEDULE_SIZES, num_steps)
    return _batches([1, 1, 1, 1], batch_mode, batch_size=batch_size, rate_schedule=sched, **kw)


def _chi2(counts, rates) -> float:
    expected = counts.sum() * np.asarray(rates) / np.sum(rates)
    return float(((counts - expected) ** 2 / expected).sum())


def _task_counts(batches) -> np.ndarray:
    return np.bincount(np.concatenate([b[F.TASK_ID] for b in batches]), minlength=len(HEADS))


def test_annealed_task_frequencies_match_the_rates_at_start_end_and_over_the_run():
    """Heterogeneous batches of 64: the tasks drawn match n^α at α = 1 (the start of a long run),
    at α = 0.5 (past the end of a short one) and, over a whole run, Σ_k rates(k)."""
    n = np.asarray(SCHEDULE_SIZES, np.float64)
    bound = scipy.stats.chi2.ppf(1 - SIGNIFICANCE, df=len(n) - 1)
    long_run = _annealed(10**6, seed=8)
    start = _task_counts([next(long_run) for _ in range(100)])
    assert _chi2(start, n) < bound, start
    assert _chi2(start, n**0.5) > 10 * bound, start  # the test tells the two apart

    short = _annealed(20)
    end = _task_counts([b for k, b in enumerate(next(short) for _ in range(120)) if k >= 19])
    assert _chi2(end, n**0.5) < bound, end
    assert _chi2(end, n) > 10 * bound, end

    sched, run = AnnealedRates(SCHEDULE_SIZES, 100), _annealed(100, seed=9)
    whole = _task_counts([next(run) for _ in range(100)])
    assert _chi2(whole, np.sum([sched.rates(k) for k in range(100)], axis=0)) < bound, whole


def test_annealed_draws_equal_the_block_searchsorted_of_their_batch_rates():
    """Each example's task under a schedule is the uniform of its counter, in its choice block,
    placed in the cumulative rates of the batch being built (drawn per example, not per block)."""
    from mtl_jax.data import batching

    rates = [1.0, 1.0, 0.0, 1.0]  # a zero rate stays zero under the schedule
    sched = AnnealedRates(SCHEDULE_SIZES, 50)
    it = _batches(rates, "heterogeneous", seed=5, rate_schedule=sched)
    rng = np.random.default_rng(0)
    for counter, batch in zip(rng.integers(0, 3 * batching.CHOICE_BLOCK, 300).tolist(),
                              rng.integers(0, 60, 300).tolist(), strict=True):
        block, offset = divmod(counter, batching.CHOICE_BLOCK)
        u = np.random.default_rng([5, batching._HETEROGENEOUS_STREAM, 0, block]).random(
            batching.CHOICE_BLOCK)
        cdf = np.cumsum(np.asarray(sched.rates(batch)) * (np.asarray(rates) > 0))
        want = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")[offset]), 3)
        assert it._task_index(counter, batch) == want
        assert want != 2


def test_annealed_homogeneous_batches_hold_one_task_the_same_on_every_shard():
    """Each batch draws one task, the same on both shards, at its batch's rates: past the end of
    the schedule the batches' tasks match n^0.5."""
    shards = [_annealed(30, "homogeneous", batch_size=2, shard=Shard(k, 2)) for k in range(2)]
    drawn = []
    for k in range(630):
        tasks = [_batch_tasks(next(it), False) for it in shards]
        assert len(tasks[0]) == 1 and tasks[0] == tasks[1], (k, tasks)
        if k >= 29:
            drawn.append(tasks[0].pop())
    counts, n = np.bincount(drawn, minlength=len(HEADS)), np.asarray(SCHEDULE_SIZES, np.float64)
    bound = scipy.stats.chi2.ppf(1 - SIGNIFICANCE, df=len(n) - 1)
    assert _chi2(counts, n**0.5) < bound < _chi2(counts, n), counts


@pytest.mark.parametrize("batch_mode", ["heterogeneous", "homogeneous"])
def test_annealed_resume_is_exact_and_another_schedule_is_refused(batch_mode):
    def make(**kw):
        return _annealed(40, batch_mode, batch_size=6, pack=True, shuffle_window=16, **kw)

    it = make()
    for _ in range(17):  # mid-run: α has moved but not reached its end
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(30)]  # across the end of the schedule
    resumed = make()
    resumed.set_state(state)
    for i, b in enumerate(expected):
        _same(next(resumed), b, f"resumed batch {i}")
    longer = _annealed(80, batch_mode, batch_size=6, pack=True, shuffle_window=16)
    with pytest.raises(ValueError, match="rate_schedule: saved .*'num_steps': 40.*'num_steps': 80"):
        longer.set_state(state)
    fixed = _batches([1, 1, 1, 1], batch_mode, pack=True, shuffle_window=16)
    with pytest.raises(ValueError, match="rate_schedule: saved .*annealed.*, now None"):
        fixed.set_state(state)


def test_a_schedule_needs_rates_and_sizes_that_fit():
    for mode in ("round_robin", "uncertainty"):
        with pytest.raises(ValueError, match=f"batch_mode '{mode}' .* no rate schedule"):
            _batches([1, 1, 1, 1], mode, rate_schedule=AnnealedRates(SCHEDULE_SIZES, 5))
    with pytest.raises(ValueError, match="4 tasks but the rate schedule has 3 sizes"):
        _batches([1, 1, 1, 1], "heterogeneous", rate_schedule=AnnealedRates((1, 2, 3), 5))
    with pytest.raises(ValueError, match="gives every task with a rate > 0 rate 0"):
        _batches([1, 1, 0, 0], "heterogeneous", rate_schedule=AnnealedRates((0, 0, 3, 4), 5))
    # A task at rate 0 stays out of an annealed mixture.
    counts = _task_counts([next(_batches([1, 0, 1, 1], "heterogeneous", batch_size=64,
                                         rate_schedule=AnnealedRates(SCHEDULE_SIZES, 5)))])
    assert counts[1] == 0 and counts.sum() == 64, counts
    with pytest.raises(ValueError, match="rate_schedule is set but .*round_robin"):
        TrainConfig(batch_mode="round_robin", rate_schedule={"name": "annealed"})


def test_the_run_sizes_its_schedule_from_the_training_examples(toy_cache):
    del toy_cache  # registers the seqio tasks
    cfg = TrainConfig(rate_schedule={"name": "annealed", "alpha_end": 0.25}, num_steps=7)
    sched = training_rate_schedule(cfg, list(TOY))
    assert sched == AnnealedRates((130, 70, 41), 7, 1.0, 0.25)
    assert training_rate_schedule(TrainConfig(), list(TOY)) is None
    with pytest.raises(ConfigError, match="TrainConfig.rate_schedule=.*alpha_start must be"):
        training_rate_schedule(
            TrainConfig(rate_schedule={"name": "annealed", "alpha_start": -1.0}), list(TOY))


# --- both data paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode,annealed", [("round_robin", False), ("heterogeneous", True),
                                           ("homogeneous", True)])
def test_seqio_and_cache_paths_give_the_same_global_batches(toy_cache, mode, annealed):
    """Two data shards of 3 rows each make the global batch of 6; the seqio and cached paths
    agree batch for batch, across epochs and (annealed) across the whole schedule, and a
    round-robin or homogeneous global batch holds one task."""
    conv = EncDecConverter(HEADS, passthrough=("idx",))
    cache = open_cache(toy_cache, MIX, LENGTHS)
    kw = {"batch_mode": mode,
          "rate_schedule": AnnealedRates((130, 70, 41), 30, 1.0, 0.0) if annealed else None}
    paths = [sharded_mixture_iterator(MIX, LENGTHS, 6, (0, 6), 2, conv, 5, **kw),
             sharded_cache_iterator(cache, LENGTHS, 6, (0, 6), 2, conv, 5, **kw)]
    for k in range(50):
        a, b = next(paths[0]), next(paths[1])
        _same(a, b, f"batch {k}")
        if mode == "round_robin":
            assert set(a[F.TASK_ID].tolist()) == {k % 3}, k
        elif mode == "homogeneous":
            assert len(set(a[F.TASK_ID].tolist())) == 1, k


def test_inspect_shows_the_annealed_rates_of_a_gin_run(capsys):
    """``inspect MIXTURE --gin_file=methods/annealed.gin``: the rates at the start, middle and
    end of training are n^α / Σ n^α of the members' training counts, α = 1, 0.75, 0.5."""
    from mtl_jax import inspect as cli

    argv = ["demo_cls", "-n", "0", "--max_examples", "1", "--gin_file=methods/annealed.gin"]
    assert cli.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sched = report["schedule"]
    assert sched["spec"] == {"name": "annealed", "alpha_start": 1.0, "alpha_end": 0.5}
    assert sched["alpha"] == [1.0, 0.75, 0.5]
    n = np.asarray([m["counts"]["train"] for m in report["members"]], np.float64)
    assert len(set(n.tolist())) > 1  # sizes differ, so the rates move
    got = np.asarray([sched["rates"][m["task"]] for m in report["members"]])
    for i, alpha in enumerate((1.0, 0.75, 0.5)):
        np.testing.assert_allclose(got[:, i], n**alpha / (n**alpha).sum(), rtol=1e-12)
    assert cli.main(argv) == 0
    assert "rate schedule {'name': 'annealed'" in capsys.readouterr().out

"""MT-Uncertainty sampling (CA-MTL's Algorithm 2): the selection against a NumPy implementation
of the paper's formula, per-shard selection, where the sampler goes on a synthetic two-task
pool, the data pools and their resume, the train step against "select in NumPy, then train",
and a tiny run end to end with exact resume."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import cli_runs as runs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl_jax import features as F
from mtl_jax import train as train_cli
from mtl_jax.data.batching import MixtureBatches
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts
from mtl_jax.training import uncertainty as unc

pytestmark = pytest.mark.usefixtures("fast_compiles")


# ------------------------------------------------------------------------------------------------
# The paper's selection rule, in NumPy (float64), one data shard's pool at a time
# ------------------------------------------------------------------------------------------------


def reference_entropy(logits: np.ndarray, classes: int) -> float:
    """H(p) / log C of one row's first C logits."""
    z = logits[:classes].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(-(p * np.log(np.maximum(p, 1e-300))).sum() / np.log(classes))


def reference_shard(logits, num_labels, task, real, quotas, keep):
    """Rows of one shard's pool to train on: each regression task's first ``quota`` rows, then
    the top classification rows by U = Ĥ · H̄_t / max_s H̄_s (ties: lower row first)."""
    rows = range(len(task))
    h = {i: reference_entropy(logits[i], num_labels[task[i]])
         for i in rows if real[i] and num_labels[task[i]] > 1}
    means = {t: np.mean([v for i, v in h.items() if task[i] == t]) for t in {task[i] for i in h}}
    top = max(means.values())
    u = {i: v * means[task[i]] / top for i, v in h.items()}
    reserved = []
    for t, q in enumerate(quotas):
        reserved += [i for i in rows if real[i] and task[i] == t][:q]
    ranked = sorted(u, key=lambda i: (-u[i], i))
    chosen = ranked[: keep - len(reserved)]
    gap = u[ranked[len(chosen) - 1]] - u[ranked[len(chosen)]] if len(chosen) < len(ranked) else 1
    return sorted(reserved + chosen), means, gap


def reference_select(logits, num_labels, task, real, quotas, num_shards, keep):
    per = len(task) // num_shards
    out, gaps = [], []
    for k in range(num_shards):
        s = slice(k * per, (k + 1) * per)
        idx, _, gap = reference_shard(logits[s], num_labels, task[s], real[s], quotas, keep)
        out += [k * per + i for i in idx]
        gaps.append(gap)
    return np.asarray(out), min(gaps)


def _pool(seed: int, num_labels, per_task: int, shards: int, scales):
    """Task-major blocks per shard, logits of task t scaled by ``scales[t]`` (random ranks)."""
    rng = np.random.default_rng(seed)
    task = np.tile(np.repeat(np.arange(len(num_labels)), per_task), shards).astype(np.int32)
    width = max(num_labels)
    logits = rng.normal(size=(len(task), width)) * np.asarray(scales)[task][:, None]
    logits *= rng.uniform(0.2, 2.0, size=(len(task), 1))
    nl = np.asarray(num_labels)[task]
    return logits.astype(np.float32), task, nl


@functools.cache
def _jitted(sampler: unc.UncertaintySampler):
    def run(logits, nl, batch):
        return sampler.select(unc.normalized_entropy(logits, nl), batch)

    return jax.jit(run)


def _select(sampler, logits, task, nl, real=None):
    real = np.ones(len(task), np.int32) if real is None else real
    batch = {F.TASK_ID: jnp.asarray(task), F.ATTENTION_MASK: jnp.asarray(real)[:, None]}
    index, metrics = _jitted(sampler)(jnp.asarray(logits), jnp.asarray(nl), batch)
    return np.asarray(index), jax.device_get(metrics)


def test_regression_quotas_are_the_largest_remainder_share():
    # 8 slots by rates .5/.3/.2: 4 / 2.4 / 1.6 -> 4, 2, 2 (the larger remainder takes the 8th).
    assert unc.regression_quotas([0.5, 0.3, 0.2], [False, True, True], 8) == (0, 2, 2)
    assert unc.regression_quotas([1, 1, 1], [False, False, True], 4) == (0, 0, 1)
    assert unc.regression_quotas([3, 1], [False, False], 5) == (0, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_equals_numpy_reference_of_the_paper_formula(seed):
    num_labels = (3, 2, 5, 1)  # the last task is regression
    logits, task, nl = _pool(seed, num_labels, per_task=6, shards=2, scales=(1.0, 3.0, 0.5, 1.0))
    real = np.ones(len(task), np.int32)
    real[[4, 30]] = 0  # padding rows (a last, partly filled pool) are never chosen
    quotas = unc.regression_quotas([1, 1, 1, 2], [n == 1 for n in num_labels], 6)
    sampler = unc.UncertaintySampler(num_labels, quotas, num_shards=2, batch_size=12)
    got, metrics = _select(sampler, logits, task, nl, real)
    want, gap = reference_select(logits, num_labels, task, real, quotas, 2, 6)
    assert gap > 1e-5, "a near tie at the cut would make the comparison float-fragile"
    np.testing.assert_array_equal(got, want)
    assert quotas == (0, 0, 0, 3) and np.sum(task[got] == 3) == 6  # 3 per shard
    # Per-task entropy over the whole pool, and the selected fractions.
    _, means, _ = reference_shard(logits, num_labels, task, real, (0, 0, 0, 0), 0)
    np.testing.assert_allclose(metrics["pool_entropy"][:3], [means[t] for t in range(3)], rtol=1e-5)
    assert metrics["pool_entropy"][3] == -1
    np.testing.assert_allclose(metrics["selected_fraction"],
                               np.bincount(task[got], minlength=4) / len(got))
    # The scores use each row's own classes: masked (other tasks') columns change nothing.
    masked = np.where(np.arange(5)[None, :] < nl[:, None], logits, -1e9).astype(np.float32)
    np.testing.assert_array_equal(_select(sampler, masked, task, nl, real)[0], got)


def test_each_shard_selects_from_its_own_pool():
    num_labels = (3, 2)
    logits, task, nl = _pool(7, num_labels, per_task=4, shards=2, scales=(0.3, 3.0))
    # Make shard 1's task 0 confident: its task weighting differs from shard 0's.
    logits[8:12] *= 10.0
    sampler2 = unc.UncertaintySampler(num_labels, (0, 0), num_shards=2, batch_size=8)
    sampler1 = unc.UncertaintySampler(num_labels, (0, 0), num_shards=1, batch_size=4)
    got, _ = _select(sampler2, logits, task, nl)
    alone = [k * 8 + _select(sampler1, logits[k * 8:(k + 1) * 8], task[:8], nl[:8])[0]
             for k in range(2)]
    np.testing.assert_array_equal(got, np.concatenate(alone))
    # One selection over the whole pool (one shard) would choose differently.
    whole = unc.UncertaintySampler(num_labels, (0, 0), num_shards=1, batch_size=8)
    assert not np.array_equal(_select(whole, logits, task, nl)[0], got)


def test_selection_moves_toward_the_uncertain_task():
    """Two tasks; task 1's logits fixed, task 0's made ever less confident: task 0's share of the
    selected batch grows from almost nothing to almost everything."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(64, 3)).astype(np.float32)
    task = np.repeat([0, 1], 32).astype(np.int32)
    nl = np.full(64, 3, np.int32)
    sampler = unc.UncertaintySampler((3, 3), (0, 0), num_shards=1, batch_size=32)
    shares = []
    for scale in (8.0, 3.0, 1.0, 0.3, 0.05):
        logits = base.copy()
        logits[:32] *= scale
        index, metrics = _select(sampler, logits, task, nl)
        shares.append(float(metrics["selected_fraction"][0]))
        assert np.isclose(shares[-1], np.mean(task[index] == 0))
    assert shares == sorted(shares), shares
    assert shares[0] < 0.15 and shares[-1] > 0.85, shares


# ------------------------------------------------------------------------------------------------
# Data: pools of b examples of every task, exactly restorable
# ------------------------------------------------------------------------------------------------


class _Source:
    def __init__(self, name: str, head: str, n: int, offset: int):
        self.name, self._head, self._n, self._offset = name, head, n, offset

    def read(self, epoch: int, start: int, count: int):
        return [{"text": np.array([self._offset + i + 5], np.int32), "label": i % 2,
                 "task": self._head} for i in range(start, min(start + count, self._n))]


def _pools(b: int = 3):
    sources = [_Source("ta", "ha", 7, 100), _Source("tb", "hb", 5, 200)]
    return MixtureBatches(sources, [0.9, 0.1], "train", {"inputs": 6}, b,
                          ClassificationConverter(("ha", "hb")), seed=4, batch_mode="uncertainty")


def test_pools_hold_b_examples_of_every_task_and_resume_exactly():
    it = _pools()
    first = [next(it) for _ in range(5)]
    for pool in first:
        np.testing.assert_array_equal(pool[F.TASK_ID], [0, 0, 0, 1, 1, 1])  # rates ignored
    # Each task's rows, read in order, are its own stream: every example once per epoch.
    a = [int(p[F.INPUT_IDS][r, 1]) - 105 for p in first[:2] for r in range(3)]
    b = [int(p[F.INPUT_IDS][r, 1]) - 205 for p in first[:2] for r in range(3, 6)]
    assert len(set(a)) == 6 and set(a) <= set(range(7)), a
    assert sorted(b[:5]) == list(range(5)), b
    state = json.loads(json.dumps(it.get_state()))
    assert state["streams"]["ta"]["consumed"] == 15 and state["streams"]["tb"]["consumed"] == 15
    expected = [next(it) for _ in range(4)]
    resumed = _pools()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ValueError, match="cannot pack"):
        MixtureBatches([_Source("ta", "ha", 7, 0)], [1.0], "train", {"inputs": 6}, 2,
                       EncDecConverter(("ha",), pack=True), seed=0,
                       batch_mode="uncertainty")


# ------------------------------------------------------------------------------------------------
# The train step: select-then-train inside one compiled step
# ------------------------------------------------------------------------------------------------

NUM_LABELS = (3, 2, 1)


def _model() -> XLMRMultiTask:
    cfg = XLMRConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=32, max_position_embeddings=20, task_num_labels=NUM_LABELS,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     initializer_range=0.5)  # spread logits: no near ties in the ranking
    return XLMRMultiTask(cfg, rngs=nnx.Rngs(0))


def _pool_batch(per_task: int, shards: int, length: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    task = np.tile(np.repeat(np.arange(3), per_task), shards).astype(np.int32)
    n = len(task)
    ids = rng.integers(3, 30, (n, length)).astype(np.int32)
    ids[:, 0] = 0
    labels = np.where(task == 2, -1, rng.integers(0, 6, n) % np.array([3, 2, 1])[task])
    return {F.INPUT_IDS: ids, F.ATTENTION_MASK: np.ones((n, length), np.int32), F.TASK_ID: task,
            F.LABELS: labels.astype(np.int32),
            F.REGRESSION_TARGETS: rng.uniform(0, 5, n).astype(np.float32)}


@pytest.mark.parametrize("micro_batches", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_train_step_equals_numpy_selection_then_a_plain_step(micro_batches):
    """2 data devices, 2 data shards: the step with the sampler ends with the parameters of a
    plain step on the batch the NumPy reference selects from the model's own logits."""
    objective = obj.ClassificationObjective(num_tasks=3, num_labels=NUM_LABELS)
    optimizer = opt.Optimizer(optax.sgd(0.5), lambda step: jnp.float32(0.5))
    mesh = part.make_mesh(2, 1, 1, devices=jax.devices()[:2])
    rules = part.rules_by_name("fsdp")
    graphdef, state, shardings = ts.create_train_state(_model, optimizer, mesh, rules, 0)
    bs = part.batch_sharding(mesh, rules)
    pool = _pool_batch(per_task=4, shards=2)  # 24 rows; keep 8 (4 per shard)
    quotas = unc.regression_quotas([1, 1, 1], [False, False, True], 4)
    sampler = unc.UncertaintySampler(NUM_LABELS, quotas, num_shards=2, batch_size=8)
    kw = dict(micro_batches=micro_batches, rules=rules, deterministic=True, donate=False)
    logits = np.asarray(objective.predict(ts.merge_model(graphdef, jax.device_get(state.params),
                                                         jax.device_get(state.rest)),
                                          {k: jnp.asarray(v) for k, v in pool.items()})["logits"])
    want, gap = reference_select(logits, NUM_LABELS, pool[F.TASK_ID], np.ones(24), quotas, 2, 4)
    assert gap > 1e-6
    plain = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, **kw)
    selected = {k: v[want] for k, v in pool.items()}
    ref_state, ref_metrics = plain(state, part.global_batch(selected, mesh, bs))
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs,
                              sampler=sampler, **kw)
    new_state, metrics = step(state, part.global_batch(pool, mesh, bs))
    for a, b in zip(jax.tree.leaves(jax.device_get(new_state.params)),
                    jax.tree.leaves(jax.device_get(ref_state.params)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)
    np.testing.assert_allclose(metrics["selected_fraction"],
                               np.bincount(pool[F.TASK_ID][want], minlength=3) / 8)
    assert metrics["selected_fraction"][2] == pytest.approx(2 / 8)  # 1 regression slot per shard


# ------------------------------------------------------------------------------------------------
# End to end: a tiny XLM-R on the CS224N samples (SST-5, Quora, STS regression)
# ------------------------------------------------------------------------------------------------

TINY = [
    "XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=1",
    "XLMRConfig.num_attention_heads=2", "XLMRConfig.intermediate_size=64",
    "XLMRConfig.hidden_dropout_prob=0.1",  # dropout on: resume must redo the scoring masks too
    "TrainConfig.mixture='cs224n_cls'",
    "TrainConfig.num_steps=4", "TrainConfig.eval_every=4", "TrainConfig.checkpoint_every=2",
    "TrainConfig.batch_size=8", "TrainConfig.eval_batch_size=16", "TrainConfig.max_eval_examples=8",
    "TrainConfig.sequence_length={'inputs': 32}", "TrainConfig.progress=False",
    "TrainConfig.async_checkpoints=False",
    "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 0.01}",
]  # fmt: skip


def _argv(model_dir: Path, *params: str) -> list[str]:
    return ["--gin_file=demo_xlmr.gin", "--gin_file=methods/uncertainty.gin",
            *[f"--gin_param={p}" for p in (*TINY, f"TrainConfig.model_dir={model_dir}", *params)]]


@pytest.mark.slow
def test_tiny_run_logs_where_the_sampler_goes_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    assert train_cli.main(_argv(run)) == 0
    train = runs.records(run, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    heads = ("cs224n_sst", "cs224n_quora", "cs224n_sts")
    for r in train:
        shares = [r[f"selected/{h}"] for h in heads]
        assert sum(shares) == pytest.approx(1.0)
        # 8 rows, 1 data shard: STS (regression) keeps its rate's share, here 1 or more rows.
        assert r["selected/cs224n_sts"] * 8 >= 1
        assert all(0 <= r[f"entropy/{h}"] <= 1 for h in heads[:2])
        assert "entropy/cs224n_sts" not in r
    final = runs.final_params(run, 4)
    # Lose checkpoint 4 and run again: steps 3-4 are redone from checkpoint 2, bit for bit.
    shutil.rmtree(run / "checkpoints" / "4")
    assert train_cli.main(_argv(run)) == 0
    for name, value in runs.final_params(run, 4).items():
        np.testing.assert_array_equal(value, final[name], err_msg=name)
    assert runs.records(run, "train")[2:] == [
        {**r, "steps_per_sec": ANY, "tokens_per_sec": ANY} for r in train[2:]]


class _Any:
    def __eq__(self, other) -> bool:
        return True


ANY = _Any()


def test_text_to_text_runs_are_refused_with_the_binding_named(tmp_path):
    from mtl_jax import configurables, experiment, gin_config

    gin_config.parse(["demo_mt5.gin"], ["TrainConfig.batch_mode='uncertainty'",
                                        f"TrainConfig.model_dir='{tmp_path}'"])
    with pytest.raises(experiment.ConfigError, match="TrainConfig.batch_mode='uncertainty' with "
                                                     "family='t5'"):
        experiment.build(configurables.train_config())

"""PCGrad (Yu et al. 2020): the defining properties of the projection, and the train step's
combined gradient against an independent NumPy implementation on a tiny 3-task XLM-R."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl_jax import features as F
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import pcgrad
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _projected(grads: np.ndarray, present=None, key=0) -> np.ndarray:
    g = jnp.asarray(grads, jnp.float32)
    present = jnp.ones(len(grads), bool) if present is None else jnp.asarray(present)
    c = pcgrad.pcgrad_coefficients(g @ g.T, present, pcgrad.task_orders(jax.random.key(key), len(g)))
    return np.asarray(c @ g)


def reference_pcgrad(grads: np.ndarray, orders: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The paper's Algorithm 1 on explicit vectors (float64), with the given orders."""
    out = np.zeros(grads.shape[1])
    for i in range(len(grads)):
        if not present[i]:
            continue
        g = grads[i].astype(np.float64).copy()
        for j in orders[i]:
            if j == i or not present[j]:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        out += g
    return out


def test_two_conflicting_gradients_end_with_non_negative_dot_products():
    g = np.array([[1.0, 0.3, -0.2], [-1.0, 0.5, 0.4]])
    assert g[0] @ g[1] < 0
    p = _projected(g)
    assert p[0] @ g[1] >= -1e-6 and p[1] @ g[0] >= -1e-6
    assert abs(p[0] @ g[1]) < 1e-5  # projected onto the normal plane, exactly


def test_without_conflict_pcgrad_is_the_plain_sum():
    rng = np.random.default_rng(0)
    g = np.abs(rng.normal(size=(4, 10)))  # all dot products positive
    np.testing.assert_allclose(_projected(g).sum(0), g.sum(0), rtol=1e-6)
    # An absent task contributes nothing and conflicts with nobody.
    h = np.array([[1.0, 0.0], [-1.0, 0.2], [0.0, 1.0]])
    np.testing.assert_allclose(_projected(h, present=[True, False, True]).sum(0), h[0] + h[2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_match_the_paper_algorithm_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(4, 7))
    present = np.array([True, True, seed != 1, True])
    orders = np.asarray(pcgrad.task_orders(jax.random.key(seed), 4))
    w = pcgrad.pcgrad_weights(jnp.asarray(g @ g.T, jnp.float32), jnp.asarray(present),
                              jnp.asarray(orders))
    np.testing.assert_allclose(np.asarray(w) @ g, reference_pcgrad(g, orders, present),
                               rtol=1e-4, atol=1e-5)


def _model() -> XLMRMultiTask:
    cfg = XLMRConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=32, max_position_embeddings=20, task_num_labels=(3, 2, 4),
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return XLMRMultiTask(cfg, rngs=nnx.Rngs(0))


def _batch(b: int = 12, length: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    task = (np.arange(b) % 3).astype(np.int32)
    ids = rng.integers(3, 30, (b, length)).astype(np.int32)
    ids[:, 0] = 0
    return {F.INPUT_IDS: ids, F.ATTENTION_MASK: np.ones((b, length), np.int32), F.TASK_ID: task,
            F.LABELS: (rng.integers(0, 12, b) % np.array([3, 2, 4])[task]).astype(np.int32)}


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_train_step_gradient_equals_numpy_pcgrad_of_per_task_gradients(micro_batches):
    """SGD with lr 1 exposes the step's gradient; the reference differentiates each task's loss
    separately (jax.grad per task, no VJP sharing) and applies Algorithm 1 in NumPy."""
    objective = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 4))
    optimizer = opt.Optimizer(optax.sgd(1.0), lambda step: jnp.float32(1.0))
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("fsdp")
    graphdef, state, shardings = ts.create_train_state(_model, optimizer, mesh, rules, 0)
    before = jax.device_get(state.params)
    key = jax.random.fold_in(ts.step_key(state.rng, state.step), st.NOISE_STREAM + 1)
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs,
                              micro_batches=micro_batches, rules=rules, deterministic=True,
                              combiner=pcgrad.PCGrad(), donate=False)
    batch = _batch()
    new_state, metrics = step(state, part.global_batch(batch, mesh, bs))
    after = jax.device_get(new_state.params)
    got = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), before, after)

    model = ts.merge_model(graphdef, before, jax.device_get(state.rest))
    params = nnx.state(model, nnx.Param)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    def task_loss(p, t):
        m = nnx.merge(nnx.graphdef(model), p, nnx.state(model, nnx.Not(nnx.Param)))
        return objective.terms(m, jbatch, deterministic=True, rngs=None).task_numerator[t]

    per_task = [jax.grad(task_loss)(params, t) for t in range(3)]
    leaves = [jax.tree_util.tree_flatten_with_path(g)[0] for g in per_task]
    paths = [jax.tree_util.keystr(k) for k, _ in leaves[0]]
    flat = [np.concatenate([np.asarray(v, np.float64).ravel() for _, v in task]) for task in leaves]
    sizes = [np.asarray(v).size for _, v in leaves[0]]
    shared = np.concatenate([np.full(n, not pcgrad.is_task_specific(p)) for p, n in
                             zip(paths, sizes, strict=True)])
    g = np.stack(flat)
    orders = np.asarray(pcgrad.task_orders(key, 3))
    combined = reference_pcgrad(np.where(shared, g, 0.0), orders, np.ones(3, bool))
    combined = np.where(shared, combined, g.sum(0)) / float(metrics["weight"])
    got_flat = np.concatenate([np.asarray(v, np.float64).ravel()
                               for _, v in jax.tree_util.tree_flatten_with_path(got)[0]])
    assert shared.sum() < shared.size, "the heads must be left to their own task"
    conflicts = sum(g[i][shared] @ g[j][shared] < 0 for i in range(3) for j in range(i))
    assert conflicts, "no conflicting pair: the test would not exercise the projection"
    np.testing.assert_allclose(got_flat, combined, rtol=2e-4, atol=1e-6)

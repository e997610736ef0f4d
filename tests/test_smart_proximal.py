"""SMART's Bregman proximal point (the paper's Algorithm 1, ``mu > 0``): the momentum teacher is
the moving average of the parameter trajectory with the switching beta, frozen parameters hold no
copy, a skipped step leaves it, it is sharded like the parameters and a checkpointed run resumes
it exactly; the proximal term is zero at the teacher (the plain loss and gradient) and equals the
symmetric-KL formula, written out independently, with its gradient, away from it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_r3f import _cls_batch, _rngs, _xlmr

from mtl_jax import features as F
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts
from mtl_jax.training.checkpoints import CheckpointStore
from mtl_jax.training.smart import SMARTObjective
from mtl_jax.training.teacher import TeacherState, find_teacher, momentum_schedule, teacher_params

pytestmark = pytest.mark.usefixtures("fast_compiles")
NUM_LABELS = (3, 2, 1)


def _base() -> obj.ClassificationObjective:
    return obj.ClassificationObjective(num_tasks=3, num_labels=NUM_LABELS)


def _dropout_xlmr() -> XLMRMultiTask:
    cfg = XLMRConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=32, max_position_embeddings=20, task_num_labels=NUM_LABELS)
    return XLMRMultiTask(cfg, rngs=nnx.Rngs(0))


def _run(objective, optimizer, steps, make_model=_xlmr, devices=1, state=None, first=0):
    """``steps`` train steps on batches ``first, first + 1, ...``; the states after each."""
    mesh = part.make_mesh(1, devices, 1, devices=jax.devices()[:devices])
    rules = part.rules_by_name("fsdp")
    graphdef, fresh, shardings = ts.create_train_state(make_model, optimizer, mesh, rules, 0)
    state = fresh if state is None else state
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules,
                              donate=False)
    seen = [jax.device_get(state)]
    metrics = []
    for i in range(first, first + steps):
        state, m = step(state, part.global_batch(_cls_batch(seed=i), mesh, bs))
        seen.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return seen, metrics, (graphdef, shardings)


def test_teacher_is_the_moving_average_with_the_switching_beta():
    momentum = momentum_schedule(0.5, 0.9, 0.5, total_steps=4)  # 0.5 for 2 updates, then 0.9
    optimizer = opt.make_optimizer("adamw", learning_rate=3e-2, teacher_momentum=momentum)
    objective = SMARTObjective(_base(), alpha=0.0, mu=0.5)
    seen, metrics, _ = _run(objective, optimizer, 4, make_model=_dropout_xlmr)
    expected = jax.tree.map(lambda p: np.asarray(p, np.float64), seen[0].params)
    assert find_teacher(seen[0].opt_state).teacher is not None
    for k, state in enumerate(seen[1:]):
        beta = 0.5 if k < 2 else 0.9
        expected = jax.tree.map(lambda t, p, b=beta: b * t + (1 - b) * np.asarray(p, np.float64),
                                expected, state.params)
        got = teacher_params(state.opt_state, state.params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
        assert int(find_teacher(state.opt_state).count) == k + 1
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(seen[-1].params),
                                                   jax.tree.leaves(expected), strict=True)]
    assert any(moved), "the teacher lags the parameters"
    # With dropout on, the student's pass differs from the teacher's even at step 0.
    assert all(float(m["smart_prox"]) > 0 for m in metrics)
    assert "smart_kl" not in metrics[0]  # alpha = 0 skips the adversarial passes


def test_proximal_term_is_zero_at_the_teacher_and_the_formula_away_from_it():
    model, other = _xlmr(), _xlmr()
    params = nnx.state(other, nnx.Param)  # a teacher far enough for a sizeable KL
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
    nnx.update(other, jax.tree.map(lambda x: x + 0.5 * jax.random.normal(next(keys), x.shape),
                                   params))
    batch = {k: jnp.asarray(v) for k, v in _cls_batch().items()}
    base, smart = _base(), SMARTObjective(_base(), alpha=0.0, mu=2.0)

    def loss(o, teacher=None):
        kw = {} if teacher is None else {"teacher": teacher}
        return lambda m: o.finalize(o.terms(m, batch, deterministic=True, rngs=_rngs(), **kw))

    (l_plain, _), g_plain = nnx.value_and_grad(loss(base), has_aux=True)(model)
    (l_same, aux), g_same = nnx.value_and_grad(loss(smart, model), has_aux=True)(model)
    assert float(aux["smart_prox"]) == 0.0
    assert float(l_same) == pytest.approx(float(l_plain), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_same), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

    # Away from the teacher: the formula, written out, over each example's own classes, mean
    # over the real classification examples (the loss's normalisation), teacher constant.
    target = base.outputs(other, batch, True, None)["logits"]
    task = np.asarray(batch[F.TASK_ID])
    real = (np.asarray(batch[F.ATTENTION_MASK]).sum(-1) > 0).astype(np.float32)
    classes = np.asarray(NUM_LABELS)[task]
    count = real.sum()  # every real example counts in the denominator, regression ones too

    def reference(m):
        out = base.outputs(m, batch, True, None)
        terms = base.terms_from(out, batch)
        kl = []
        for r in range(task.shape[0]):
            if classes[r] == 1:
                kl.append(jnp.float32(0.0))
                continue
            lp = jax.nn.log_softmax(out["logits"][r, :classes[r]].astype(jnp.float32))
            lq = jax.nn.log_softmax(jax.lax.stop_gradient(target[r, :classes[r]]))
            kl.append(jnp.sum((jnp.exp(lp) - jnp.exp(lq)) * (lp - lq)) * real[r])
        prox = jnp.sum(jnp.stack(kl)) / count
        return terms.numerator / count + 2.0 * prox, prox

    (l_ref, prox_ref), g_ref = nnx.value_and_grad(reference, has_aux=True)(model)
    (l_far, aux), g_far = nnx.value_and_grad(loss(smart, other), has_aux=True)(model)
    assert float(prox_ref) > 1e-3
    assert float(aux["smart_prox"]) == pytest.approx(float(prox_ref), rel=1e-5)
    assert float(l_far) == pytest.approx(float(l_ref), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_far), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # Both KL directions train the student: a detached target side would change the gradient.
    assert not all(np.allclose(np.asarray(a), np.asarray(b), atol=1e-6)
                   for a, b in zip(jax.tree.leaves(g_far), jax.tree.leaves(g_plain), strict=True))


def test_frozen_parameters_hold_no_copy_and_a_skipped_step_keeps_the_teacher():
    momentum = momentum_schedule(0.9, 0.9, 0.0, None)
    partition = opt.freeze_matching(r"embeddings/")
    optimizer = opt.make_optimizer("adamw", learning_rate=3e-2, partition_fn=partition,
                                   teacher_momentum=momentum)
    objective = SMARTObjective(_base(), alpha=0.0, mu=1.0)
    seen, _, _ = _run(objective, optimizer, 1)
    state = seen[-1]
    teacher = find_teacher(state.opt_state)
    flat = jax.tree_util.tree_flatten_with_path(
        teacher.teacher, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]
    frozen = [part.path_str(p) for p, x in flat if isinstance(x, optax.MaskedNode)]
    held = [part.path_str(p) for p, x in flat if not isinstance(x, optax.MaskedNode)]
    assert frozen and all("embeddings/" in p for p in frozen)
    assert held and not any("embeddings/" in p for p in held)
    full = teacher_params(state.opt_state, state.params)
    emb = state.params["encoder"]["embeddings"]
    for a, b in zip(jax.tree.leaves(full["encoder"]["embeddings"]), jax.tree.leaves(emb),
                    strict=True):
        np.testing.assert_array_equal(a, b)

    # An infinite learning rate makes the update non-finite: the step is skipped, the teacher
    # (optimizer state) stays.
    bad = opt.make_optimizer("adamw", learning_rate=float("inf"), teacher_momentum=momentum)
    seen, metrics, _ = _run(objective, bad, 1)
    assert int(metrics[0]["skipped"]) == 1
    before, after = (find_teacher(s.opt_state) for s in seen)
    assert int(after.count) == 0
    for a, b in zip(jax.tree.leaves(before.teacher), jax.tree.leaves(after.teacher), strict=True):
        np.testing.assert_array_equal(a, b)


def test_teacher_is_sharded_like_the_parameters_and_resumes_exactly(tmp_path):
    momentum = momentum_schedule(0.5, 0.9, 0.5, total_steps=4)
    optimizer = opt.make_optimizer("adamw", learning_rate=3e-2, teacher_momentum=momentum)
    objective = SMARTObjective(_base(), sigma=0.05, step_size=1.0, alpha=0.5, mu=1.0)
    straight, _, (graphdef, shardings) = _run(objective, optimizer, 4, devices=4)
    shards = find_teacher(shardings.opt_state).teacher
    for t, p in zip(jax.tree.leaves(shards), jax.tree.leaves(shardings.params), strict=True):
        assert t.spec == p.spec
    assert any(p.spec != part.PartitionSpec() for p in jax.tree.leaves(shardings.params))

    first, _, _ = _run(objective, optimizer, 2, devices=4)
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    store.save(2, first[-1], {}, {})
    mesh = part.make_mesh(1, 4, 1, devices=jax.devices()[:4])
    _, abstract, _ = ts.train_state_shardings(_xlmr, optimizer, mesh, part.rules_by_name("fsdp"))
    restored, _, _ = store.restore(2, abstract)
    store.close()
    assert isinstance(find_teacher(restored.opt_state), TeacherState)
    resumed, _, _ = _run(objective, optimizer, 2, devices=4, state=restored, first=2)
    end, want = resumed[-1], straight[-1]
    for a, b in zip(jax.tree.leaves(end), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mu_without_a_teacher_is_a_clear_error_and_bad_values_are_refused():
    optimizer = opt.make_optimizer("adamw", learning_rate=1e-3)
    with pytest.raises(ValueError, match="no momentum teacher"):
        _run(SMARTObjective(_base(), alpha=0.0, mu=1.0), optimizer, 1)
    for bad in ({"mu": -1.0}, {"beta": 1.0}, {"beta_late": -0.1}, {"beta_switch": 2.0}):
        with pytest.raises(ValueError):
            SMARTObjective(_base(), **bad)
    assert SMARTObjective(_base()).teacher_momentum(100) is None  # mu = 0: no teacher
    beta = SMARTObjective(_base(), mu=1.0).teacher_momentum(100)
    assert [float(beta(jnp.int32(s))) for s in (0, 9, 10, 99)] == pytest.approx(
        [0.99, 0.99, 0.999, 0.999])


def test_gin_smart_mu_builds_the_teacher_and_a_bad_binding_names_it():
    import gin

    from mtl_jax import configurables, experiment, gin_config
    from mtl_jax.experiment import ConfigError

    def config(*params):
        gin.clear_config()
        try:
            gin_config.parse(["demo_xlmr.gin", "methods/smart_proximal.gin"], list(params))
            return configurables.train_config()
        finally:
            gin.clear_config()

    cfg = config("TrainConfig.num_steps=200")
    layout = type("Layout", (), {"head_labels": (3, 2), "heads": ("a", "b")})()
    momentum = experiment.smart_teacher(cfg, layout, 40)
    assert float(momentum(jnp.int32(19))) == pytest.approx(0.99)
    assert float(momentum(jnp.int32(20))) == pytest.approx(0.999)
    optimizer = experiment.make_optimizer(cfg, cfg.optimizer, teacher_momentum=momentum)
    state = optimizer.tx.init({"w": jnp.ones((2,))})
    assert find_teacher(state) is not None
    bad = config("TrainConfig.smart={'mu': -1.0}")
    with pytest.raises(ConfigError, match=r"TrainConfig\.smart=.*mu"):
        experiment.smart_teacher(bad, layout, 40)


def test_a_checkpoint_without_the_teacher_is_refused_by_name_and_kept(tmp_path):
    """Turning ``mu`` on in a run whose checkpoints have no teacher: a named incompatibility
    (not "cannot be read"), and the checkpoint stays where it is."""
    from mtl_jax.training.checkpoints import IncompatibleCheckpointError

    plain = opt.make_optimizer("adamw", learning_rate=1e-3)
    with_teacher = opt.make_optimizer("adamw", learning_rate=1e-3,
                                      teacher_momentum=momentum_schedule(0.9, 0.9, 0.0, None))
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("fsdp")
    _, state, _ = ts.create_train_state(_xlmr, plain, mesh, rules, 0)
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    store.save(3, state, {}, {})
    _, abstract, _ = ts.train_state_shardings(_xlmr, with_teacher, mesh, rules)
    with pytest.raises(IncompatibleCheckpointError, match=r"opt_state: checkpoint \d+ arrays"):
        store.restore_latest(abstract)
    assert store.all_steps() == [3] and (tmp_path / "ckpt" / "3").is_dir()
    _, same, _ = ts.train_state_shardings(_xlmr, plain, mesh, rules)
    assert store.restore_latest(same)[0] == 3
    store.close()

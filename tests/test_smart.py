"""SMART (Jiang et al. 2020, as in MT-DNN): no noise and no ascent give a zero term; the ascent
step climbs the KL; the term and its gradients equal a PyTorch computation of the same formula on
transformers' XLM-R with the same weights and noise; padding is masked; micro-batches equal the
whole batch; a short CLI run logs ``smart_kl``."""

from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from test_r3f import (
    FAMILIES,
    _cls_batch,
    _rngs,
    _xlmr,
    assert_grads_match_hf,
    assert_micro_batches_exact,
)

from mtl_jax import features as F
from mtl_jax.models import losses
from mtl_jax.models.hf_xlmr import load_hf_xlmr
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts
from mtl_jax.training.smart import SMARTObjective

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _loss(objective, batch, rngs_seed: int = 0):
    return lambda m: objective.finalize(
        objective.terms(m, batch, deterministic=True, rngs=_rngs(rngs_seed)))


def _value_and_grad(objective, batch, model):
    """Jitted (eager NNX differentiation of three passes is slow on 2 cores)."""
    return nnx.jit(nnx.value_and_grad(_loss(objective, batch), has_aux=True))(model)


def test_symmetric_kl_with_detached_targets_has_the_same_value_and_the_per_term_gradient():
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(x, jnp.float32) for x in rng.normal(size=(2, 4, 5)) * 2)
    full = losses.symmetric_kl(a, b)
    detached = losses.symmetric_kl(a, b, detach_targets=True)
    np.testing.assert_allclose(np.asarray(detached), np.asarray(full), rtol=1e-6)
    # d/da [KL(sg(p)||q) + KL(sg(q)||p)] = p - q (softmax-logit gradient of -sum q log p).
    ga = jax.grad(lambda x: jnp.sum(losses.symmetric_kl(x, b, detach_targets=True)))(a)
    p, q = jax.nn.softmax(a, -1), jax.nn.softmax(b, -1)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(p - q), rtol=1e-5, atol=1e-7)
    g_full = jax.grad(lambda x: jnp.sum(losses.symmetric_kl(x, b)))(a)
    assert not np.allclose(np.asarray(g_full), np.asarray(ga), atol=1e-4), "nothing detached"


def test_no_noise_and_no_ascent_give_a_zero_term_and_the_plain_loss():
    make_model, make_objective, make_batch = FAMILIES["xlmr"]
    model, base = make_model(), make_objective()
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    plain, _ = _loss(base, batch)(model)
    loss, aux = _loss(SMARTObjective(base, sigma=0.0, steps=0), batch)(model)
    assert float(aux["smart_kl"]) == 0.0 and float(loss) == float(plain)
    # The control: with noise the same objective has a positive term.
    _, aux = _loss(SMARTObjective(base, sigma=0.05, steps=0), batch)(model)
    assert float(aux["smart_kl"]) > 0


def test_the_ascent_step_increases_the_kl_more_than_a_random_step():
    """From the initial noise, one normalised-gradient step (the paper's form, no clipping) raises
    the adversarial KL, and more than a random step of the same per-token L-infinity size."""
    model = _xlmr()
    base = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1))
    batch = {k: jnp.asarray(v) for k, v in _cls_batch().items()}
    smart = SMARTObjective(base, sigma=0.02, step_size=0.05, normalize="gradient", radius=1e9)
    clean = base.outputs(model, batch, True, None)
    delta = smart.initial_noise(model, batch, jax.random.key(3))

    def kl(d):
        return float(smart.adversarial_kl(model, batch, clean, d, True, None))

    grad = jax.grad(lambda d: smart.adversarial_kl(model, batch, clean, d, True, None))(delta)
    ascended = smart.update(delta, grad)
    mask = base.embedding_mask(batch)[..., None]
    direction = jax.random.normal(jax.random.key(4), delta.shape) * mask
    random_step = delta + 0.05 * direction / (jnp.max(jnp.abs(direction), -1, keepdims=True) + 1e-6)
    before, after, random_kl = kl(delta), kl(ascended), kl(random_step)
    assert before > 0
    assert after > 1.5 * before and after > 1.5 * random_kl, (before, after, random_kl)
    # No token moved by more than step_size in L-infinity (less where max|grad| is near the
    # 1e-6 guard), padding tokens not at all.
    moved = np.max(np.abs(np.asarray(ascended - delta)), -1)
    assert moved.max() > 0 and np.all(moved <= 0.05 * (1 + 1e-6))
    assert np.all(moved[np.asarray(mask[..., 0]) == 0] == 0)


def test_smart_term_and_gradient_match_pytorch_on_the_same_weights_and_noise(tmp_path):
    """XLM-R classifier, one padded row: ours vs transformers with the perturbation added to the
    embeddings module's output by a forward hook and SMART written out in PyTorch from the
    formula (MT-DNN's perturbation normalisation, K = 1, the final KL detached per term)."""
    hf = helpers.hf_xlmr("cls", helpers.XLMR_HF_CONFIGS[1], seed=3, num_labels=3)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"))
    rng = np.random.default_rng(1)
    b, length = 4, 9
    mask = np.ones((b, length), np.int32)
    mask[2, 6:] = 0
    ids = np.where(mask > 0, rng.integers(3, cfg.vocab_size, (b, length)), 1).astype(np.int32)
    ids[:, 0] = 0
    batch = {F.INPUT_IDS: jnp.asarray(ids), F.ATTENTION_MASK: jnp.asarray(mask),
             F.TASK_ID: jnp.zeros((b,), jnp.int32),
             F.LABELS: jnp.asarray(rng.integers(0, 3, b), jnp.int32)}
    base = obj.ClassificationObjective(num_tasks=1, num_labels=(3,))
    sigma, eta, alpha = 0.1, 5.0, 0.7
    smart = SMARTObjective(base, sigma=sigma, step_size=eta, steps=1, alpha=alpha)
    (loss, aux), grads = _value_and_grad(smart, batch, model)
    terms = smart.terms(model, batch, deterministic=True, rngs=_rngs())
    assert float(jnp.sum(terms.task_numerator)) == pytest.approx(float(terms.numerator), rel=1e-6)
    noise0 = np.array(smart.initial_noise(model, batch, _rngs().noise()))

    # PyTorch, from the formula.
    t_mask = torch.from_numpy(mask).float()
    tids = helpers.to_torch(ids)
    perturbation: dict[str, torch.Tensor | None] = {"delta": None}
    hook = hf.roberta.embeddings.register_forward_hook(
        lambda module, args, out: out if perturbation["delta"] is None else out + perturbation["delta"])

    def forward(delta):
        perturbation["delta"] = delta
        return hf(input_ids=tids, attention_mask=t_mask.long()).logits

    def sym_kl(p_logits, q_logits):  # per example, float32 log-softmax of both sides
        lp, lq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
        return ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)

    hf.zero_grad()
    clean = forward(None)
    delta = torch.from_numpy(noise0) * t_mask[..., None]
    delta.requires_grad_(True)
    ascent = sym_kl(clean.detach(), forward(delta)).sum()
    (g,) = torch.autograd.grad(ascent, delta)
    moved = delta.detach() + eta * g
    delta = (moved / (moved.abs().amax(-1, keepdim=True) + 1e-6) * t_mask[..., None]).detach()
    adv = forward(delta)
    lp, lq = clean.float().log_softmax(-1), adv.float().log_softmax(-1)
    kl = ((lp.detach().exp() * (lp.detach() - lq)).sum(-1)
          + (lq.detach().exp() * (lq.detach() - lp)).sum(-1)).mean()
    ce = torch.nn.functional.cross_entropy(clean, torch.from_numpy(np.array(batch[F.LABELS])).long())
    ref = ce + alpha * kl
    ref.backward()
    hook.remove()

    assert kl.item() > 1e-3, "the perturbation must move the predictions for this test to mean anything"
    assert float(aux["smart_kl"]) == pytest.approx(kl.item(), rel=1e-4)
    assert float(loss) == pytest.approx(ref.item(), rel=1e-5)
    assert_grads_match_hf(model, grads, hf)


def test_padding_gets_no_noise_and_does_not_change_the_term():
    """Changing padded tokens and the content of an all-padding row leaves the term, the loss
    and the gradient unchanged; the perturbation is zero at padding."""
    model = _xlmr()
    base = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1))
    smart = SMARTObjective(base, sigma=0.05, step_size=1.0)
    raw = _cls_batch()
    raw[F.ATTENTION_MASK][5] = 0  # an all-padding row
    other = {k: v.copy() for k, v in raw.items()}
    pad = other[F.ATTENTION_MASK] == 0
    other[F.INPUT_IDS] = np.where(pad, 7, other[F.INPUT_IDS]).astype(np.int32)
    other[F.LABELS][5] = 0
    results = []
    for r in (raw, other):
        batch = {k: jnp.asarray(v) for k, v in r.items()}
        (loss, aux), grads = _value_and_grad(smart, batch, model)
        results.append((float(loss), float(aux["smart_kl"]), jax.tree.leaves(grads)))
        delta = smart.initial_noise(model, batch, jax.random.key(0))
        assert np.all(np.asarray(delta)[np.asarray(r[F.ATTENTION_MASK]) == 0] == 0)
    (l1, k1, g1), (l2, k2, g2) = results
    assert k1 > 0 and np.isfinite(l1)
    assert k2 == pytest.approx(k1, rel=1e-6) and l2 == pytest.approx(l1, rel=1e-6)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", [
    "xlmr", pytest.param("t5", marks=pytest.mark.slow)])
def test_smart_with_micro_batches_equals_the_whole_batch(family):
    """Per-row noise and a per-token ascent: 1 vs 4 micro-batches give the same loss, term and
    update inside the train step (SGD with lr 1 exposes the gradient)."""
    make_model, make_objective, make_batch = FAMILIES[family]
    objective = SMARTObjective(make_objective(), sigma=0.05, step_size=1.0, alpha=0.5)
    assert_micro_batches_exact(make_model, objective, make_batch(), "smart_kl")


@pytest.mark.slow  # ~40 s: four compiles
def test_smart_sharded_and_under_pcgrad_equals_one_device():
    """8 data-parallel devices with 2 micro-batches, PCGrad on one and on 8 devices
    give the one-device step's loss and term; sharding does not change the update, PCGrad does
    (its projections act on the per-task gradients that include the SMART term)."""
    from mtl_jax.training.pcgrad import PCGrad

    make_model, make_objective, make_batch = FAMILIES["xlmr"]
    objective = SMARTObjective(make_objective(), sigma=0.05, step_size=1.0, alpha=0.5)
    optimizer = opt.Optimizer(optax.sgd(1.0), lambda step: jnp.float32(1.0))
    rules = part.rules_by_name("fsdp")
    out = {}
    for name, devices, combiner, micro in (("one", 1, None, 1), ("sharded", 8, None, 2),
                                           ("pcgrad", 1, PCGrad(), 1), ("pcgrad8", 8, PCGrad(), 1)):
        mesh = part.make_mesh(devices, 1, 1, devices=jax.devices()[:devices])
        graphdef, state, shardings = ts.create_train_state(make_model, optimizer, mesh, rules, 0)
        bs = part.batch_sharding(mesh, rules)
        step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs,
                                  micro_batches=micro, rules=rules, combiner=combiner)
        state, metrics = step(state, part.global_batch(make_batch(), mesh, bs))
        out[name] = (jax.device_get(metrics), jax.tree.leaves(jax.device_get(state.params)))
    assert float(out["one"][0]["smart_kl"]) > 0
    for name in ("sharded", "pcgrad", "pcgrad8"):
        for key in ("loss", "smart_kl"):
            assert float(out[name][0][key]) == pytest.approx(float(out["one"][0][key]), rel=1e-5)
    for a, b in zip(out["one"][1], out["sharded"][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(out["pcgrad"][1], out["pcgrad8"][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(out["one"][1], out["pcgrad"][1], strict=True))


@pytest.mark.slow  # CLI runs
@pytest.mark.parametrize("fragment,term", [("smart", "smart_kl"), ("smart_proximal", "smart_prox")])
def test_a_short_training_run_with_smart_logs_its_terms(tmp_path, fragment, term):
    """4 CLI steps log the term; with the proximal point (momentum teacher in the optimizer
    state) the run is then extended to 6 steps from its checkpoint."""
    import subprocess
    import sys

    import cli_runs as runs

    run = tmp_path / fragment

    def train(steps: int) -> None:
        params = [f"TrainConfig.num_steps={steps}", "TrainConfig.eval_every=4",
                  "TrainConfig.max_eval_examples=16", "TrainConfig.batch_size=8",
                  "TrainConfig.progress=False", f"TrainConfig.model_dir={run}",
                  "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 1e-3}"]
        args = ["--gin_file=demo_xlmr.gin", f"--gin_file=methods/{fragment}.gin",
                *[f"--gin_param={p}" for p in params]]
        done = subprocess.run([sys.executable, "-m", "mtl_jax.train", *args],
                              env=runs.env_for(1), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    train(4)
    if fragment == "smart_proximal":
        train(6)
    logged = [r for r in runs.records(run, "train") if term in r]
    assert logged, f"no {term} logged"
    assert all(np.isfinite(r[term]) and r[term] >= 0 for r in logged)
    assert any(r[term] > 0 for r in logged)
    if fragment == "smart_proximal":
        assert {r["step"] for r in logged} >= {5, 6}, "the extended run did not train on"

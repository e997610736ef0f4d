"""R3F (Aghajanyan et al. 2020) and loss scaling (Muppet): the symmetric KL against its formula,
the whole R3F loss and gradient against PyTorch on the same XLM-R weights and noise, sigma = 0
against the plain objective, micro-batch exactness inside the train step, and each example's
loss-scaling factor."""

from __future__ import annotations

import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from mtl_jax import features as F
from mtl_jax.models import losses
from mtl_jax.models.hf_xlmr import encoder_state, head_state, load_hf_xlmr
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts

pytestmark = pytest.mark.usefixtures("fast_compiles")
VOCAB = 40


def test_symmetric_kl_is_the_formula_and_stays_finite_over_a_large_vocabulary():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 7)) * 3
    valid = np.arange(7)[None, :] < np.array([7, 3, 2, 5, 7])[:, None]

    def reference(x, y, v):  # float64, masked columns removed before the softmax
        out = []
        for xr, yr, vr in zip(x, y, v, strict=True):
            p = np.exp(xr[vr] - xr[vr].max())
            q = np.exp(yr[vr] - yr[vr].max())
            p, q = p / p.sum(), q / q.sum()
            out.append(np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))
        return np.array(out)

    masked_a = np.where(valid, a, np.finfo(np.float32).min)
    masked_b = np.where(valid, b, np.finfo(np.float32).min)
    ours = losses.symmetric_kl(jnp.asarray(masked_a, jnp.float32), jnp.asarray(masked_b, jnp.float32),
                               jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(ours), reference(a, b, valid), rtol=1e-5)

    # mT5's vocabulary with confident logits: log(softmax(x)) hits log(0) = -inf and the term
    # becomes NaN (the thesis's first attempt); log_softmax on both sides does not.
    big = rng.normal(size=(2, 250_112)).astype(np.float32) * 40
    noised = big + rng.uniform(-1, 1, size=big.shape).astype(np.float32)
    value = losses.symmetric_kl(jnp.asarray(big), jnp.asarray(noised))
    assert np.all(np.isfinite(np.asarray(value))) and np.all(np.asarray(value) > 0)
    naive_p = jax.nn.softmax(jnp.asarray(big), -1)
    naive_q = jax.nn.softmax(jnp.asarray(noised), -1)
    naive = jnp.sum((naive_p - naive_q) * (jnp.log(naive_p) - jnp.log(naive_q)), -1)
    assert not np.all(np.isfinite(np.asarray(naive))), "the naive form no longer fails here"


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(dropout=jax.random.key(seed), noise=jax.random.key(seed + 1))


def test_r3f_loss_and_gradient_match_pytorch_on_the_same_weights_and_noise(tmp_path):
    """XLM-R classifier: ours vs transformers with ``inputs_embeds = lookup + z`` and the KL
    written out in PyTorch (no padding, so HF's positions from embeddings equal ours)."""
    hf = helpers.hf_xlmr("cls", helpers.XLMR_HF_CONFIGS[1], seed=3, num_labels=3)
    model, cfg, _ = load_hf_xlmr(helpers.save(hf, tmp_path / "hf"))
    rng = np.random.default_rng(1)
    b, length = 4, 9
    ids = rng.integers(3, cfg.vocab_size, (b, length)).astype(np.int32)
    ids[:, 0] = 0
    batch = {F.INPUT_IDS: jnp.asarray(ids), F.ATTENTION_MASK: jnp.ones((b, length), jnp.int32),
             F.TASK_ID: jnp.zeros((b,), jnp.int32),
             F.LABELS: jnp.asarray(rng.integers(0, 3, b), jnp.int32)}
    base = obj.ClassificationObjective(num_tasks=1, num_labels=(3,))
    r3f = obj.R3FObjective(base, sigma=0.3, lam=0.7, noise="uniform")

    def loss_fn(m):
        loss, aux = r3f.finalize(r3f.terms(m, batch, deterministic=True, rngs=_rngs()))
        return loss, aux

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    z = r3f.sample_noise(_rngs().noise(), jnp.arange(b), (b, length, cfg.hidden_size))
    assert float(jnp.max(jnp.abs(z))) <= 0.3 and float(jnp.std(z)) == pytest.approx(
        0.3 / math.sqrt(3), rel=0.05)

    hf.zero_grad()
    tids = helpers.to_torch(ids)
    clean = hf(input_ids=tids).logits
    embeds = hf.roberta.embeddings.word_embeddings(tids) + torch.from_numpy(np.array(z))
    noised = hf(inputs_embeds=embeds).logits
    ce = torch.nn.functional.cross_entropy(clean, torch.from_numpy(np.asarray(batch[F.LABELS])).long())
    lp, lq = clean.log_softmax(-1), noised.log_softmax(-1)
    kl = ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1).mean()
    ref = ce + 0.7 * kl
    ref.backward()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-5)
    assert float(aux["r3f_kl"]) == pytest.approx(kl.item(), rel=1e-4)
    assert kl.item() > 1e-4, "the noise must move the predictions for this test to mean anything"

    assert_grads_match_hf(model, grads, hf)


def assert_grads_match_hf(model, grads, hf) -> None:
    """Our parameter gradients (``grads`` of ``model``) equal the PyTorch model's ``.grad`` on
    a layer of each kind (embeddings, attention, feed-forward, head) to 1e-4."""
    grad_model = nnx.merge(nnx.graphdef(model), grads, nnx.state(model, nnx.Not(nnx.Param)))
    ours = {**encoder_state(grad_model, "roberta.", pooler=False), **head_state(grad_model, 0)}
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.grad is not None}
    for name in ("roberta.embeddings.word_embeddings.weight",
                 "roberta.encoder.layer.0.attention.self.query.weight",
                 "roberta.encoder.layer.1.output.dense.weight",
                 "classifier.dense.weight", "classifier.out_proj.weight"):
        helpers.xlmr_assert_close(ours[name], hf_grads[name], rtol=1e-4, what=f"grad {name}")


def _t5() -> T5Model:
    cfg = T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                   num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0)
    return T5Model(cfg, rngs=nnx.Rngs(0))


def _xlmr() -> XLMRMultiTask:
    cfg = XLMRConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=32, max_position_embeddings=20, task_num_labels=(3, 2, 1),
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return XLMRMultiTask(cfg, rngs=nnx.Rngs(0))


def _encdec_batch(b: int = 8, length: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = (rng.random((b, length)) < 0.7).astype(np.float32)
    weights[:, 0] = 1
    return {F.ENCODER_INPUT_TOKENS: rng.integers(1, VOCAB, (b, length)).astype(np.int32),
            F.DECODER_INPUT_TOKENS: rng.integers(1, VOCAB, (b, length)).astype(np.int32),
            F.DECODER_TARGET_TOKENS: rng.integers(1, VOCAB, (b, length)).astype(np.int32),
            F.DECODER_LOSS_WEIGHTS: weights, F.TASK_ID: (np.arange(b) % 3).astype(np.int32)}


def _cls_batch(b: int = 8, length: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    task = (np.arange(b) % 3).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[::3, 3:] = 0
    ids = np.where(mask > 0, rng.integers(3, VOCAB, (b, length)), 1).astype(np.int32)
    ids[:, 0] = 0
    return {F.INPUT_IDS: ids, F.ATTENTION_MASK: mask, F.TASK_ID: task,
            F.LABELS: (rng.integers(0, 6, b) % np.array([3, 2, 1])[task]).astype(np.int32),
            F.REGRESSION_TARGETS: rng.normal(size=b).astype(np.float32)}


FAMILIES = {
    "t5": (_t5, lambda: obj.EncoderDecoderObjective(num_tasks=3), _encdec_batch),
    "xlmr": (_xlmr, lambda: obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1)),
             _cls_batch),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sigma_zero_gives_a_zero_term_and_the_plain_loss_and_gradient(family):
    make_model, make_objective, make_batch = FAMILIES[family]
    model, base = make_model(), make_objective()
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    r3f = obj.R3FObjective(base, sigma=0.0, lam=1.0)

    def loss(o):
        return lambda m: o.finalize(o.terms(m, batch, deterministic=True, rngs=_rngs()))

    (l_plain, _), g_plain = nnx.value_and_grad(loss(base), has_aux=True)(model)
    (l_r3f, aux), g_r3f = nnx.value_and_grad(loss(r3f), has_aux=True)(model)
    assert float(aux["r3f_kl"]) == 0.0
    assert float(l_r3f) == pytest.approx(float(l_plain), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_r3f), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_r3f_with_micro_batches_equals_the_whole_batch(family):
    """The noise of a row does not depend on the micro-batch split: 1 vs 4 micro-batches give
    the same loss, KL term and update (SGD with lr 1 exposes the gradient)."""
    make_model, make_objective, make_batch = FAMILIES[family]
    assert_micro_batches_exact(make_model, obj.R3FObjective(make_objective(), sigma=0.05, lam=0.5),
                               make_batch(), "r3f_kl")


def assert_micro_batches_exact(make_model, objective, batch, term: str) -> None:
    """One train step (dropout off, SGD with lr 1) with 1 and with 4 micro-batches: the same
    loss, named term and parameters; the term must be positive."""
    optimizer = opt.Optimizer(optax.sgd(1.0), lambda step: jnp.float32(1.0))
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("fsdp")
    results = []
    for micro in (1, 4):
        graphdef, state, shardings = ts.create_train_state(make_model, optimizer, mesh, rules, 0)
        bs = part.batch_sharding(mesh, rules)
        step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs,
                                  micro_batches=micro, rules=rules, deterministic=True)
        state, metrics = step(state, part.global_batch(batch, mesh, bs))
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m1, p1), (m4, p4) = results
    assert float(m1[term]) > 0
    assert float(m4[term]) == pytest.approx(float(m1[term]), rel=1e-5)
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_scaling_divides_each_example_by_the_log_of_its_task_classes():
    """Mixed-task batch: every example's loss is scaled by its own task's 1/log(n); the
    regression task (n = 1) is left unscaled."""
    batch = {k: jnp.asarray(v) for k, v in _cls_batch(b=9).items()}
    model = _xlmr()
    plain = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1), normalization="sum")
    scaled = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1), normalization="sum",
                                         loss_scaling="log_classes")
    factors = np.asarray(scaled.example_scale(batch))
    want = np.array([1 / math.log(3), 1 / math.log(2), 1.0])[np.asarray(batch[F.TASK_ID])]
    np.testing.assert_allclose(factors, want, rtol=1e-6)
    out = plain.outputs(model, batch, True, None)
    from mtl_jax.models.heads import per_example_loss

    per_example = np.asarray(per_example_loss(out, batch[F.LABELS], batch[F.REGRESSION_TARGETS]))
    real = np.asarray(batch[F.ATTENTION_MASK]).sum(-1) > 0
    assert float(scaled.terms_from(out, batch).numerator) == pytest.approx(
        float(np.sum(per_example * want * real)), rel=1e-5)
    assert float(plain.terms_from(out, batch).numerator) == pytest.approx(
        float(np.sum(per_example * real)), rel=1e-5)

    # Text-to-text: every token by 1/log(vocabulary size).
    t5, b = _t5(), {k: jnp.asarray(v) for k, v in _encdec_batch().items()}
    e_plain = obj.EncoderDecoderObjective(num_tasks=3, normalization="sum")
    e_scaled = obj.EncoderDecoderObjective(num_tasks=3, normalization="sum",
                                           loss_scaling="log_classes", vocab_size=VOCAB)
    logits = e_plain.outputs(t5, b, True, None)
    assert float(e_scaled.terms_from(logits, b).numerator) == pytest.approx(
        float(e_plain.terms_from(logits, b).numerator) / math.log(VOCAB), rel=1e-6)
    with pytest.raises(ValueError, match="loss_scaling must be one of"):
        obj.ClassificationObjective(num_tasks=1, num_labels=(2,), loss_scaling="log")


@pytest.mark.slow  # ~5 minutes on 2 cores
def test_bf16_mt5_with_r3f_over_a_250k_vocabulary_stays_finite_for_200_steps():
    """The thesis's first R3F attempt turned NaN over mT5's vocabulary: 200 bf16 steps with the
    reference's lambda, noise large enough to survive bf16 rounding, a learning rate that makes
    the logits confident, must give finite losses and KL terms and skip no update."""
    cfg = T5Config(vocab_size=250_112, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                   num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.1, dtype="bfloat16")
    objective = obj.R3FObjective(obj.EncoderDecoderObjective(num_tasks=3), sigma=1e-2, lam=1.0)
    optimizer = opt.make_optimizer("adafactor", learning_rate=3e-2, schedule="constant")
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("t5x")
    graphdef, state, shardings = ts.create_train_state(lambda: T5Model(cfg, rngs=nnx.Rngs(0)),
                                                       optimizer, mesh, rules, 0)
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules)
    batches = []
    for seed in range(4):
        b = _encdec_batch(b=4, length=8, seed=seed)
        for key in (F.ENCODER_INPUT_TOKENS, F.DECODER_INPUT_TOKENS, F.DECODER_TARGET_TOKENS):
            b[key] = b[key] * 6_000 % 250_000 + 1  # spread over the whole vocabulary
        batches.append(part.global_batch(b, mesh, bs))
    history = []
    for i in range(200):
        state, metrics = step(state, batches[i % 4])
        history.append(jax.device_get({k: metrics[k] for k in ("loss", "r3f_kl", "skipped")}))
    losses_ = np.array([float(h["loss"]) for h in history])
    kls = np.array([float(h["r3f_kl"]) for h in history])
    assert np.all(np.isfinite(losses_)) and np.all(np.isfinite(kls))
    assert sum(int(h["skipped"]) for h in history) == 0
    assert kls.max() > 0, "the noise never reached the predictions"
    assert losses_[-20:].mean() < losses_[:20].mean(), "it did not train"


def test_r4f_heads_end_with_spectral_norm_one_and_training_matches_evaluation():
    """After training steps every task head's effective out projection has largest singular
    value 1 (to 1e-3); the power-iteration state lives in the checkpointed non-trainable state,
    moves with the steps, and the eval step sees exactly the weights the train step used."""
    import dataclasses

    cfg = dataclasses.replace(_xlmr().config, head_spectral_norm=True)
    objective = obj.R3FObjective(obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1)),
                                 sigma=1e-3, lam=0.1)
    optimizer = opt.make_optimizer("adamw", learning_rate=3e-2)
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("fsdp")
    graphdef, state, shardings = ts.create_train_state(
        lambda: XLMRMultiTask(cfg, rngs=nnx.Rngs(0)), optimizer, mesh, rules, 0)
    u0 = np.asarray(jax.device_get(state.rest)["heads"]["sn_u"])
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules,
                              donate=False)
    batch = part.global_batch(_cls_batch(b=12), mesh, bs)
    for _ in range(25):
        state, _ = step(state, batch)
    model = ts.merge_model(graphdef, jax.device_get(state.params), jax.device_get(state.rest))
    assert not np.allclose(np.asarray(model.heads.sn_u[...]), u0), "the iteration never ran"
    effective = np.asarray(model.heads.out_projection())
    for t, n in enumerate(cfg.task_num_labels):
        top = np.linalg.svd(effective[t][:, :n], compute_uv=False)[0]
        assert top <= 1 + 1e-3 and top > 0.9, (t, top)
    raw_top = np.linalg.svd(np.asarray(model.heads.out_kernel[...][0]), compute_uv=False)[0]
    assert abs(raw_top - 1) > 1e-2, "the raw kernel is already normalised: nothing was tested"
    # The eval step's logits come from the same normalised kernels as a direct forward.
    predict = st.make_eval_step(graphdef, lambda m, b: obj.ClassificationObjective(
        num_tasks=3, num_labels=(3, 2, 1)).predict(m, b)["logits"], mesh, shardings, bs,
        rules=rules)
    via_step = np.asarray(jax.device_get(predict(state, batch)))
    direct = np.asarray(model(jnp.asarray(_cls_batch(b=12)[F.INPUT_IDS]),
                              jnp.asarray(_cls_batch(b=12)[F.ATTENTION_MASK]),
                              jnp.asarray(_cls_batch(b=12)[F.TASK_ID]))["logits"])
    np.testing.assert_allclose(via_step, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~70 s: two CLI runs
def test_r4f_metrics_logged_at_the_best_step_equal_evaluate_of_the_best_checkpoint(tmp_path):
    """The thesis saw evaluation during training disagree with evaluation after reloading the
    best checkpoint; here the train CLI's logged metrics at the best step and the evaluate CLI's
    on the reloaded best checkpoint must be the same numbers."""
    import json
    import subprocess
    import sys

    import cli_runs as runs

    run = tmp_path / "r4f"
    params = ["TrainConfig.mixture=ctkfacts_cls", "TrainConfig.num_steps=12",
              "TrainConfig.eval_every=4", "TrainConfig.max_eval_examples=48",
              "TrainConfig.batch_size=16", "TrainConfig.progress=False",
              "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 1e-3}",
              f"TrainConfig.model_dir={run}"]
    args = ["--gin_file=demo_xlmr.gin", "--gin_file=methods/r4f.gin",
            *[f"--gin_param={p}" for p in params]]
    env = runs.env_for(1)
    done = subprocess.run([sys.executable, "-m", "mtl_jax.train", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = runs.records(run, "eval_summary")
    best = summaries[-1]["best_step"]
    logged = {(r["task"], r["language"]): r["value"] for r in runs.records(run, "eval")
              if r["step"] == best and r["metric"] == "macro_f1"}
    done = subprocess.run([sys.executable, "-m", "mtl_jax.evaluate", *args, f"--checkpoint={run}",
                           "--step=best", f"--output_dir={tmp_path / 'eval'}"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / f"eval_validation_step{best}.json").read_text())
    reloaded = {(task, lang): v for task, row in report["scores"].items() for lang, v in row.items()}
    assert logged and reloaded == pytest.approx(logged, abs=1e-12)


@pytest.mark.parametrize("method", ["loss_scaling", "lora", "r4f", "pcgrad+r3f+scaling"])
def test_micro_batches_stay_exact_with_each_method(method):
    """1 vs 4 micro-batches (dropout off) give the same update with each method switched on
    (R3F alone and PCGrad alone are covered above and in test_pcgrad.py)."""
    import dataclasses

    from mtl_jax.models.lora import LoRAConfig
    from mtl_jax.training.pcgrad import PCGrad

    cfg = _xlmr().config
    scaled = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1),
                                         loss_scaling="log_classes")
    objective, combiner, partition = scaled, None, None
    if method == "lora":
        cfg = dataclasses.replace(cfg, lora=LoRAConfig(rank=4, alpha=8.0))
        partition = opt.make_partition(train=["heads"], lora=True)
    elif method == "r4f":
        cfg = dataclasses.replace(cfg, head_spectral_norm=True)
        objective = obj.R3FObjective(scaled, sigma=1e-2, lam=0.5)
    elif method.startswith("pcgrad"):
        objective, combiner = obj.R3FObjective(scaled, sigma=1e-2, lam=0.5), PCGrad()
    optimizer = opt.Optimizer(optax.sgd(1.0), lambda step: jnp.float32(1.0), partition)
    mesh = part.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = part.rules_by_name("fsdp")
    results = []
    for micro in (1, 4):
        graphdef, state, shardings = ts.create_train_state(
            lambda: XLMRMultiTask(cfg, rngs=nnx.Rngs(0)), optimizer, mesh, rules, 0)
        bs = part.batch_sharding(mesh, rules)
        step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs,
                                  micro_batches=micro, rules=rules, deterministic=True,
                                  combiner=combiner)
        state, metrics = step(state, part.global_batch(_cls_batch(b=8), mesh, bs))
        results.append((jax.device_get(metrics), jax.device_get((state.params, state.rest))))
    (m1, s1), (m4, s4) = results
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

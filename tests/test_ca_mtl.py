"""CA-MTL on the XLM-R encoder: equal to the base encoder at init, per-example conditioning, the
formulas against a NumPy forward and the reference's block_diag, the frozen set, training, HF
import/export, checkpoint resume."""

from __future__ import annotations

import dataclasses
import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy.special import erf

from mtl_jax import features as F
from mtl_jax.models import ca_mtl, hf_xlmr
from mtl_jax.models.ca_mtl import CAMTLConfig, ConditionalAttentionBias
from mtl_jax.models.layers import eager_sharding_if_mesh
from mtl_jax.models.lora import LoRAConfig
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts

VOCAB = 64
TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=24, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, task_num_labels=(3, 2, 1))
CA = CAMTLConfig(max_seq_length=8)  # hidden 16 / L 8: N = 2 blocks of 4


def _inputs(seed: int = 0, batch: int = 6, length: int = 7):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[4, 5:] = 0
    ids[mask == 0] = 1
    return ids, mask, (np.arange(batch) % 3).astype(np.int32)


def _randomize_conditional(model: XLMRMultiTask, seed: int, scale: float = 0.3) -> None:
    """Every CA-MTL parameter random (as after training), so each part changes the output."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if ca_mtl.is_conditional_param("/".join(map(str, path))):
            shape = var.get_value().shape
            var.set_value(jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale))


def _flat(model) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# -- the reference's block-diagonal matrix and a NumPy forward ---------------------------------------


def _reference_block_diag(a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, blocks: int) -> np.ndarray:
    """The reference's CBDA forward (torch ``chunk`` + ``block_diag`` + cut to ``L``) per example."""
    out = (1 + torch.tensor(gamma)[:, None]) * torch.tensor(a)[None] + torch.tensor(beta)[:, None]
    full = torch.stack([torch.block_diag(*ob.chunk(blocks, 0)) for ob in out])
    return full[:, :, : full.size(1)].numpy()


@pytest.mark.parametrize("hidden,length", [(16, 8), (40, 10)])  # N = 2 even, N = 4 uneven
def test_attention_bias_is_the_references_block_diagonal(hidden, length):
    ca = CAMTLConfig(max_seq_length=length, task_embed_dim=5)
    with eager_sharding_if_mesh():
        module = ConditionalAttentionBias(5, hidden, ca, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for var in (module.matrix, module.film.gamma.kernel, module.film.gamma.bias,
                module.film.beta.kernel, module.film.beta.bias):
        var.set_value(jnp.asarray(rng.normal(size=var.get_value().shape).astype(np.float32)))
    z = rng.normal(size=(3, 5)).astype(np.float32)
    gamma, beta = (np.asarray(x) for x in module.film(jnp.asarray(z)))
    want = _reference_block_diag(np.asarray(module.matrix.get_value()), gamma, beta, hidden // length)
    got = np.asarray(module(jnp.asarray(z), length))
    assert got.shape == (3, 1, length, length)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6, atol=1e-6)
    # A shorter input gets the top-left corner (what padding it to L gives its real tokens).
    np.testing.assert_allclose(np.asarray(module(jnp.asarray(z), length - 3))[:, 0],
                               want[:, : length - 3, : length - 3], rtol=1e-6, atol=1e-6)


def _numpy_forward(params: dict[str, np.ndarray], config: XLMRConfig, ids, mask, task_id) -> np.ndarray:
    """The CA-MTL encoder's last hidden state in float64, from the paper's formulas."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    h, nh = config.hidden_size, config.num_attention_heads
    d = h // nh
    sets = config.ca_mtl.layer_sets(config.num_hidden_layers)

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + config.layer_norm_eps) * w + b

    def film(prefix, z):
        g = z @ p[f"{prefix}/gamma/kernel"] + p[f"{prefix}/gamma/bias"]
        b = z @ p[f"{prefix}/beta/kernel"] + p[f"{prefix}/beta/bias"]
        return g, b

    z = p["encoder/ca_task/embedding"][task_id]
    pos = np.cumsum(mask, 1) * mask + config.pad_token_id
    e = "encoder/embeddings"
    x = p[f"{e}/word_embeddings/embedding"][ids] + p[f"{e}/position_embeddings/embedding"][pos]
    x = ln(x + p[f"{e}/token_type_embeddings/embedding"][0], p[f"{e}/layer_norm/scale"], p[f"{e}/layer_norm/bias"])
    g, b = film("encoder/ca_alignment", z)
    x = (1 + g[:, None]) * x + b[:, None]
    n, length = ids.shape
    for i in range(config.num_hidden_layers):
        lp = f"encoder/layers/{i}"
        q, k, v = (np.einsum("blh,hnd->bnld", x, p[f"{lp}/attention/{m}/kernel"])
                   + p[f"{lp}/attention/{m}/bias"][None, :, None] for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        if i in sets["attention"]:
            g, b = film(f"{lp}/attention/ca_attention/film", z)
            m = _reference_block_diag(p[f"{lp}/attention/ca_attention/matrix"], g, b,
                                      h // config.ca_mtl.max_seq_length)
            scores = scores + m[:, None, :length, :length]
        scores = np.where(mask[:, None, None, :] > 0, scores, -1e30)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (w / w.sum(-1, keepdims=True)) @ v
        a = np.einsum("bnld,ndh->blh", ctx, p[f"{lp}/attention/out/kernel"]) + p[f"{lp}/attention/out/bias"]

        def gain(name, w_, i=i, lp=lp):
            if i not in sets["norm"]:
                return w_
            g, b = film(f"{lp}/ca_{name}", z)
            return ((1 + g) * w_ + b)[:, None]

        x = ln(a + x, gain("attention_norm", p[f"{lp}/attention_norm/scale"]), p[f"{lp}/attention_norm/bias"])
        inter = x @ p[f"{lp}/intermediate/kernel"] + p[f"{lp}/intermediate/bias"]
        f = (0.5 * inter * (1 + erf(inter / math.sqrt(2)))) @ p[f"{lp}/output/kernel"] + p[f"{lp}/output/bias"]
        if i in sets["adapter"]:
            g, b = film(f"{lp}/ca_adapter/film", z)
            t = (1 + g[:, None]) * f + b[:, None]
            ap = f"{lp}/ca_adapter"
            t = t @ p[f"{ap}/down/kernel"] + p[f"{ap}/down/bias"]
            f = f + t @ p[f"{ap}/up/kernel"] + p[f"{ap}/up/bias"]
        x = ln(f + x, gain("output_norm", p[f"{lp}/output_norm/scale"]), p[f"{lp}/output_norm/bias"])
    return x


def test_forward_matches_numpy_formulas_with_random_conditioning():
    config = XLMRConfig(**TINY, ca_mtl=CA)
    model = helpers.xlmr_random_model(config, seed=3)
    _randomize_conditional(model, seed=4)
    ids, mask, task = _inputs()
    got = np.asarray(helpers.xlmr_forward(model, ids, mask, task)["hidden"])
    want = _numpy_forward(_flat(model), config, ids, mask, task)
    real = mask > 0
    np.testing.assert_allclose(got[real], want[real], rtol=2e-5, atol=2e-5)


# -- equal to the base model at init; per-example conditioning -------------------------------------


def test_zero_initialised_conditioning_equals_the_base_encoder():
    base = XLMRMultiTask(XLMRConfig(**TINY), rngs=nnx.Rngs(0))
    model = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=CA), rngs=nnx.Rngs(0))
    flat_base, flat = _flat(base), _flat(model)
    # Same seed, same base weights: CA-MTL's modules are attached after the base parameters.
    assert {k for k in flat if not ca_mtl.is_conditional_param(k)} == set(flat_base)
    for k, v in flat_base.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
    ids, mask, task = _inputs()
    want, got = helpers.xlmr_forward(base, ids, mask, task), helpers.xlmr_forward(model, ids, mask, task)
    for key in ("hidden", "logits", "regression"):  # exact in math; XLA fuses the two differently
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-6, atol=1e-6,
                                   err_msg=key)
    # ... and each part does change the function once its parameters move.
    _randomize_conditional(model, seed=1)
    moved = helpers.xlmr_forward(model, ids, mask, task)
    assert np.abs(np.asarray(moved["hidden"]) - np.asarray(want["hidden"])).max() > 1e-2


def test_mixed_batch_equals_each_task_alone_and_tasks_differ():
    model = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=CA), rngs=nnx.Rngs(0))
    _randomize_conditional(model, seed=2)
    ids, mask, task = _inputs(batch=9)
    mixed = np.asarray(helpers.xlmr_forward(model, ids, mask, task)["hidden"])
    for t in range(3):
        rows = task == t
        alone = np.asarray(helpers.xlmr_forward(model, ids[rows], mask[rows], task[rows])["hidden"])
        np.testing.assert_allclose(mixed[rows], alone, rtol=1e-6, atol=1e-6, err_msg=f"task {t}")
    other = np.asarray(helpers.xlmr_forward(model, ids, mask, (task + 1) % 3)["hidden"])
    assert np.abs(other - mixed).max() > 1e-2  # the task embedding conditions every example


def test_config_errors_name_the_fields():
    with pytest.raises(ValueError, match=r"hidden_size=16 must be a multiple of CAMTLConfig.max_seq_length=12"):
        XLMRConfig(**TINY, ca_mtl=CAMTLConfig(max_seq_length=12))
    with pytest.raises(ValueError, match=r"XLMRConfig.scan_layers=False"):
        XLMRConfig(**TINY, ca_mtl=CA, scan_layers=True)
    with pytest.raises(ValueError, match=r"adapter_layers \[5\]"):
        XLMRConfig(**TINY, ca_mtl=CAMTLConfig(max_seq_length=8, adapter_layers=(5,)))
    model = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=CA), rngs=nnx.Rngs(0))
    ids, mask, task = _inputs(length=9)
    with pytest.raises(ValueError, match=r"exceeds CAMTLConfig.max_seq_length=8"):
        model(ids, mask, task)
    with pytest.raises(ValueError, match="pass task_id"):
        model.encoder(ids[:, :8], mask[:, :8])
    with pytest.raises(ValueError, match="cannot be exported to Hugging Face"):
        hf_xlmr.export_hf_xlmr(model, model.config, "/nonexistent", ("a", "b", "c"))
    assert CAMTLConfig.coerce(dataclasses.asdict(CA)) == CA  # the checkpoint record reads back


@pytest.mark.slow  # two more compiled forwards
def test_scan_layers_with_the_same_modules_in_every_layer():
    every = CAMTLConfig(max_seq_length=8, norm_layers=(0, 1), adapter_layers=(0, 1))
    loop = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=every), rngs=nnx.Rngs(0))
    _randomize_conditional(loop, seed=5)
    scan = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=every, scan_layers=True), rngs=nnx.Rngs(0))
    nnx.update(scan, nnx.state(loop))
    ids, mask, task = _inputs()
    np.testing.assert_allclose(np.asarray(helpers.xlmr_forward(scan, ids, mask, task)["hidden"]),
                               np.asarray(helpers.xlmr_forward(loop, ids, mask, task)["hidden"]),
                               rtol=1e-6, atol=1e-6)


# -- freezing and training ------------------------------------------------------------------------


FOUR = dict(TINY, num_hidden_layers=4)


def _expected_frozen(path: str) -> bool:
    """The frozen set written out: embeddings and layers 0-1 of 4, no conditional parameter."""
    if "/ca_" in path:
        return False
    return path.startswith("encoder/embeddings/") or path.startswith(("encoder/layers/0/", "encoder/layers/1/"))


def test_frozen_set_is_the_configs_in_the_parameter_table():
    config = XLMRConfig(**FOUR, ca_mtl=CA)
    partition = opt.make_partition(model_frozen=ca_mtl.frozen_predicate(config))
    _, params, _ = ts.abstract_model(lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0)))
    table = part.parameter_table(params, part.make_mesh(8, 1, 1), part.rules_by_name("t5x"),
                                 lambda p: partition(p) == opt.FROZEN)
    lines = table.splitlines()
    rows = {ln.split()[0]: ln.split()[-1] for ln in lines[2:-1]}
    flat = {part.path_str(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
    assert set(rows) == set(flat)
    for path, trains in rows.items():
        assert trains == ("no" if _expected_frozen(path) else "yes"), path
    # Conditioning inside the frozen layers trains (the reference freezes these by a name slip).
    for path in ("encoder/layers/0/attention/ca_attention/film/gamma/kernel",
                 "encoder/layers/1/attention/ca_attention/matrix", "encoder/ca_task/embedding",
                 "encoder/ca_alignment/beta/kernel"):
        assert rows[path] == "yes", path
    n_train = sum(math.prod(v.shape) for k, v in flat.items() if rows[k] == "yes")
    n_all = sum(math.prod(v.shape) for v in flat.values())
    assert f"{n_train:,} trainable / {n_all - n_train:,} frozen parameters" in lines[-1]
    # A user's freeze regex still wins; with LoRA the conditional parameters train as LoRA's do.
    user = opt.make_partition(freeze=[r"ca_task"], model_frozen=ca_mtl.frozen_predicate(config))
    assert user("encoder/ca_task/embedding") == opt.FROZEN
    with_lora = opt.make_partition(lora=True, model_frozen=ca_mtl.frozen_predicate(config))
    assert with_lora("encoder/layers/3/ca_adapter/up/kernel") == opt.TRAINABLE
    assert with_lora("encoder/layers/3/output/kernel") == opt.FROZEN
    assert ca_mtl.frozen_predicate(XLMRConfig(**FOUR, ca_mtl=dataclasses.replace(CA, freeze_lower=False))) is None


def test_gradients_reach_every_conditioning_map_in_the_frozen_layer():
    config = XLMRConfig(**TINY, ca_mtl=CA)
    model = helpers.xlmr_random_model(config, seed=6)
    _randomize_conditional(model, seed=7)
    ids, mask, task = _inputs()
    labels = np.where(task == 2, 0, ids[:, 1] % 2).astype(np.int32)
    batch = {F.INPUT_IDS: ids, F.ATTENTION_MASK: mask, F.TASK_ID: task, F.LABELS: labels,
             F.REGRESSION_TARGETS: np.full(task.shape, 0.5, np.float32)}
    objective = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1))
    grads = nnx.jit(nnx.grad(lambda m: objective(m, batch)[0]))(model)
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    frozen = ca_mtl.frozen_predicate(config)
    in_layer0 = [k for k in flat if k.startswith("encoder/layers/0/") and ca_mtl.is_conditional_param(k)]
    assert len(in_layer0) == 5 and not any(frozen(k) for k in in_layer0)
    for key in [*in_layer0, "encoder/ca_task/embedding", "encoder/ca_alignment/gamma/kernel"]:
        assert np.abs(flat[key]).max() > 0, key


@pytest.mark.slow  # a sharded train step compiled on 8 devices (~30-60 s on 2 loaded cores)
def test_training_moves_conditioning_in_frozen_layers_and_lowers_the_loss():
    config = XLMRConfig(**dict(TINY, hidden_dropout_prob=0.1), ca_mtl=CA)  # layer 0 frozen
    partition = opt.make_partition(model_frozen=ca_mtl.frozen_predicate(config))
    optimizer = opt.make_optimizer("adamw", learning_rate=1e-2, weight_decay=0.0, partition_fn=partition)
    mesh, rules = part.make_mesh(2, 2, 2), part.rules_by_name("fsdp")
    graphdef, state, shardings = ts.create_train_state(
        lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0)), optimizer, mesh, rules)
    p0 = {part.path_str(k): v for k, v in
          jax.tree_util.tree_flatten_with_path(helpers.host(state.params))[0]}
    ids, mask, task = _inputs(batch=8, length=8)
    labels = np.where(task == 2, 0, ids[:, 1] % 2).astype(np.int32)
    batch = {F.INPUT_IDS: ids, F.ATTENTION_MASK: mask, F.TASK_ID: task, F.LABELS: labels,
             F.REGRESSION_TARGETS: (ids[:, 1] % 5 / 4.0).astype(np.float32)}
    objective = obj.ClassificationObjective(num_tasks=3, num_labels=(3, 2, 1))
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules,
                              deterministic=False)
    gb = part.global_batch(batch, mesh, bs)
    losses = []
    for _ in range(12):
        state, metrics = step(state, gb)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    new = {part.path_str(k): v for k, v in
           jax.tree_util.tree_flatten_with_path(helpers.host(state.params))[0]}
    for key, value in p0.items():
        if partition(key) == opt.FROZEN:
            np.testing.assert_array_equal(new[key], value, err_msg=key)  # bit-identical
        elif not key.startswith("encoder/pooler/"):  # the heads read the first token, not the pooler
            # every trainable parameter got gradient, the frozen layers' conditioning too
            assert not np.array_equal(new[key], value), key


# -- Hugging Face import, gin, checkpoint resume ----------------------------------------------------


@pytest.mark.slow  # an HF checkpoint written and read back
def test_pretrained_import_starts_unchanged(tmp_path):
    cfg = helpers.XLMR_HF_CONFIGS[1]  # hidden 32
    directory = helpers.save(helpers.hf_xlmr("cls", cfg, seed=0, num_labels=3), tmp_path / "cls")
    plain = hf_xlmr.load_hf_xlmr(directory, task_num_labels=(3, 2)).model
    ca = CAMTLConfig(max_seq_length=16)
    model = hf_xlmr.load_hf_xlmr(directory, task_num_labels=(3, 2), ca_mtl=ca).model
    flat = _flat(model)
    assert any(ca_mtl.is_conditional_param(k) for k in flat)
    assert np.abs(flat["encoder/ca_task/embedding"]).max() > 0  # kept its own initialisation
    ids, mask = helpers.xlmr_inputs(plain.config, seed=0)
    task = jnp.asarray([0, 1, 0, 1], jnp.int32)
    want, got = helpers.xlmr_forward(plain, ids, mask, task), helpers.xlmr_forward(model, ids, mask, task)
    for key in ("hidden", "logits"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-6, atol=1e-6,
                                   err_msg=key)


def test_gin_recipe_and_run_partition():
    import gin

    from mtl_jax import configurables, experiment, gin_config

    gin.clear_config()
    try:
        gin_config.parse(["demo_xlmr.gin", "methods/ca_mtl.gin"],
                         ["TrainConfig.sequence_length={'inputs': 64}"])
        cfg = configurables.train_config()
    finally:
        gin.clear_config()
    assert cfg.model_config.ca_mtl == CAMTLConfig()
    layout = type("Layout", (), {"head_labels": (3, 2)})()
    config = experiment.model_config(cfg, layout, VOCAB)
    assert config.ca_mtl.max_seq_length == 64  # from TrainConfig.sequence_length
    optimizer = experiment.make_optimizer(cfg, cfg.optimizer,
                                          model_frozen=ca_mtl.frozen_predicate(config))
    assert optimizer.partition_fn("encoder/embeddings/word_embeddings/embedding") == opt.FROZEN
    assert optimizer.partition_fn("encoder/layers/0/attention/query/kernel") == opt.FROZEN
    assert optimizer.partition_fn("encoder/layers/0/attention/ca_attention/matrix") == opt.TRAINABLE
    assert optimizer.partition_fn("encoder/layers/1/attention/query/kernel") == opt.TRAINABLE
    assert optimizer.partition_fn("heads/out_kernel") == opt.TRAINABLE


@pytest.mark.slow
def test_lora_and_ca_mtl_together_start_unchanged():
    base = XLMRMultiTask(XLMRConfig(**TINY), rngs=nnx.Rngs(0))
    both = XLMRMultiTask(XLMRConfig(**TINY, ca_mtl=CA, lora=LoRAConfig(rank=2)), rngs=nnx.Rngs(0))
    ids, mask, task = _inputs()
    np.testing.assert_allclose(np.asarray(helpers.xlmr_forward(both, ids, mask, task)["logits"]),
                               np.asarray(helpers.xlmr_forward(base, ids, mask, task)["logits"]),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # three tiny CLI runs (~1-2 min on 2 loaded cores)
@pytest.mark.usefixtures("fast_compiles")
def test_cli_run_checkpoints_and_resumes_exactly(tmp_path):
    import cli_runs as runs

    from mtl_jax import train as train_cli

    def train(model_dir, steps: int) -> None:
        params = ["XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=2",
                  "XLMRConfig.num_attention_heads=2", "XLMRConfig.intermediate_size=64",
                  "XLMRConfig.hidden_dropout_prob=0.1",  # dropout on: resume redraws the same masks
                  "TrainConfig.sequence_length={'inputs': 16}", f"TrainConfig.num_steps={steps}",
                  "TrainConfig.eval_every=100", "TrainConfig.checkpoint_every=3",
                  "TrainConfig.batch_size=8", "TrainConfig.eval_batch_size=8",
                  "TrainConfig.max_eval_examples=8", "TrainConfig.progress=False",
                  "TrainConfig.async_checkpoints=False",
                  "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 1e-3}",
                  f"TrainConfig.model_dir={model_dir}"]
        args = ["--gin_file=demo_xlmr.gin", "--gin_file=methods/ca_mtl.gin",
                *[f"--gin_param={p}" for p in params]]
        assert train_cli.main(args) == 0

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(reference, 6)
    train(resumed, 3)
    train(resumed, 6)
    ref, run = runs.records(reference, "train"), runs.records(resumed, "train")
    assert [r["step"] for r in run] == list(range(1, 7))  # 4-6 continue from checkpoint 3
    assert [r["loss"] for r in run] == [r["loss"] for r in ref]
    ref_params, run_params = runs.final_params(reference, 6), runs.final_params(resumed, 6)
    assert any("ca_task" in k for k in ref_params)
    for name in ref_params:
        np.testing.assert_array_equal(run_params[name], ref_params[name], err_msg=name)

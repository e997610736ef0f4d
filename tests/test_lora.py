"""LoRA (Hu et al. 2021): the wrapped dense layer, its place in both model families, the partition
that trains only LoRA (plus named parameters) and the exports.

References: the model without LoRA on the same base weights (zero delta at init), the merged model
``W + A B * alpha/r`` (after training steps), explicit gradients of the loss (what the step may
differentiate) and peft + transformers' PyTorch models (the exported adapter loaded by
``peft.PeftModel.from_pretrained`` must give our unmerged logits).
"""

from __future__ import annotations

import dataclasses
import json
import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from mtl_jax import convert
from mtl_jax import features as F
from mtl_jax.models import checkpoint_io, hf_t5, hf_xlmr, lora, peft_adapter
from mtl_jax.models.layers import DenseGeneral, eager_sharding_if_mesh
from mtl_jax.models.lora import LoRAConfig, LoRADense
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("fast_compiles")

VOCAB = 64
T5_TINY = dict(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=2,
               num_heads=2, dropout_rate=0.0)
XLMR_TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=24, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, task_num_labels=(3, 2))


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    real = np.abs(want) < np.finfo(np.float32).max  # not a masked padded-vocabulary logit
    return float(np.abs(got - want)[real].max() / np.abs(want[real]).max())


def _randomize_lora(model: nnx.Module, seed: int, scale: float = 0.3) -> None:
    """A and B as after training: B nonzero, so the update shows in every output."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        for var in (layer.lora_a, layer.lora_b):
            shape = var.get_value().shape
            var.set_value(jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale))


def _t5_tokens(seed: int = 0, batch: int = 3, length: int = 7):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (batch, length)).astype(np.int32)
    enc[1:, -2:] = 0
    dec = rng.integers(2, VOCAB, (batch, length - 2)).astype(np.int32)
    dec[:, 0] = 0
    return enc, dec


def _t5_logits(model, enc, dec):
    """Over the real vocabulary (comparable with peft/transformers)."""
    return helpers.t5_forward(model, jnp.asarray(enc), jnp.asarray(dec))


# -- config and layer -------------------------------------------------------------------------------


def test_config_validation_and_json_round_trip():
    cfg = LoRAConfig(rank=32, alpha=32, dropout=0.1, targets=["attention/query$"])
    assert cfg.targets == ("attention/query$",) and cfg.scaling == 1.0
    assert LoRAConfig.coerce(dataclasses.asdict(cfg)) == cfg
    t5 = T5Config(**T5_TINY, lora=cfg)
    assert checkpoint_io.config_from_fields("t5", checkpoint_io.config_to_json(t5)) == t5
    for bad, match in [(dict(rank=0), "rank"), (dict(alpha=0), "alpha"), (dict(dropout=1.0), "dropout"),
                       (dict(targets=()), "empty"), (dict(targets=("(",)), "regular expression")]:
        with pytest.raises(ValueError, match=match):
            LoRAConfig(**bad)
    with pytest.raises(ValueError, match="match no dense layer"):
        T5Model(T5Config(**T5_TINY, lora=LoRAConfig(targets=("attention/qeury$",))), rngs=nnx.Rngs(0))


def test_default_targets_are_pefts_q_and_v_in_both_families():
    t5 = T5Model(T5Config(**T5_TINY, lora=LoRAConfig()), rngs=nnx.Rngs(0))
    names = sorted("/".join(map(str, p)) for p, _ in lora.lora_layers(t5))
    want = [f"decoder/layers/{i}/{a}/{m}" for i in range(2) for a in ("cross_attention", "self_attention")
            for m in ("query", "value")] + ["encoder/layers/0/attention/query", "encoder/layers/0/attention/value"]
    assert names == sorted(want)
    xlmr = XLMRMultiTask(XLMRConfig(**XLMR_TINY, lora=LoRAConfig()), rngs=nnx.Rngs(0))
    names = sorted("/".join(map(str, p)) for p, _ in lora.lora_layers(xlmr))
    assert names == [f"encoder/layers/{i}/attention/{m}" for i in range(2) for m in ("query", "value")]


def test_init_a_kaiming_uniform_b_zero_and_axes():
    rngs = nnx.Rngs(3)
    for in_f, out_f, axes in [(256, (4, 8), ("embed", "heads", "kv")),
                              ((8, 32), 48, ("heads", "kv", "embed"))]:
        with eager_sharding_if_mesh():
            base = DenseGeneral(in_f, out_f, axis_names=axes, rngs=rngs)
            layer = LoRADense(base, LoRAConfig(rank=64, alpha=16), rngs=rngs)
        a, b = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
        fan_in = math.prod(layer.in_features)
        bound = 1 / math.sqrt(fan_in)
        assert a.shape == layer.in_features + (64,) and b.shape == (64,) + layer.out_features
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
        # Uniform: each quarter of [-bound, bound] holds a quarter of the values (5 sigma).
        counts = np.histogram(a, bins=4, range=(-bound, bound))[0] / a.size
        assert np.all(np.abs(counts - 0.25) < 5 * math.sqrt(0.25 * 0.75 / a.size)), counts
        np.testing.assert_array_equal(b, 0.0)
        assert layer.kernel is base.kernel  # the base kernel is the same variable, same path
        n_in = len(layer.in_features)
        meta = lambda v: tuple(v.get_metadata()["out_sharding"])  # noqa: E731
        assert meta(layer.lora_a) == axes[:n_in] + ("lora_rank",)
        assert meta(layer.lora_b) == ("lora_rank",) + axes[n_in:]
        assert layer.scaling == 16 / 64


def test_dropout_on_the_lora_path_only():
    """With A = I and B = I * r/alpha the update is exactly dropout(x): a p-fraction of zeros and
    survivors scaled by 1/(1-p); the base path never sees the mask; eval is deterministic."""
    p = 0.5
    with eager_sharding_if_mesh():
        base = DenseGeneral(8, 8, axis_names=("embed", "mlp"), rngs=nnx.Rngs(0))
        layer = LoRADense(base, LoRAConfig(rank=8, alpha=4, dropout=p), rngs=nnx.Rngs(1))
    layer.lora_a.set_value(jnp.eye(8))
    layer.lora_b.set_value(jnp.eye(8) / layer.scaling)
    x = jax.random.normal(jax.random.key(0), (64, 8)) + 3.0  # nonzero inputs
    base_out = base(x)
    np.testing.assert_allclose(layer(x) - base_out, x, rtol=1e-5)
    delta = np.asarray(layer(x, deterministic=False, rngs=nnx.Rngs(dropout=5)) - base_out)
    dropped = np.abs(delta) < 1e-4
    assert abs(dropped.mean() - p) < 5 * math.sqrt(p * (1 - p) / dropped.size)
    np.testing.assert_allclose(delta[~dropped], np.asarray(x)[~dropped] / (1 - p), rtol=1e-5)
    # Inside a model: with B = 0 active LoRA dropout changes nothing (base path undropped) ...
    cfg = T5Config(**T5_TINY, lora=LoRAConfig(rank=4, dropout=0.5))
    model = T5Model(cfg, rngs=nnx.Rngs(0))
    enc, dec = _t5_tokens()
    det = np.asarray(model(enc, dec))
    np.testing.assert_array_equal(model(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=1)), det)
    # ... and with B != 0 it does, with a fresh mask per key.
    _randomize_lora(model, 0)
    det = np.asarray(model(enc, dec))
    d1 = np.asarray(model(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=1)))
    d2 = np.asarray(model(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=2)))
    assert not np.allclose(d1, det) and not np.allclose(d1, d2)


def test_lora_dropout_sites_use_the_models_dropout_stream(monkeypatch):
    """Every LoRA layer drops its own input at LoRA's rate, each with its own key from the
    model's ``dropout`` stream (the model's own dropout is off here)."""
    records = helpers.recording_dropout(monkeypatch)
    model = T5Model(T5Config(**T5_TINY, lora=LoRAConfig(rank=4, dropout=0.3)), rngs=nnx.Rngs(0))
    enc, dec = _t5_tokens()
    model(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=0))
    assert len(records) == 2 + 2 * 2 * 2  # q, v: 1 encoder attention, 2 x 2 decoder attentions
    helpers.check_dropout_sites([(np.asarray(x), np.asarray(y)) for x, y in records], lambda x: 0.3)


# -- zero delta at init ------------------------------------------------------------------------------


def test_zero_delta_at_init_t5_fresh_pretrained_and_converted(tmp_path):
    lora_cfg = LoRAConfig(rank=8, alpha=16, dropout=0.1)
    enc, dec = _t5_tokens()
    # Fresh models from one seed: identical base weights, identical outputs.
    plain = T5Model(T5Config(**T5_TINY), rngs=nnx.Rngs(0))
    with_lora = T5Model(T5Config(**T5_TINY, lora=lora_cfg), rngs=nnx.Rngs(0))
    lora_params = hf_t5.flat_params(with_lora)
    for path, value in hf_t5.flat_params(plain).items():
        np.testing.assert_array_equal(lora_params[path], value)
    helpers.assert_close(_t5_logits(with_lora, enc, dec), _t5_logits(plain, enc, dec), 1e-6, 0, "fresh")
    # A pretrained (transformers) checkpoint loaded with LoRA.
    hf = helpers.make_hf("mt5_a")
    state = helpers.hf_state(hf)
    config = T5Config.from_hf(hf.config.to_dict())
    ours = hf_t5.model_from_hf_state(state, config)
    ours_lora = hf_t5.model_from_hf_state(state, dataclasses.replace(config, lora=lora_cfg), seed=4)
    assert len(lora.lora_layers(ours_lora)) == 2 * 2 + 3 * 4
    for _, layer in lora.lora_layers(ours_lora):
        assert np.abs(np.asarray(layer.lora_a[...])).max() > 0
        np.testing.assert_array_equal(np.asarray(layer.lora_b[...]), 0.0)
    b = helpers.random_batch(config.vocab_size)
    want = _t5_logits(ours, b["enc"], b["dec_in"])
    helpers.assert_close(_t5_logits(ours_lora, b["enc"], b["dec_in"]), want, 1e-6, 0, "pretrained")
    # Our converted checkpoint of the base, loaded with LoRA.
    checkpoint_io.save_converted(ours, config, "t5", tmp_path / "conv")
    loaded = checkpoint_io.load_converted(tmp_path / "conv", lora=lora_cfg)
    assert loaded.config.lora == lora_cfg and lora.lora_layers(loaded.model)
    helpers.assert_close(_t5_logits(loaded.model, b["enc"], b["dec_in"]), want, 1e-6, 0, "converted")


def test_zero_delta_at_init_xlmr_pretrained(tmp_path):
    cfg = helpers.XLMR_HF_CONFIGS[1]
    directory = helpers.save(helpers.hf_xlmr("cls", cfg, seed=0, num_labels=3), tmp_path / "cls")
    plain = hf_xlmr.load_hf_xlmr(directory).model
    lora_cfg = LoRAConfig(rank=4, alpha=8)
    with_lora = hf_xlmr.load_hf_xlmr(directory, lora=lora_cfg, seed=2).model
    assert len(lora.lora_layers(with_lora)) == 2 * cfg["num_hidden_layers"]
    ids, mask = helpers.xlmr_inputs(plain.config, seed=0)
    task = jnp.zeros((ids.shape[0],), jnp.int32)
    want = helpers.xlmr_forward(plain, ids, mask, task)
    got = helpers.xlmr_forward(with_lora, ids, mask, task)
    for key in ("logits", "hidden"):
        helpers.assert_close(got[key], want[key], 1e-6, 0, key)
    fresh = [XLMRMultiTask(XLMRConfig(**XLMR_TINY, lora=c), rngs=nnx.Rngs(0)) for c in (None, lora_cfg)]
    ids, mask = helpers.xlmr_inputs(fresh[0].config, seed=1)
    task = jnp.asarray([0, 1, 0, 1], jnp.int32)
    outs = [helpers.xlmr_forward(m, ids, mask, task)["logits"] for m in fresh]
    helpers.assert_close(outs[1], outs[0], 1e-6, 0, "fresh xlmr")


# -- the partition in the train step -------------------------------------------------------------------


def _family_setup(family: str):
    lora_cfg = LoRAConfig(rank=4, alpha=8, dropout=0.1)
    rng = np.random.default_rng(0)
    b = 8
    if family == "t5":
        config = T5Config(**T5_TINY, lora=lora_cfg)
        enc, dec = rng.integers(2, VOCAB, (2, b, 6)).astype(np.int32)
        batch = {F.ENCODER_INPUT_TOKENS: enc, F.DECODER_INPUT_TOKENS: dec,
                 F.DECODER_TARGET_TOKENS: np.roll(dec, -1, axis=1),
                 F.DECODER_LOSS_WEIGHTS: np.ones((b, 6), np.float32),
                 F.TASK_ID: np.zeros((b,), np.int32)}
        return (lambda: T5Model(config, rngs=nnx.Rngs(0))), obj.EncoderDecoderObjective(num_tasks=1), \
            batch, (), lambda m: m(enc, dec)
    config = XLMRConfig(**XLMR_TINY, lora=lora_cfg)
    ids = rng.integers(3, VOCAB, (b, 6)).astype(np.int32)
    mask = np.ones((b, 6), np.int32)
    task = np.arange(b, dtype=np.int32) % 2
    batch = {F.INPUT_IDS: ids, F.ATTENTION_MASK: mask, F.TASK_ID: task,
             F.LABELS: (np.arange(b) % 2).astype(np.int32)}
    objective = obj.ClassificationObjective(num_tasks=2, num_labels=(3, 2))
    return (lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0))), objective, batch, ("^heads/",), \
        lambda m: m(ids, mask, task)["hidden"]


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if np.ndim(x) > 0)


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_partition_trains_only_lora_and_named_params(family):
    model_fn, objective, batch, train, forward = _family_setup(family)
    partition = opt.make_partition(train=train, lora=True)
    optimizer = opt.make_optimizer("adamw", learning_rate=1e-2, weight_decay=0.0, partition_fn=partition)
    full = opt.make_optimizer("adamw", learning_rate=1e-2, weight_decay=0.0)
    mesh, rules = part.make_mesh(2, 2, 2), part.rules_by_name("fsdp")
    graphdef, state, shardings = ts.create_train_state(model_fn, optimizer, mesh, rules)
    _, full_state, full_shardings = ts.create_train_state(model_fn, full, mesh, rules)
    p0, rest = helpers.host(state.params), helpers.host(state.rest)
    flat0 = {part.path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(p0)[0]}
    trained = {k for k in flat0 if partition(k) == opt.TRAINABLE}
    assert trained == {k for k in flat0 if lora.is_lora_param(k) or (train and k.startswith("heads/"))}
    # Optimizer state: AdamW's mu and nu for the trainable parameters only.
    trainable_bytes = sum(v.nbytes for k, v in flat0.items() if k in trained)
    assert _nbytes(state.opt_state) == 2 * trainable_bytes
    assert _nbytes(full_state.opt_state) == 2 * sum(v.nbytes for v in flat0.values())
    for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        if np.ndim(x):
            assert any(part.path_str(path).endswith(k) for k in trained), part.path_str(path)

    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules,
                              deterministic=True)
    gb = part.global_batch(batch, mesh, bs)
    # No backward for frozen kernels: the step has fewer matrix products than full training.
    full_step = st.make_train_step(graphdef, objective, full, mesh, full_shardings, bs,
                                   rules=rules, deterministic=True, donate=False)
    dots = step.lower(state, gb).as_text().count("dot_general")
    full_dots = full_step.lower(full_state, gb).as_text().count("dot_general")
    assert dots < full_dots, (dots, full_dots)
    # The reported gradient norm is that of the trainable leaves of the loss's gradient.
    model0 = ts.merge_model(graphdef, p0, rest)

    def loss(params):
        return objective(ts.merge_model(graphdef, params, rest), batch)[0]

    grads = {part.path_str(k): v for k, v in
             jax.tree_util.tree_flatten_with_path(jax.grad(loss)(p0))[0]}
    want_norm = math.sqrt(sum(float(np.sum(np.square(grads[k]))) for k in trained))
    norms = []
    for _ in range(3):
        state, metrics = step(state, gb)
        norms.append(float(metrics["grad_norm"]))
    np.testing.assert_allclose(norms[0], want_norm, rtol=1e-5)
    new = {part.path_str(k): v for k, v in
           jax.tree_util.tree_flatten_with_path(helpers.host(state.params))[0]}
    for key, value in flat0.items():
        if key in trained:
            assert not np.array_equal(new[key], value), key
        else:
            np.testing.assert_array_equal(new[key], value, err_msg=key)  # bit-identical
    # After training, the merged model W + A B * alpha/r is the same function.
    model = ts.merge_model(graphdef, helpers.host(state.params), rest)
    merged = lora.merged(model)
    assert not lora.lora_layers(merged) and merged.config.lora is None
    unmerged_out = np.asarray(forward(model))
    assert _rel(unmerged_out, forward(model0)) > 1e-3  # LoRA changed the function
    assert _rel(forward(merged), unmerged_out) < 1e-5


def test_parameter_table_counts_trainable_and_frozen():
    model_fn, _, _, train, _ = _family_setup("xlmr")
    _, p_state, _ = ts.abstract_model(model_fn)
    partition = opt.make_partition(train=train, lora=True)
    table = part.parameter_table(p_state, part.make_mesh(8, 1, 1), part.rules_by_name("t5x"),
                                 lambda p: partition(p) == opt.FROZEN)
    lines = table.splitlines()
    assert lines[0].split()[-1] == "train"
    rows = {ln.split()[0]: ln.split()[-1] for ln in lines[2:-1]}
    flat = {part.path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(p_state))[0]}
    n_train = sum(math.prod(v.shape) for k, v in flat.items() if rows[k] == "yes")
    n_all = sum(math.prod(v.shape) for v in flat.values())
    assert {k for k, v in rows.items() if v == "yes"} == {
        k for k in flat if lora.is_lora_param(k) or k.startswith("heads/")}
    assert f"{n_train:,} trainable / {n_all - n_train:,} frozen parameters" in lines[-1]


def test_lora_gin_fragment_and_run_partition():
    import gin

    from mtl_jax import configurables, experiment, gin_config

    gin.clear_config()
    try:
        gin_config.parse(["demo_xlmr.gin", "methods/lora.gin"], [])
        cfg = configurables.train_config()
    finally:
        gin.clear_config()
    assert cfg.model_config.lora == LoRAConfig(rank=32, alpha=32, dropout=0.1)
    assert cfg.optimizer["name"] == "adamw" and cfg.optimizer["learning_rate"] == 5e-4
    assert cfg.optimizer["weight_decay"] == 0.0
    optimizer = experiment.make_optimizer(cfg, cfg.optimizer, lora=True)
    assert optimizer.partition_fn("encoder/layers/0/attention/query/lora_b") == opt.TRAINABLE
    assert optimizer.partition_fn("heads/out_kernel") == opt.TRAINABLE
    assert optimizer.partition_fn("encoder/layers/0/attention/query/kernel") == opt.FROZEN
    assert optimizer.partition_fn("encoder/embeddings/word_embeddings/embedding") == opt.FROZEN
    # The CTKFacts recipe: mT5-base from a pretrained checkpoint with the same LoRA setting.
    try:
        gin_config.parse(["ctkfacts_lora.gin"], [])
        cfg = configurables.train_config()
    finally:
        gin.clear_config()
    assert cfg.family == "t5" and cfg.mixture == "ctkfacts_t2t" and cfg.require_pretrained
    assert cfg.model_config.lora == LoRAConfig(rank=32, alpha=32, dropout=0.1)
    assert cfg.model_config.d_model == 768 and cfg.optimizer["learning_rate"] == 5e-4


# -- export: merged by default, peft adapters -------------------------------------------------------------


def _trained_t5(seed: int = 0):
    hf = helpers.make_hf("mt5_a")
    config = T5Config.from_hf(hf.config.to_dict(), lora=LoRAConfig(rank=4, alpha=8, dropout=0.1))
    model = hf_t5.model_from_hf_state(helpers.hf_state(hf), config)
    _randomize_lora(model, seed)
    return model, config


def _peft_t5_logits(base_dir, adapter_dir, enc, dec):
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(base_dir), attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(reference, str(adapter_dir)).eval()
    ids = torch.from_numpy(enc).long()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != 0).long(),
                     decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()


def test_convert_jax_to_hf_merges_by_default_and_writes_peft_adapter(tmp_path):
    model, config = _trained_t5()
    b = helpers.random_batch(config.vocab_size)
    ours = np.asarray(_t5_logits(model, b["enc"], b["dec_in"]))
    checkpoint_io.save_converted(model, config, "t5", tmp_path / "run")
    # Default: one transformers model with W + A B * alpha/r.
    assert convert.main(["jax-to-hf", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged = convert.verify_t5_against_transformers(model, tmp_path / "merged")
    assert merged["max_rel"] < 1e-5, merged
    # --lora_adapter: the base model plus a peft adapter that PeftModel loads onto it.
    dst = tmp_path / "adapter_export"
    assert convert.main(["jax-to-hf", str(tmp_path / "run"), str(dst), "--lora_adapter"]) == 0
    adapter = dst / peft_adapter.ADAPTER_DIR
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fields = json.loads((adapter / "adapter_config.json").read_text())
    assert fields["peft_type"] == "LORA" and fields["task_type"] == "SEQ_2_SEQ_LM"
    assert (fields["r"], fields["lora_alpha"], fields["lora_dropout"]) == (4, 8.0, 0.1)
    assert fields["target_modules"] == ["q", "v"]  # every q and v, so peft's short names
    base = convert.verify_t5_against_transformers(lora.without_lora(model), dst)
    assert base["max_rel"] < 1e-5, base  # the base is the unmerged W
    got = _peft_t5_logits(dst, adapter, b["enc"], b["dec_in"])
    assert _rel(got, ours) < 1e-5
    assert _rel(got, _t5_logits(lora.without_lora(model), b["enc"], b["dec_in"])) > 1e-3
    # A converted checkpoint without LoRA has no adapter to write.
    checkpoint_io.save_converted(lora.without_lora(model), dataclasses.replace(config, lora=None),
                                 "t5", tmp_path / "plain")
    assert convert.main(["jax-to-hf", str(tmp_path / "plain"), str(tmp_path / "x"), "--lora_adapter"]) == 2


def test_t5_adapter_with_other_targets_uses_full_module_names(tmp_path):
    hf = helpers.make_hf("t5_relu_a")
    targets = (r"encoder/layers/0/attention/(key|out)$", r"decoder/layers/1/mlp/wo$")
    config = T5Config.from_hf(hf.config.to_dict(), lora=LoRAConfig(rank=3, alpha=5, targets=targets))
    model = hf_t5.model_from_hf_state(helpers.hf_state(hf), config)
    _randomize_lora(model, 1)
    base = lora.without_lora(model)
    hf_t5.export_hf_t5(base, base.config, tmp_path)
    hf_t5.export_lora_adapter(model, tmp_path / "adapter")
    fields = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert fields["target_modules"] == [
        "decoder.block.1.layer.2.DenseReluDense.wo", "encoder.block.0.layer.0.SelfAttention.k",
        "encoder.block.0.layer.0.SelfAttention.o"]
    b = helpers.random_batch(config.vocab_size)
    got = _peft_t5_logits(tmp_path, tmp_path / "adapter", b["enc"], b["dec_in"])
    assert _rel(got, _t5_logits(model, b["enc"], b["dec_in"])) < 1e-5


def test_xlmr_merged_export_and_peft_adapters(tmp_path):
    cfg = helpers.XLMR_HF_CONFIGS[1]
    src = helpers.save(helpers.hf_xlmr("model", cfg, seed=0), tmp_path / "pretrained")
    lora_cfg = LoRAConfig(rank=4, alpha=16, dropout=0.1)
    model = hf_xlmr.load_hf_xlmr(src, task_num_labels=(3, 2), lora=lora_cfg).model
    _randomize_lora(model, 2)
    # The heads "trained" too (the adapter must carry them); padded label columns stay zero.
    rng = np.random.default_rng(3)
    valid = np.arange(model.heads.max_labels) < np.asarray(model.config.task_num_labels)[:, None]
    for name, keep in (("dense_kernel", 1.0), ("out_kernel", valid[:, None, :])):
        var = getattr(model.heads, name)
        noise = rng.normal(size=var.get_value().shape).astype(np.float32) * 0.1 * keep
        var.set_value(var[...] + jnp.asarray(noise, jnp.float32))
    ids, mask = helpers.xlmr_inputs(model.config, seed=0)
    names = ("nli", "pair")
    # Merged by default: every task directory reproduces our (unmerged) logits.
    hf_xlmr.export_hf_xlmr(model, model.config, tmp_path / "merged", names)
    for k in range(2):
        out = hf_xlmr.verify_against_transformers(model, tmp_path / "merged" / names[k], task=k)
        assert out["max_rel"] < 1e-5, (k, out)
    # Base + adapters.
    dst = tmp_path / "adapters"
    base = lora.without_lora(model)
    hf_xlmr.export_hf_xlmr(base, base.config, dst, names)
    written = hf_xlmr.export_lora_adapters(model, dst, names)
    assert sorted(written) == ["encoder/adapter", "nli/adapter", "pair/adapter"]
    ours = {k: np.asarray(helpers.xlmr_forward(model, ids, mask, jnp.full((len(ids),), k, jnp.int32))["logits"])
            for k in range(2)}
    for k, name in enumerate(names):
        fields = json.loads((dst / name / "adapter" / "adapter_config.json").read_text())
        assert fields["task_type"] == "SEQ_CLS" and fields["target_modules"] == ["query", "value"]
        assert fields["modules_to_save"] == ["classifier"]
        # Onto the plain pretrained encoder with a fresh classifier: the adapter brings the head.
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(src), num_labels=model.config.task_num_labels[k], attn_implementation="eager")
        peft_model = peft.PeftModel.from_pretrained(reference, str(dst / name / "adapter")).eval()
        with torch.no_grad():
            got = peft_model(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask)).logits.numpy()
        n = model.config.task_num_labels[k]
        assert _rel(got, ours[k][:, :n]) < 1e-5, name
    encoder = transformers.AutoModel.from_pretrained(str(dst / "encoder"), attn_implementation="eager")
    peft_encoder = peft.PeftModel.from_pretrained(encoder, str(dst / "encoder" / "adapter")).eval()
    with torch.no_grad():
        hidden = peft_encoder(input_ids=helpers.to_torch(ids),
                              attention_mask=helpers.to_torch(mask)).last_hidden_state.numpy()
    want = helpers.xlmr_forward(model, ids, mask, jnp.zeros((len(ids),), jnp.int32))["hidden"]
    assert _rel(hidden, want) < 1e-5

"""Numerical parity of our Flax T5/mT5 with transformers' PyTorch models (the reference), float32.

Weights are random (stronger than HF's init so attention, biases and norms all matter) and copied
from the HF model into ours through the converter under test. Bounds held (float32):
  logits: max|ours - hf| <= 1e-5 * max|hf| + 1e-6
  loss:   |ours - hf| <= 1e-5 * |hf|
  grads:  max|ours - hf| <= 1e-4 * max|hf| + 1e-7 per tensor
Most cases compile with ``helpers.FAST_COMPILE`` (XLA backend level 0: half the compile time);
``test_default_compiler_settings_match_hf`` holds the same bounds at XLA's default settings.
The configs and builders live in ``helpers.py`` (shared with the decoding and conversion tests).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import helpers  # noqa: E402

from mtl_jax.models import hf_t5  # noqa: E402
from mtl_jax.models.layers import (  # noqa: E402
    causal_mask,
    count_params,
    dot_product_attention,
    padding_mask,
)
from mtl_jax.models.losses import normalize, token_cross_entropy  # noqa: E402
from mtl_jax.models.t5 import T5Config, T5Model, relative_position_bucket  # noqa: E402


def _loss_logits_grads(model, enc, dec_in, targets, weights):
    """Our loss as training computes it ("tokens" normalisation), its logits and gradients."""

    def loss_fn(m):
        logits = m(enc, dec_in)
        ce, _ = token_cross_entropy(logits, targets, weights)
        return normalize(jnp.sum(ce), weights, "tokens"), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, logits, grads


loss_logits_grads = helpers.fast_jit(_loss_logits_grads)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "buckets,max_distance",
    [(32, 128), (12, 20), (8, 9), (16, 30), (10, 12), (64, 50), (128, 200), (20, 11)],
)
def test_relative_position_buckets_match_hf(buckets, max_distance):
    """Our lookup-table buckets equal HF's float computation for every distance, both directions
    (including the exact-integer log boundaries where XLA's log would flip a bucket)."""
    rel = np.arange(-1024, 1025)  # one shape for all cases: the eager ops compile once
    attn = transformers.models.t5.modeling_t5.T5Attention
    for bidirectional in (True, False):
        ref = attn._relative_position_bucket(
            torch.tensor(rel),
            bidirectional=bidirectional,
            num_buckets=buckets,
            max_distance=max_distance,
        ).numpy()
        ours = relative_position_bucket(
            jnp.asarray(rel),
            bidirectional=bidirectional,
            num_buckets=buckets,
            max_distance=max_distance,
        )
        np.testing.assert_array_equal(np.asarray(ours), ref)


@functools.cache
def hf_and_ours(name: str):
    """One random HF model per config and our copy of it (cached: compiling is the slow part)."""
    hf = helpers.make_hf(name)
    return hf, helpers.ours_from_hf(hf)


def loss_from_logits(logits, batch) -> float:
    ce, _ = token_cross_entropy(
        jnp.asarray(logits), jnp.asarray(batch["targets"]), jnp.asarray(batch["weights"])
    )
    return float(normalize(jnp.sum(ce), jnp.asarray(batch["weights"]), "tokens"))


@pytest.mark.parametrize("name", list(helpers.T5_ALL_CONFIGS))
def test_logits_and_loss_match_hf(name):
    hf, model = hf_and_ours(name)
    assert model.config.tie_word_embeddings == (not name.startswith("mt5"))
    # Ours has the padded vocabulary rows too: the embedding's and the untied LM head's.
    c = model.config
    padding = (c.padded_vocab_size - c.vocab_size) * c.d_model * (1 if c.tie_word_embeddings else 2)
    assert count_params(model) == sum(p.numel() for p in hf.parameters()) + padding
    batch = helpers.random_batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = helpers.hf_forward(hf, batch)
    padded = helpers.t5_forward_padded(model, jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"]))
    diff = helpers.assert_close(helpers.real_vocab(padded, c), ref.logits.numpy(),
                                helpers.LOGIT_RTOL, helpers.LOGIT_ATOL, f"{name} logits")
    loss = loss_from_logits(padded, batch)  # the masked padding takes no probability mass
    print(
        f"{name}: max|logit diff| {diff:.2e}, max|logit| {ref.logits.abs().max().item():.2f}, "
        f"loss {loss:.6f} vs {ref.loss.item():.6f}"
    )
    assert abs(loss - ref.loss.item()) <= 1e-5 * abs(ref.loss.item())


_GRAD_FAST = ("mt5_a", "t5_relu_a")


@pytest.mark.parametrize(
    "name",
    [
        n if n in _GRAD_FAST else pytest.param(n, marks=pytest.mark.slow)
        for n in helpers.T5_ALL_CONFIGS
    ],
)
def test_loss_gradients_match_hf(name):
    """jax.grad of our loss (token_cross_entropy + "tokens" normalization) equals torch autograd
    of HF's mean cross entropy, for tensors across the whole network."""
    _check_logits_loss_grads(name, loss_logits_grads)


def test_default_compiler_settings_match_hf():
    """The same logits, loss and gradient bounds when XLA compiles at its default settings (the
    other cases use ``FAST_COMPILE``; optimisation passes may fuse and reorder float math)."""
    assert not jax.config.read("jax_disable_most_optimizations")
    assert "optimization_level" not in os.environ.get("XLA_FLAGS", "")
    _check_logits_loss_grads("mt5_a", helpers.model_jit(_loss_logits_grads))


@pytest.mark.slow
def test_scanned_rematerialised_model_matches_hf():
    """``scan_layers`` + ``remat`` (models/layer_stack.py) hold the same bounds against HF."""
    _check_logits_loss_grads("mt5_a", loss_logits_grads, scan_layers=True, remat="save_dots")


def _check_logits_loss_grads(name: str, compiled, **overrides) -> None:
    hf, model = hf_and_ours(name)
    if overrides:
        model = helpers.ours_from_hf(hf, **overrides)
    batch = helpers.random_batch(hf.config.vocab_size, seed=5)
    ref = helpers.hf_forward(hf, batch, with_grad=True)
    loss, logits, grads = compiled(
        model, *(jnp.asarray(batch[k]) for k in ("enc", "dec_in", "targets", "weights"))
    )
    helpers.assert_close(
        helpers.real_vocab(logits, model.config), ref.logits.detach().numpy(), helpers.LOGIT_RTOL,
        helpers.LOGIT_ATOL, "logits",
    )
    assert abs(float(loss) - ref.loss.item()) <= 1e-5 * abs(ref.loss.item()), (
        float(loss),
        ref.loss.item(),
    )

    entries = {e.hf: e for e in hf_t5.parameter_map(model.config)}
    hf_params = dict(hf.named_parameters())
    flat_grads = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(grads)}
    last = model.config.num_decoder_layers - 1
    checked = [
        "shared.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        f"decoder.block.{last}.layer.1.EncDecAttention.o.weight",
        f"decoder.block.{last}.layer.2.DenseReluDense.wo.weight",
        "encoder.final_layer_norm.weight",
    ] + ([] if model.config.tie_word_embeddings else ["lm_head.weight"])
    for hf_name in checked:
        e = entries[hf_name]
        ours_grad = hf_t5.to_hf(e.kind, np.asarray(flat_grads[e.ours]), model.config)
        grad = hf_params[hf_name].grad
        diff = helpers.assert_close(
            ours_grad, grad.numpy(), helpers.GRAD_RTOL, helpers.GRAD_ATOL, f"{name} grad {hf_name}"
        )
        print(f"{name} grad {hf_name}: max abs diff {diff:.2e}, max |grad| {grad.abs().max():.2e}")


def test_attention_paths_agree():
    """jax.nn.dot_product_attention ("auto") and the plain einsum path ("xla") agree on CPU, with
    bias, padding and causal masks (including a fully masked row), in float32 and bfloat16."""
    rng = np.random.default_rng(0)
    b, t, s, n, h = 2, 5, 7, 3, 4
    q, k, v = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in ((b, t, n, h), (b, s, n, h), (b, s, n, h))
    )
    bias = jnp.asarray(rng.normal(size=(1, n, t, s)), jnp.float32)
    valid = np.ones((b, s), bool)
    valid[1, 4:] = False
    mask = padding_mask(jnp.asarray(valid)) & causal_mask(jnp.arange(t) + 2, jnp.arange(s))
    mask = mask.at[0, :, 0, :].set(False)
    for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):
        args = (q.astype(dtype), k.astype(dtype), v.astype(dtype))
        auto = dot_product_attention(*args, bias=bias, mask=mask, scale=1.0, impl="auto")
        xla = dot_product_attention(*args, bias=bias, mask=mask, scale=1.0, impl="xla")
        assert auto.dtype == xla.dtype == dtype
        helpers.assert_close(
            xla.astype(jnp.float32),
            auto.astype(jnp.float32),
            tol,
            tol,
            f"{dtype.__name__} attention",
        )
    # A model on the einsum path also matches HF (the other tests use "auto").
    hf = helpers.make_hf("mt5_c")
    batch = helpers.random_batch(hf.config.vocab_size, seed=1)
    with torch.no_grad():
        ref = helpers.hf_forward(hf, batch).logits.numpy()
    model = helpers.ours_from_hf(hf, attention_impl="xla")
    out = helpers.t5_forward(model, jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"]))
    helpers.assert_close(out, ref, helpers.LOGIT_RTOL, helpers.LOGIT_ATOL, "einsum-path logits")


def _pack(segments: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens, seg_ids, pos = (
        np.zeros(length, np.int64),
        np.zeros(length, np.int64),
        np.zeros(length, np.int64),
    )
    at = 0
    for i, s in enumerate(segments):
        tokens[at : at + len(s)], seg_ids[at : at + len(s)], pos[at : at + len(s)] = (
            s,
            i + 1,
            np.arange(len(s)),
        )
        at += len(s)
    return tokens, seg_ids, pos


@pytest.mark.parametrize("name", ["mt5_a", pytest.param("t5_gated_b", marks=pytest.mark.slow)])
def test_packed_segments_equal_running_each_alone(name):
    """Packed rows (segment ids + restarting positions): each segment's logits equal HF's logits
    for that segment run on its own."""
    hf, model = hf_and_ours(name)
    rng = np.random.default_rng(3)
    v = hf.config.vocab_size
    rows = [  # (encoder segment lengths, target segment lengths) per packed row
        ([5, 4], [3, 4]),
        ([3, 6, 2], [2, 3, 3]),
    ]
    enc_len, dec_len = 13, 10
    packed = {k: [] for k in ("enc", "enc_seg", "enc_pos", "dec_in", "dec_seg", "dec_pos")}
    singles = []
    for enc_lens, tgt_lens in rows:
        encs = [np.append(rng.integers(2, v, n - 1), 1) for n in enc_lens]
        tgts = [np.append(rng.integers(2, v, n - 1), 1) for n in tgt_lens]
        singles.append(list(zip(encs, tgts, strict=True)))
        e, es, ep = _pack(encs, enc_len)
        t, ds, dp = _pack(tgts, dec_len)
        d = np.where(dp == 0, 0, np.roll(t, 1))  # shift right within each segment
        for k, x in zip(packed, (e, es, ep, d, ds, dp), strict=True):
            packed[k].append(x)
    p = {k: jnp.asarray(np.stack(x)) for k, x in packed.items()}
    logits = helpers.fast_jit(
        lambda m, p: m(
            p["enc"],
            p["dec_in"],
            encoder_segment_ids=p["enc_seg"],
            decoder_segment_ids=p["dec_seg"],
            encoder_positions=p["enc_pos"],
            decoder_positions=p["dec_pos"],
        )
    )(model, p)
    logits = helpers.real_vocab(logits, model.config)
    for r, segs in enumerate(singles):
        for s, (enc, tgt) in enumerate(segs):
            with torch.no_grad():
                ref = (
                    hf(input_ids=torch.tensor(enc[None]), labels=torch.tensor(tgt[None]))
                    .logits[0]
                    .numpy()
                )
            where = np.asarray(p["dec_seg"][r]) == s + 1
            helpers.assert_close(
                np.asarray(logits[r])[where],
                ref,
                helpers.LOGIT_RTOL,
                helpers.LOGIT_ATOL,
                f"row {r} segment {s}",
            )


@pytest.mark.parametrize("name", ["mt5_b", pytest.param("t5_relu_a", marks=pytest.mark.slow)])
def test_bfloat16_compute_close_to_float32(name):
    """bf16 compute with float32 parameters and float32 logits. Over the loss-weighted positions:
    max|d logit| <= 0.1 * max|logit|, mean|d logit| <= 0.05 * mean|logit|, loss within 1%
    (measured: 5.4e-2 / 2.3e-2 / 4.5e-4 for mt5_b; 2.0e-2 / 1.5e-2 / 1.2e-3 for t5_relu_a, with
    these deliberately large random weights)."""
    hf, f32 = hf_and_ours(name)
    bf16 = helpers.ours_from_hf(hf, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    batch = helpers.random_batch(hf.config.vocab_size, seed=2)
    args = (jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"]))
    logits32, logits16 = np.asarray(helpers.t5_forward(f32, *args)), helpers.t5_forward(bf16, *args)
    assert logits16.dtype == jnp.float32
    logits16 = np.asarray(logits16)
    w = batch["weights"] > 0
    diff = np.abs(logits16 - logits32)[w]
    max_rel = diff.max() / np.abs(logits32[w]).max()
    mean_rel = diff.mean() / np.abs(logits32[w]).mean()
    loss32, loss16 = loss_from_logits(logits32, batch), loss_from_logits(logits16, batch)
    loss_rel = abs(loss16 - loss32) / loss32
    print(f"{name} bf16 vs f32: max {max_rel:.2e}, mean {mean_rel:.2e}, loss {loss_rel:.2e}")
    assert max_rel <= 0.1 and mean_rel <= 0.05 and loss_rel <= 0.01


def test_dropout_keys_come_from_call_time_rngs():
    hf, _ = hf_and_ours("mt5_c")
    config = dataclasses.replace(T5Config.from_hf(hf.config.to_dict()), dropout_rate=0.2)
    model = hf_t5.model_from_hf_state(helpers.hf_state(hf), config)
    batch = helpers.random_batch(hf.config.vocab_size)
    enc, dec = jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"])

    @helpers.fast_jit
    def train_logits(m, key):
        return m(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=key))

    a, b, c = (train_logits(model, jax.random.key(i)) for i in (1, 1, 2))
    assert a.shape == (*dec.shape, config.padded_vocab_size)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    with pytest.raises(ValueError, match="no rngs"):
        model(enc, dec, deterministic=False)


def test_dropout_sites_drop_at_their_rates_where_hf_drops(monkeypatch):
    """In a train-mode forward every dropout site is inverted dropout at its configured rate
    (hidden 0.3 and attention 0.15, so a swapped rate shows): dropped fraction within 5 binomial
    sigmas, kept values times exactly 1/(1-p), a fresh mask per site. The sites are HF's: our
    hidden-state sites have the shapes of the nn.Dropout calls HF's model makes in train mode,
    and there is one attention-probability site per attention block."""
    hidden_rate, attention_rate = 0.3, 0.15
    hf = helpers.make_hf("mt5_c", dropout_rate=hidden_rate)
    batch = helpers.random_batch(hf.config.vocab_size, seed=6, batch=8, enc_len=32, dec_len=24)
    config = dataclasses.replace(
        T5Config.from_hf(hf.config.to_dict()),
        dropout_rate=hidden_rate,
        attention_dropout_rate=attention_rate,
    )
    model = hf_t5.model_from_hf_state(helpers.hf_state(hf), config)
    records = helpers.recording_dropout(monkeypatch)

    @helpers.fast_jit
    def train_forward(m, enc, dec, key):
        records.clear()
        m(enc, dec, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return list(records)

    sites = train_forward(
        model, jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"]), jax.random.key(3)
    )
    power = helpers.check_dropout_sites(
        sites, lambda x: attention_rate if x.ndim == 4 else hidden_rate
    )
    assert set(power) == {hidden_rate, attention_rate} and min(power.values()) > 20_000, power

    hf_shapes = []
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda mod, args, out: hf_shapes.append(tuple(out.shape)))
    with torch.no_grad():
        helpers.hf_forward(hf.train(), batch)
    ours = [tuple(x.shape) for x, _ in sites]
    assert sorted(s for s in ours if len(s) == 3) == sorted(hf_shapes)
    b, n, le, ld = 8, config.num_heads, 32, 24
    expected_attention = [(b, n, le, le)] * config.num_layers + [
        (b, n, ld, ld),
        (b, n, ld, le),
    ] * config.num_decoder_layers
    assert sorted(s for s in ours if len(s) == 4) == sorted(expected_attention)


def test_logical_axes_and_sharded_creation():
    """Every parameter carries logical names; inside ``jax.set_mesh`` + logical rules the abstract
    model carries the resolved shardings, loading places each parameter sharded, and the sharded
    forward still equals HF."""
    from mtl_jax.training.partitioning import T5X_RULES, make_mesh

    hf, _ = hf_and_ours("mt5_c")  # vocab 64, 6 heads, d_ff 24: divisible by the tensor axis (2)
    config = T5Config.from_hf(hf.config.to_dict())
    allowed = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
    abstract = nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0)))
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == len(var.get_value().shape) and set(names) <= allowed, (
            path,
            names,
        )

    batch = helpers.random_batch(hf.config.vocab_size, seed=4, batch=4)
    enc, dec = jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"])
    with torch.no_grad():
        reference = helpers.hf_forward(hf, batch).logits.numpy()
    mesh = make_mesh(data=4, fsdp=1, tensor=2)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(T5X_RULES):
        placed = nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0)))
        q = placed.encoder.layers[0].attention.query.kernel.get_value()
        assert q.sharding.spec == jax.P(None, "tensor", None)
        sharded = helpers.ours_from_hf(hf)
        assert sharded.encoder.layers[0].attention.query.kernel[...].sharding.spec == jax.P(
            None, "tensor", None
        )
        assert sharded.shared.embedding[...].sharding.spec == jax.P("tensor", None)
        assert sharded.decoder.relpos.embedding[...].sharding.spec == jax.P(None, "tensor")
        out = helpers.t5_forward(sharded, enc, dec)
    helpers.assert_close(
        out, reference, helpers.LOGIT_RTOL, helpers.LOGIT_ATOL, "sharded logits vs HF"
    )

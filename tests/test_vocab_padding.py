"""Vocabulary padding (``models.vocab_padding``): the padded rows shard, never change what the
model computes (checked against transformers' PyTorch models with the padded rows set to large
values, which would win every softmax and argmax if they were not masked), and old unpadded
checkpoints still load."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

from mtl_jax.models import checkpoint_io, hf_t5, losses, vocab_padding
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import train_state as ts
from mtl_jax.training.checkpoints import model_differences
from tests import helpers

MIN = np.finfo(np.float32).min


def test_padded_size_and_init():
    assert [vocab_padding.padded_size(v, 128) for v in (1, 128, 129, 250002, 250112)] == [
        128, 128, 256, 250112, 250112]
    assert vocab_padding.padded_size(250002, 1) == 250002
    with pytest.raises(ValueError, match="XLMRConfig.vocab_pad_multiple"):
        XLMRConfig(vocab_pad_multiple=0)
    # The real rows are what the unpadded initialiser draws; the padded rows are zero.
    init = jax.nn.initializers.normal(1.0)
    key = jax.random.key(3)
    padded = vocab_padding.padded_init(init, 97, axis=1)(key, (5, 128))
    np.testing.assert_array_equal(padded[:, :97], init(key, (5, 97)))
    assert not np.asarray(padded[:, 97:]).any()


def _loss_and_grads(model, enc, dec, targets, weights):
    def loss_fn(m):
        ce, _ = losses.token_cross_entropy(m(enc, dec), targets, weights)
        return jnp.sum(ce) / jnp.sum(weights)

    return nnx.value_and_grad(loss_fn)(model)


loss_and_grads = helpers.fast_jit(_loss_and_grads)


# Untied head (mT5); tied, rescaled head (original T5: the padded embedding rows are the head's).
@pytest.mark.parametrize("name", ["mt5_a", pytest.param("t5_relu_a", marks=pytest.mark.slow)])
def test_padded_rows_are_masked_against_transformers(name):
    hf = helpers.make_hf(name)
    model = helpers.ours_from_hf(hf)
    c = model.config
    assert c.padded_vocab_size == 128 > c.vocab_size
    # Padded rows that would dominate every softmax and argmax if they reached the logits.
    table = model.shared.embedding if c.tie_word_embeddings else model.lm_head.kernel
    axis = 0 if c.tie_word_embeddings else 1
    value = np.array(table.get_value())
    np.moveaxis(value, axis, 0)[c.vocab_size:] = 1e3
    table.set_value(jnp.asarray(value))

    batch = helpers.random_batch(c.vocab_size, seed=11)
    enc, dec = jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"])
    with torch.no_grad():
        ref = helpers.hf_forward(hf, batch)
    want = ref.logits.double().numpy()
    logits = np.asarray(helpers.t5_forward_padded(model, enc, dec))
    assert logits.shape[-1] == c.padded_vocab_size
    assert (logits[..., c.vocab_size:] == MIN).all()

    # Loss (HF's mean over non-ignored tokens) and its gradients: none reaches the padded rows.
    loss, grads = loss_and_grads(model, enc, dec, jnp.asarray(batch["targets"]),
                                 jnp.asarray(batch["weights"]))
    assert abs(float(loss) - ref.loss.item()) <= 1e-5 * abs(ref.loss.item())
    flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    assert np.abs(flat[("shared", "embedding")][: c.vocab_size]).max() > 0
    assert not flat[("shared", "embedding")][c.vocab_size:].any()
    if not c.tie_word_embeddings:
        assert not flat[("lm_head", "kernel")][:, c.vocab_size:].any()

    # Argmax (greedy decoding, predicted tokens) never picks a padded row; where it differs from
    # torch's, the two best logits are a float32 rounding apart.
    ours_top, ref_top = logits.argmax(-1), want.argmax(-1)
    assert ours_top.max() < c.vocab_size
    top2 = np.sort(want, axis=-1)[..., -2:]
    assert ((ours_top == ref_top) | (top2[..., 1] - top2[..., 0] < 1e-4)).all()

    # R3F's symmetric KL over the padded logits equals NumPy's over the real vocabulary.
    rng = np.random.default_rng(0)
    noisy = logits.copy()
    noisy[..., : c.vocab_size] += rng.normal(0, 0.5, size=noisy[..., : c.vocab_size].shape)
    kl = np.asarray(losses.symmetric_kl(jnp.asarray(logits), jnp.asarray(noisy)))

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp = log_softmax(logits[..., : c.vocab_size].astype(np.float64))
    lq = log_softmax(noisy[..., : c.vocab_size].astype(np.float64))
    reference = ((np.exp(lp) - np.exp(lq)) * (lp - lq)).sum(-1)
    assert np.isfinite(kl).all()
    np.testing.assert_allclose(kl, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sizes", [(1, 1, 8), (1, 2, 4)])
def test_xlmr_embedding_shards_over_the_tensor_axis(sizes, caplog):
    """250,002 rows -> 250,112 = 1954 x 128: sharded over a tensor axis of 4 or 8, no warning;
    the unpadded table (``vocab_pad_multiple=1``) is replicated."""
    mesh = part.make_mesh(*sizes)
    rules = part.rules_by_name("fsdp")

    def word_embedding_spec(multiple: int) -> P:
        config = XLMRConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=8,
                            intermediate_size=32, task_num_labels=(3,), vocab_pad_multiple=multiple)
        _, _, shardings = ts.train_state_shardings(
            lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0)), opt.make_optimizer("adamw"), mesh,
            rules)
        flat = {part.path_str(p): s.spec
                for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
        return flat["encoder/embeddings/word_embeddings/embedding"]

    with caplog.at_level(logging.WARNING):
        assert word_embedding_spec(128) == P("tensor", "fsdp")
    assert "word_embeddings" not in caplog.text
    assert word_embedding_spec(1) == P(None, "fsdp")


def test_checkpoints_from_before_padding_still_load(tmp_path):
    """A record without ``vocab_pad_multiple`` was written unpadded: it loads as that model, and
    a run that pads says which field differs instead of failing on shapes."""
    config = T5Config(vocab_size=61, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                      vocab_pad_multiple=1)
    model = hf_t5.model_from_params(
        {k: np.random.default_rng(0).normal(size=v.shape).astype(np.float32)
         for k, v in hf_t5.flat_params(nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0))))
         .items()}, config)
    checkpoint_io.save_converted(model, config, "t5", tmp_path)
    record_path = tmp_path / checkpoint_io.RECORD_NAME
    record = json.loads(record_path.read_text())
    del record["config"]["vocab_pad_multiple"]  # as written before padding existed
    record_path.write_text(json.dumps(record))

    loaded = checkpoint_io.load_converted(tmp_path)
    assert loaded.config == config and loaded.model.shared.embedding.shape == (61, 16)
    np.testing.assert_array_equal(loaded.model.lm_head.kernel.get_value(),
                                  model.lm_head.kernel.get_value())

    old = {"family": "t5", "vocab_size": 61}
    assert model_differences(old, {"family": "t5", "vocab_size": 61, "vocab_pad_multiple": 1}) == []
    assert model_differences(old, {"family": "t5", "vocab_size": 61, "vocab_pad_multiple": 128}) == [
        "vocab_pad_multiple: checkpoint=1 run=128"]

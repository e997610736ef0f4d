"""``scan_layers`` and ``remat`` (models/layer_stack.py) against the reference: the same model run
as a plain Python loop over its layers. Float32, dropout on, the same ``nnx.Rngs``: outputs,
gradients, probe gradients, the dropout streams' counters after the call and whole train steps on
an 8-device mesh must agree; checkpoints need no conversion between the two.

The equality is tight (1e-5 relative) because the dropout masks are identical: a scan that drew
other keys than the loop would change outputs by O(1), which the tests also check can happen.
"""

from __future__ import annotations

import dataclasses
import functools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl_jax import features as F
from mtl_jax.models import checkpoint_io
from mtl_jax.models.lora import LoRAConfig
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.training import objectives as obj
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import step as st
from mtl_jax.training import train_state as ts

pytestmark = pytest.mark.usefixtures("fast_compiles")

T5_TINY = T5Config(vocab_size=48, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_decoder_layers=2,
                   num_heads=2, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.2)
XLMR_TINY = XLMRConfig(vocab_size=48, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=24, task_num_labels=(3, 2),
                       hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
# The default stage runs the combination that exercises both (scan + save_dots); the slow stage
# the others.
VARIANTS = [(True, "save_dots"), *(pytest.param(*v, marks=pytest.mark.slow) for v in
                                   [(True, "none"), (False, "full"), (False, "save_dots"),
                                    (True, "full")])]
TOL = dict(rtol=1e-5, atol=1e-6)


def _tokens(seed: int, shape: tuple[int, int], vocab: int = 48) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(2, vocab, shape), jnp.int32)


def _assert_trees_close(a, b, what: str) -> None:
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b),
                            strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _t5_run(config: T5Config, enc: jax.Array, dec: jax.Array, deterministic: bool):
    """Logits, parameter gradients and the dropout counter after one training-mode call."""
    model = T5Model(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
        rngs = nnx.Rngs(dropout=jax.random.key(7))
        logits = nnx.merge(graphdef, params)(enc, dec, deterministic=deterministic, rngs=rngs)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), (logits, rngs.dropout.count[...])

    grads, (logits, count) = jax.grad(loss, has_aux=True)(params)
    return logits, grads, count


@functools.cache
def _t5_reference():
    return _t5_run(T5_TINY, _tokens(0, (2, 9)), _tokens(1, (2, 6)), False)


@pytest.mark.parametrize("scan, remat", VARIANTS)
def test_t5_scan_and_remat_equal_the_layer_loop_with_dropout(scan, remat):
    ref_logits, ref_grads, ref_count = _t5_reference()
    config = dataclasses.replace(T5_TINY, scan_layers=scan, remat=remat)
    logits, grads, count = _t5_run(config, _tokens(0, (2, 9)), _tokens(1, (2, 6)), False)
    assert int(count) == int(ref_count)  # the streams end where the loop leaves them
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), **TOL)
    _assert_trees_close(grads, ref_grads, f"scan={scan} remat={remat} grad")


@pytest.mark.slow
def test_t5_dropout_differs_per_layer_under_scan():
    """The check above can fail: dropout changes the logits by O(1), so a scan whose layers drew
    other keys than the loop's (e.g. all layers the same key) would not match it."""
    ref_logits = np.asarray(helpers.real_vocab(_t5_reference()[0], T5_TINY))
    det = np.asarray(helpers.real_vocab(_t5_run(T5_TINY, _tokens(0, (2, 9)), _tokens(1, (2, 6)), True)[0],
                                T5_TINY))
    assert np.max(np.abs(det - ref_logits)) > 0.1 * np.max(np.abs(ref_logits))


@functools.partial(jax.jit, static_argnums=0)
def _xlmr_run(config: XLMRConfig, ids: jax.Array, probe: jax.Array):
    """Logits, hidden states, gradients (parameters and a probe on layer 1 only)."""
    model = XLMRMultiTask(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mask = jnp.ones_like(ids).at[1, -3:].set(0)

    def loss(params, probe):
        rngs = nnx.Rngs(dropout=jax.random.key(5))
        out = nnx.merge(graphdef, params, rest)(ids, mask, jnp.asarray([0, 1]),
                                                deterministic=False, rngs=rngs,
                                                probes={"layers/1/output": probe})
        value = jnp.sum(out["hidden"] ** 2) * 1e-3 + jnp.sum(out["logits"][:, :2])
        return value, (out["logits"][:, :2], out["hidden"])

    grads, (logits, hidden) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, probe)
    return logits, hidden, grads


@pytest.mark.parametrize("scan, remat", [(True, "full"), *(
    pytest.param(*v, marks=pytest.mark.slow) for v in [(True, "none"), (False, "save_dots")])])
def test_xlmr_scan_and_remat_equal_the_layer_loop_with_dropout_and_probes(scan, remat):
    ids = _tokens(2, (2, 10))
    probe = jnp.zeros((2, 10, 16))
    ref = _xlmr_run(XLMR_TINY, ids, probe)
    out = _xlmr_run(dataclasses.replace(XLMR_TINY, scan_layers=scan, remat=remat), ids, probe)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), **TOL)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(ref[1]), **TOL)
    _assert_trees_close(out[2], ref[2], f"scan={scan} remat={remat} grad")
    assert float(jnp.max(jnp.abs(ref[2][1]))) > 0  # the probe's gradient is real


def test_config_switches_are_validated_and_named():
    with pytest.raises(ValueError, match=r"T5Config\.remat"):
        T5Config(remat="dots")
    with pytest.raises(ValueError, match=r"XLMRConfig\.scan_layers"):
        XLMRConfig(scan_layers="yes")


def test_scan_refuses_layers_of_different_structure_naming_the_field():
    """LoRA on layer 0 only leaves the layers with different parameters: scanning them is an
    error that names the switch (the loop, with or without remat, runs them)."""
    lora = LoRAConfig(rank=2, targets=(r"encoder/layers/0/attention/query",))
    ids, dec = _tokens(0, (2, 9)), _tokens(1, (2, 6))
    model = T5Model(dataclasses.replace(T5_TINY, lora=lora, scan_layers=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"T5Config\.scan_layers=True"):
        model(ids, dec)


@pytest.mark.slow
def test_lora_on_every_layer_scans_like_the_loop():
    lora = LoRAConfig(rank=2, alpha=4.0, dropout=0.1)
    config = dataclasses.replace(T5_TINY, lora=lora)
    ref = _t5_run(config, _tokens(0, (2, 9)), _tokens(1, (2, 6)), False)
    out = _t5_run(dataclasses.replace(config, scan_layers=True, remat="full"),
                  _tokens(0, (2, 9)), _tokens(1, (2, 6)), False)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), **TOL)
    _assert_trees_close(out[1], ref[1], "lora grad")


def test_checkpoint_written_scanned_restores_unscanned(tmp_path):
    """Parameters keep the per-layer layout, so a checkpoint restores under the other setting
    bit for bit, and both settings compute the same outputs from it."""
    scanned = dataclasses.replace(T5_TINY, scan_layers=True, remat="save_dots")
    model = T5Model(scanned, rngs=nnx.Rngs(3))
    checkpoint_io.save_converted(model, scanned, "t5", tmp_path / "ckpt")
    loaded = checkpoint_io.load_converted(tmp_path / "ckpt", scan_layers=False, remat="none")
    assert not loaded.config.scan_layers and loaded.config.remat == "none"
    _assert_trees_close(checkpoint_io.params_of(loaded.model), checkpoint_io.params_of(model),
                        "restored")
    ids, dec = _tokens(0, (2, 9)), _tokens(1, (2, 6))
    np.testing.assert_allclose(np.asarray(loaded.model(ids, dec)), np.asarray(model(ids, dec)),
                               **TOL)


def _train(config: T5Config, batches: list[dict]) -> tuple[list[float], dict]:
    """Two real train steps (Adafactor, dropout, z-loss) on the 2x2x2 mesh with FSDP rules."""
    mesh = part.make_mesh(2, 2, 2)
    rules = part.rules_by_name("fsdp")
    optimizer = opt.make_optimizer("adafactor", learning_rate=1e-2, min_dim_size_to_factor=8)
    objective = obj.EncoderDecoderObjective(num_tasks=2, z_loss=1e-4)
    graphdef, state, shardings = ts.create_train_state(
        lambda: T5Model(config, rngs=nnx.Rngs(0)), optimizer, mesh, rules, 0)
    bs = part.batch_sharding(mesh, rules)
    step = st.make_train_step(graphdef, objective, optimizer, mesh, shardings, bs, rules=rules)
    losses = []
    for b in batches:
        state, metrics = step(state, part.global_batch(b, mesh, bs))
        losses.append(float(metrics["loss"]))
    return losses, helpers.host(state.params)


def _encdec_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(2, 48, (8, 6)).astype(np.int32)
    dec_in = np.zeros_like(targets)
    dec_in[:, 1:] = targets[:, :-1]
    return {F.ENCODER_INPUT_TOKENS: rng.integers(2, 48, (8, 9)).astype(np.int32),
            F.DECODER_INPUT_TOKENS: dec_in, F.DECODER_TARGET_TOKENS: targets,
            F.DECODER_LOSS_WEIGHTS: np.ones_like(targets, np.float32),
            F.TASK_ID: (np.arange(8) % 2).astype(np.int32)}


@pytest.mark.slow
def test_train_steps_on_a_sharded_mesh_equal_with_scan_and_remat():
    batches = [_encdec_batch(s) for s in range(2)]
    ref_losses, ref_params = _train(T5_TINY, batches)
    losses, params = _train(dataclasses.replace(T5_TINY, scan_layers=True, remat="save_dots"),
                            batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    _assert_trees_close(params, ref_params, "params after 2 steps")
    assert not np.allclose(helpers.host(optax.global_norm(params)), 0)

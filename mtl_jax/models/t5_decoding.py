"""Inference for ``T5Model``: greedy decoding with a key/value cache, and rank classification.

Both are plain functions of the model and arrays, traceable under ``nnx.jit`` (the decoding loop is
a ``lax.while_loop`` with static shapes), so an evaluator can compile them once per batch shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl_jax.models.losses import token_cross_entropy
from mtl_jax.models.t5 import T5Model


def shift_right(targets: jax.Array, start_id: int = 0) -> jax.Array:
    """Decoder inputs for teacher forcing: ``[start, t0, ..., t_{L-2}]`` per row."""
    start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def greedy_decode(
    model: T5Model,
    encoder_input_tokens: jax.Array,
    max_decode_len: int,
    *,
    use_cache: bool = True,
    stop_at_eos: bool = True,
) -> jax.Array:
    """Greedy (argmax) decoding: ``[B, max_decode_len]`` int32 tokens, without the start token.

    The encoder runs once. With ``use_cache`` each step feeds one token through the decoder and
    attends to cached keys/values; without it every step re-runs the decoder on the whole prefix
    (the slow reference). A row that emitted EOS (``config.eos_token_id``) continues with pad (0),
    like ``transformers``' ``generate``; the loop ends when every row is done or the length is
    reached. ``stop_at_eos=False`` always produces ``max_decode_len`` argmax tokens.
    """
    if encoder_input_tokens.ndim != 2:
        raise ValueError(
            f"encoder_input_tokens must be [batch, length], got {encoder_input_tokens.shape}"
        )
    if max_decode_len < 1:
        raise ValueError(f"max_decode_len must be >= 1, got {max_decode_len}")
    cfg = model.config
    batch = encoder_input_tokens.shape[0]
    encoded = model.encode(encoder_input_tokens)
    tokens = jnp.full((batch, max_decode_len + 1), cfg.pad_token_id, jnp.int32)
    tokens = tokens.at[:, 0].set(cfg.decoder_start_token_id)
    done = jnp.zeros((batch,), bool)

    if use_cache:
        cache = model.init_cache(encoded, max_decode_len)

        def next_logits(i, tokens, cache):
            return model.decode_step(cache, tokens[:, i], i, encoder_input_tokens)

    else:
        cache = ()

        def next_logits(i, tokens, cache):
            logits = model.decode(encoded, encoder_input_tokens, tokens[:, :max_decode_len])
            return jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), cache

    def cond(state):
        i, _, done, _ = state
        return jnp.logical_and(i < max_decode_len, jnp.logical_not(jnp.all(done)))

    def body(state):
        i, tokens, done, cache = state
        logits, cache = next_logits(i, tokens, cache)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, cfg.pad_token_id, nxt)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
        if stop_at_eos:
            done = jnp.logical_or(done, nxt == cfg.eos_token_id)
        return i + 1, tokens, done, cache

    state = (jnp.asarray(0, jnp.int32), tokens, done, cache)
    _, tokens, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens[:, 1:]


def sequence_log_likelihood(
    model: T5Model,
    encoded: jax.Array,
    encoder_input_tokens: jax.Array,
    targets: jax.Array,
) -> jax.Array:
    """Summed log p(target tokens) per row ``[B]``; target pads (0) are not scored."""
    cfg = model.config
    logits = model.decode(
        encoded, encoder_input_tokens, shift_right(targets, cfg.decoder_start_token_id)
    )
    ce, _ = token_cross_entropy(logits, targets, targets != cfg.pad_token_id)
    return -jnp.sum(ce, axis=-1)


def rank_classification(
    model: T5Model,
    encoder_input_tokens: jax.Array,
    candidate_targets: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Score every candidate label string by its summed log-likelihood; return (argmax, scores).

    ``candidate_targets`` holds token ids (EOS included, 0-padded): ``[C, Lt]`` shared by all
    examples or ``[B, C, Lt]`` per example. The encoder runs once per example; its output is
    repeated per candidate so all ``B * C`` candidates are scored in one decoder pass.
    Returns ``predictions [B]`` (index of the best candidate) and ``scores [B, C]`` (float32).
    """
    enc = encoder_input_tokens
    cands = jnp.asarray(candidate_targets)
    batch = enc.shape[0]
    if cands.ndim == 2:
        cands = jnp.broadcast_to(cands[None], (batch, *cands.shape))
    if cands.ndim != 3 or cands.shape[0] != batch:
        raise ValueError(
            f"candidate_targets must be [C, Lt] or [batch={batch}, C, Lt], got {candidate_targets.shape}"
        )
    num_cands, length = cands.shape[1], cands.shape[2]
    encoded = model.encode(enc)
    scores = sequence_log_likelihood(
        model,
        jnp.repeat(encoded, num_cands, axis=0),
        jnp.repeat(enc, num_cands, axis=0),
        cands.reshape(batch * num_cands, length),
    ).reshape(batch, num_cands)
    return jnp.argmax(scores, axis=-1), scores

"""Losses shared by the models' heads and decoders, the trainer, the parity tests and the evaluators.

Every function returns per-token or per-example values together with their weights, so the caller
can both reduce them and split them by task (``per_task_mean``) without a second pass.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Normalization = Literal["tokens", "sum"] | float


def token_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-token cross entropy (float32) and per-token z-loss, both already multiplied by ``weights``.

    ``z_loss`` adds ``z_loss * logsumexp(logits)**2`` per token (PaLM/T5X), which keeps the softmax
    normaliser near 1 in low precision. Returns ``(ce, z)`` of shape ``targets.shape``.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    ce = (log_z - target_logit) * weights
    z = z_loss * jnp.square(log_z) * weights
    return ce, z


def normalize(total: jax.Array, weights: jax.Array, normalization: Normalization) -> jax.Array:
    """Reduce a summed loss: ``"tokens"`` divides by the weight sum (Hugging Face's mean over
    non-ignored tokens), ``"sum"`` keeps the sum, a number divides by that constant (T5X's
    ``loss_normalizing_factor``, which keeps the gradient scale independent of padding)."""
    if normalization == "tokens":
        return total / jnp.maximum(jnp.sum(weights), 1e-8)
    if normalization == "sum":
        return total
    return total / float(normalization)


def masked_logits(logits: jax.Array, num_labels: jax.Array | int) -> jax.Array:
    """Mask classes ``>= num_labels`` along the last axis.

    Heads with fewer labels share one tensor (``logits`` ``[batch, max_labels]``, ``num_labels``
    ``[batch]``); an LM head's padded vocabulary rows are masked with one int (any leading shape).
    Masked entries become the dtype's most negative value, so softmax gives them zero mass,
    log-softmax differences over them are 0 (symmetric KL) and argmax never picks them.
    """
    classes = jnp.arange(logits.shape[-1])
    valid = classes < jnp.asarray(num_labels)[..., None]
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)


def classification_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross entropy ``[batch]`` in float32 from (already masked) logits."""
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example squared error ``[batch]`` (regression heads; mean of it is MSE)."""
    return jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))


def per_task_mean(
    values: jax.Array, weights: jax.Array, task_ids: jax.Array, num_tasks: int
) -> tuple[jax.Array, jax.Array]:
    """Weighted mean of ``values`` per task id, and the weight per task (0 where a task is absent)."""
    sums, counts = per_task_sums(values, weights, task_ids, num_tasks)
    return sums / jnp.maximum(counts, 1e-8), counts


def per_task_sums(
    values: jax.Array, weights: jax.Array, task_ids: jax.Array, num_tasks: int
) -> tuple[jax.Array, jax.Array]:
    """Per task id: the weighted sum of ``values`` and the summed weight (both ``[num_tasks]``).

    Unlike ``per_task_mean`` these add up across micro-batches and devices, so the train step can
    accumulate them and divide once at the end. A one-hot contraction compiles to one fused op.
    """
    one_hot = jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)
    w = weights.astype(jnp.float32)
    sums = jnp.einsum("...t,...->t", one_hot, values.astype(jnp.float32) * w)
    counts = jnp.einsum("...t,...->t", one_hot, w)
    return sums, counts


def symmetric_kl(
    logits_p: jax.Array, logits_q: jax.Array, valid: jax.Array | None = None,
    detach_targets: bool = False,
) -> jax.Array:
    """``KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c)`` over the last axis.

    Both sides go through ``log_softmax`` in float32 and ``p = exp(log p)``: ``log(softmax(x))``
    underflows to ``log 0`` over a 250k vocabulary and turns the term into NaN. ``valid`` (same
    shape, bool) drops columns that are not classes of the row's task. ``detach_targets``: the
    same value, but each KL's target distribution is a constant, ``KL(sg(p)||q) + KL(sg(q)||p)``
    (MT-DNN's SMART loss), so the gradient is ``-sum_c (q_c d log p_c + p_c d log q_c)``.
    """
    lp = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
    lq = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
    if detach_targets:
        sp, sq = jax.lax.stop_gradient(lp), jax.lax.stop_gradient(lq)
        terms = jnp.exp(sp) * (sp - lq) + jnp.exp(sq) * (sq - lp)
    else:
        terms = (jnp.exp(lp) - jnp.exp(lq)) * (lp - lq)
    if valid is not None:
        terms = jnp.where(valid, terms, 0.0)
    return jnp.sum(terms, axis=-1)

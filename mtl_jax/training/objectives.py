"""Training objectives per model family: a batch dict in, ``(loss, aux)`` out.

Every objective is split in two so that gradient accumulation stays exact:

- ``terms(model, batch)`` returns *additive* quantities (``LossTerms``): the loss numerator (sum of
  weighted per-token/per-example losses, z-loss included), the denominator (sum of weights: real
  target tokens or real examples) and per-task sums/counts. Summing ``terms`` over micro-batches
  gives exactly the terms of the whole batch.
- ``finalize(terms)`` turns the totals into the loss: ``loss = numerator * loss_scale(denominator)``.
  The scale does not depend on the parameters, so the gradient of the whole batch is
  ``sum_i grad(numerator_i) * loss_scale(sum_i denominator_i)``, which is what the train step
  computes.

Normalisation (``normalization``):

- ``"tokens"`` (encoder-decoder default) / ``"examples"`` (classification default): divide by the
  number of real target tokens / real examples of the *whole* (effective) batch, i.e. the mean
  over them, as Hugging Face does. Micro-batches do not change it.
- a number: divide by that constant (T5X's ``loss_normalizing_factor``), so the gradient scale does
  not depend on how many target tokens a batch happens to hold.
- ``"sum"``: no division.

Per-task losses in ``aux`` are always means over that task's tokens/examples (z-loss excluded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_jax import features as F
from mtl_jax.models import losses
from mtl_jax.models.heads import per_example_loss

Batch = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LossTerms:
    """Additive loss quantities of one (micro-)batch."""

    numerator: jax.Array  # sum of weighted losses incl. z-loss; what gets differentiated
    denominator: jax.Array  # sum of weights (real target tokens / real examples)
    task_loss: jax.Array  # [num_tasks] weighted loss sums per task (z-loss excluded)
    task_weight: jax.Array  # [num_tasks] weight per task
    z_loss: jax.Array  # summed z-loss (part of numerator)


def loss_scale(normalization: Any, denominator: jax.Array) -> jax.Array:
    """The factor the summed loss is multiplied by (see the module docstring)."""
    if normalization in ("tokens", "examples"):
        return 1.0 / jnp.maximum(denominator, 1e-8)
    if normalization == "sum":
        return jnp.ones_like(denominator)
    try:
        factor = float(normalization)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown loss normalization {normalization!r}; use 'tokens', 'examples', 'sum' or a "
            "number (a constant loss_normalizing_factor)"
        ) from None
    if factor <= 0:
        raise ValueError(f"loss normalizing factor must be positive, got {factor}")
    return jnp.full_like(denominator, 1.0 / factor)


@dataclasses.dataclass(frozen=True)
class Objective:
    """Shared reduction; subclasses implement ``terms`` and ``predict``."""

    num_tasks: int
    normalization: Any

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        raise NotImplementedError

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        raise NotImplementedError

    def finalize(self, terms: LossTerms) -> tuple[jax.Array, dict[str, jax.Array]]:
        scale = loss_scale(self.normalization, terms.denominator)
        loss = terms.numerator * scale
        aux = {
            "loss": loss,
            "z_loss": terms.z_loss * scale,
            "per_task_loss": terms.task_loss / jnp.maximum(terms.task_weight, 1e-8),
            "per_task_weight": terms.task_weight,
            "weight": terms.denominator,
        }
        return loss, aux

    def __call__(
        self,
        model: nnx.Module,
        batch: Batch,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.finalize(self.terms(model, batch, deterministic=deterministic, rngs=rngs))


def _task_ids_like(batch: Batch, shape: tuple[int, ...]) -> jax.Array:
    """Task id per token: ``decoder_task_ids`` when packed, else ``task_id`` broadcast."""
    if F.DECODER_TASK_IDS in batch:
        return batch[F.DECODER_TASK_IDS].astype(jnp.int32)
    if F.TASK_ID in batch:
        tid = batch[F.TASK_ID].astype(jnp.int32)
        return jnp.broadcast_to(tid.reshape(tid.shape + (1,) * (len(shape) - tid.ndim)), shape)
    return jnp.zeros(shape, jnp.int32)


def _require(batch: Batch, names: Sequence[str], who: str) -> None:
    missing = [n for n in names if n not in batch]
    if missing:
        raise KeyError(f"{who}: batch lacks feature(s) {missing}; it has {sorted(batch)}")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderObjective(Objective):
    """mT5 text-to-text: token cross entropy on ``decoder_target_tokens`` weighted by
    ``decoder_loss_weights``, plus optional z-loss ``z_loss * logsumexp(logits)**2`` per token."""

    normalization: Any = "tokens"
    z_loss: float = 0.0

    def _logits(
        self, model: nnx.Module, batch: Batch, deterministic: bool, rngs: nnx.Rngs | None
    ) -> jax.Array:
        _require(batch, F.ENC_DEC_FEATURES, "encoder-decoder objective")
        packing = {k: batch[k] for k in F.PACKING_FEATURES if k in batch}
        return model(
            batch[F.ENCODER_INPUT_TOKENS],
            batch[F.DECODER_INPUT_TOKENS],
            **packing,
            deterministic=deterministic,
            rngs=rngs,
        )

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        logits = self._logits(model, batch, deterministic, rngs)
        targets = batch[F.DECODER_TARGET_TOKENS]
        weights = batch[F.DECODER_LOSS_WEIGHTS].astype(jnp.float32)
        ce, z = losses.token_cross_entropy(logits, targets, weights, self.z_loss)
        task_ids = _task_ids_like(batch, targets.shape)
        # ce is already weighted: per-task sums use weight 1, per-task counts the real weights.
        task_loss, _ = losses.per_task_sums(ce, jnp.ones_like(ce), task_ids, self.num_tasks)
        _, task_weight = losses.per_task_sums(ce, weights, task_ids, self.num_tasks)
        return LossTerms(
            numerator=jnp.sum(ce) + jnp.sum(z),
            denominator=jnp.sum(weights),
            task_loss=task_loss,
            task_weight=task_weight,
            z_loss=jnp.sum(z),
        )

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Per example: log-likelihood of the given targets (rank classification scores each
        candidate label as a row) and the greedy token per position (teacher-forced)."""
        logits = self._logits(model, batch, True, None)
        weights = batch[F.DECODER_LOSS_WEIGHTS].astype(jnp.float32)
        ce, _ = losses.token_cross_entropy(logits, batch[F.DECODER_TARGET_TOKENS], weights)
        return {
            "target_log_likelihood": -jnp.sum(ce, axis=-1),
            "argmax_tokens": jnp.argmax(logits, axis=-1).astype(jnp.int32),
        }


@dataclasses.dataclass(frozen=True)
class ClassificationObjective(Objective):
    """XLM-R with per-task heads: per-example cross entropy on the example's task head, or squared
    error on the regression output for tasks with one label (``models.heads.per_example_loss``).

    The model returns ``logits`` (masked per task), ``regression`` and ``is_regression``.
    ``num_labels`` (optional, per task) lets a missing ``regression_targets`` feature fail at
    trace time instead of turning the loss into NaN. An example whose ``attention_mask`` is all
    zero is padding and has weight 0.
    """

    normalization: Any = "examples"
    num_labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_labels is not None and len(self.num_labels) != self.num_tasks:
            raise ValueError(
                f"num_labels has {len(self.num_labels)} entries for {self.num_tasks} tasks"
            )

    def _outputs(
        self, model: nnx.Module, batch: Batch, deterministic: bool, rngs: nnx.Rngs | None
    ) -> dict[str, jax.Array]:
        _require(batch, (F.INPUT_IDS, F.ATTENTION_MASK, F.TASK_ID), "classification objective")
        extra = {F.TOKEN_TYPE_IDS: batch[F.TOKEN_TYPE_IDS]} if F.TOKEN_TYPE_IDS in batch else {}
        return model(
            batch[F.INPUT_IDS],
            batch[F.ATTENTION_MASK],
            batch[F.TASK_ID],
            **extra,
            deterministic=deterministic,
            rngs=rngs,
        )

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        _require(batch, (F.LABELS,), "classification objective")
        if self.num_labels is not None and 1 in self.num_labels:
            _require(batch, (F.REGRESSION_TARGETS,), "classification objective (regression task)")
        out = self._outputs(model, batch, deterministic, rngs)
        per_example = per_example_loss(out, batch[F.LABELS], batch.get(F.REGRESSION_TARGETS))
        weights = (jnp.sum(batch[F.ATTENTION_MASK], axis=-1) > 0).astype(jnp.float32)
        per_example = jnp.where(weights > 0, per_example, 0.0)
        task_loss, task_weight = losses.per_task_sums(
            per_example, weights, batch[F.TASK_ID].astype(jnp.int32), self.num_tasks
        )
        return LossTerms(
            numerator=jnp.sum(per_example * weights),
            denominator=jnp.sum(weights),
            task_loss=task_loss,
            task_weight=task_weight,
            z_loss=jnp.zeros((), jnp.float32),
        )

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Masked logits, the predicted class and the regression output per example."""
        out = self._outputs(model, batch, True, None)
        return {
            "logits": out["logits"],
            "predictions": jnp.argmax(out["logits"], axis=-1).astype(jnp.int32),
            "regression": out["regression"],
        }

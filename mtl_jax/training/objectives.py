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
import math
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
    # [num_tasks] each task's share of the numerator (sums to it): what PCGrad differentiates.
    task_numerator: jax.Array
    # Named additive terms a wrapping objective adds (e.g. "r3f_kl", already inside numerator
    # with its weight); logged normalised like the loss.
    extra: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


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

    def outputs(
        self,
        model: nnx.Module,
        batch: Batch,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
    ) -> Any:
        """The model's forward pass on ``batch`` (what ``terms_from`` and ``divergence`` read).
        ``embedding_noise`` perturbs the token-embedding lookup (R3F), ``embedding_output_noise``
        the embeddings' output (SMART); both ``embedding_shape``."""
        raise NotImplementedError

    def terms_from(self, outputs: Any, batch: Batch) -> LossTerms:
        """The loss terms of one forward pass."""
        raise NotImplementedError

    def divergence(
        self, outputs_a: Any, outputs_b: Any, batch: Batch, detach_targets: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """Symmetric KL between two forward passes' predictions per element (example or target
        token), weighted and loss-scaled like the loss, and each element's task id.
        ``detach_targets``: each KL's target side is a constant (``losses.symmetric_kl``)."""
        raise NotImplementedError

    def embedding_shape(self, model: nnx.Module, batch: Batch) -> tuple[int, int, int]:
        """``[batch, length, width]`` of the token embeddings the model's noise hook perturbs."""
        raise NotImplementedError

    def embedding_mask(self, batch: Batch) -> jax.Array:
        """``[batch, length]`` float32, 1 at real (non-padding) input tokens: where noise goes."""
        raise NotImplementedError

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        return self.terms_from(self.outputs(model, batch, deterministic, rngs), batch)

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
        for name, value in terms.extra.items():
            aux[name] = value * scale
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


LOSS_SCALINGS = (None, "log_classes")


def _check_scaling(loss_scaling: str | None) -> None:
    if loss_scaling not in LOSS_SCALINGS:
        raise ValueError(f"loss_scaling must be one of {LOSS_SCALINGS}, got {loss_scaling!r}")


@dataclasses.dataclass(frozen=True)
class EncoderDecoderObjective(Objective):
    """mT5 text-to-text: token cross entropy on ``decoder_target_tokens`` weighted by
    ``decoder_loss_weights``, plus optional z-loss ``z_loss * logsumexp(logits)**2`` per token.

    ``loss_scaling="log_classes"`` (Muppet) divides every token's loss by ``log(vocabulary size)``:
    every text-to-text task predicts over the whole vocabulary. ``vocab_size`` is that size (the
    model's logits are ``padded_vocab_size`` wide, the padding masked); None: the logits' width.
    """

    normalization: Any = "tokens"
    z_loss: float = 0.0
    loss_scaling: str | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        _check_scaling(self.loss_scaling)

    def outputs(
        self,
        model: nnx.Module,
        batch: Batch,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
    ) -> jax.Array:
        _require(batch, F.ENC_DEC_FEATURES, "encoder-decoder objective")
        packing = {k: batch[k] for k in F.PACKING_FEATURES if k in batch}
        # T5 has no embedding layer norm or position embeddings: the encoder's embedding output
        # is its token lookup (only dropout follows, inside the encoder), so both hooks add there.
        given = [n for n in (embedding_noise, embedding_output_noise) if n is not None]
        noise = {"embedding_noise": sum(given[1:], given[0])} if given else {}
        return model(
            batch[F.ENCODER_INPUT_TOKENS],
            batch[F.DECODER_INPUT_TOKENS],
            **packing,
            **noise,
            deterministic=deterministic,
            rngs=rngs,
        )

    def _scale(self, logits: jax.Array) -> float:
        if not self.loss_scaling:
            return 1.0
        return 1.0 / math.log(self.vocab_size or logits.shape[-1])

    def terms_from(self, outputs: jax.Array, batch: Batch) -> LossTerms:
        targets = batch[F.DECODER_TARGET_TOKENS]
        weights = batch[F.DECODER_LOSS_WEIGHTS].astype(jnp.float32)
        ce, z = losses.token_cross_entropy(outputs, targets, weights, self.z_loss)
        task_ids = _task_ids_like(batch, targets.shape)
        # ce is already weighted: per-task sums use weight 1, per-task counts the real weights.
        # Per-task losses are logged unscaled (comparable across runs with and without scaling).
        task_loss, _ = losses.per_task_sums(ce, jnp.ones_like(ce), task_ids, self.num_tasks)
        _, task_weight = losses.per_task_sums(ce, weights, task_ids, self.num_tasks)
        per_token = ce * self._scale(outputs) + z
        task_numerator, _ = losses.per_task_sums(per_token, jnp.ones_like(ce), task_ids,
                                                 self.num_tasks)
        return LossTerms(
            numerator=jnp.sum(per_token),
            denominator=jnp.sum(weights),
            task_loss=task_loss,
            task_weight=task_weight,
            z_loss=jnp.sum(z),
            task_numerator=task_numerator,
        )

    def divergence(
        self, outputs_a: jax.Array, outputs_b: jax.Array, batch: Batch, detach_targets: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """Per target token over the vocabulary, weighted by ``decoder_loss_weights`` (padding
        and packing gaps count 0), so the term is normalised like the loss."""
        weights = batch[F.DECODER_LOSS_WEIGHTS].astype(jnp.float32)
        kl = losses.symmetric_kl(outputs_a, outputs_b, detach_targets=detach_targets)
        return (kl * weights * self._scale(outputs_a),
                _task_ids_like(batch, batch[F.DECODER_TARGET_TOKENS].shape))

    def embedding_shape(self, model: nnx.Module, batch: Batch) -> tuple[int, int, int]:
        b, length = batch[F.ENCODER_INPUT_TOKENS].shape
        return b, length, model.config.d_model

    def embedding_mask(self, batch: Batch) -> jax.Array:
        # Token 0 is T5's padding (T5Model._encoder_valid; packing gaps are padding too).
        return (batch[F.ENCODER_INPUT_TOKENS] != 0).astype(jnp.float32)

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Per example: log-likelihood of the given targets (rank classification scores each
        candidate label as a row) and the greedy token per position (teacher-forced)."""
        logits = self.outputs(model, batch, True, None)
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
    zero is padding and has weight 0. ``loss_scaling="log_classes"`` (Muppet) divides each
    example's loss by ``log(number of classes of its task)``; regression tasks (one output,
    ``log 1 = 0``) are left unscaled.
    """

    normalization: Any = "examples"
    num_labels: tuple[int, ...] | None = None
    loss_scaling: str | None = None

    def __post_init__(self) -> None:
        if self.num_labels is not None and len(self.num_labels) != self.num_tasks:
            raise ValueError(
                f"num_labels has {len(self.num_labels)} entries for {self.num_tasks} tasks"
            )
        _check_scaling(self.loss_scaling)
        if self.loss_scaling and self.num_labels is None:
            raise ValueError("loss_scaling='log_classes' needs num_labels (classes per task)")

    def outputs(
        self,
        model: nnx.Module,
        batch: Batch,
        deterministic: bool,
        rngs: nnx.Rngs | None,
        embedding_noise: jax.Array | None = None,
        embedding_output_noise: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        _require(batch, (F.INPUT_IDS, F.ATTENTION_MASK, F.TASK_ID), "classification objective")
        extra = {F.TOKEN_TYPE_IDS: batch[F.TOKEN_TYPE_IDS]} if F.TOKEN_TYPE_IDS in batch else {}
        if embedding_noise is not None:
            extra["embedding_noise"] = embedding_noise
        if embedding_output_noise is not None:
            extra["embedding_output_noise"] = embedding_output_noise
        extra.update({k: batch[k] for k in F.SIAMESE_FEATURES if k in batch})
        return model(
            batch[F.INPUT_IDS],
            batch[F.ATTENTION_MASK],
            batch[F.TASK_ID],
            **extra,
            deterministic=deterministic,
            rngs=rngs,
        )

    def example_scale(self, batch: Batch) -> jax.Array:
        """Each example's loss factor: ``1 / log(classes of its task)``, 1 for regression."""
        task = batch[F.TASK_ID].astype(jnp.int32)
        if not self.loss_scaling:
            return jnp.ones(task.shape, jnp.float32)
        factors = jnp.asarray([1.0 / math.log(n) if n > 1 else 1.0 for n in self.num_labels],
                              jnp.float32)
        return factors[task]

    def _weights(self, batch: Batch) -> jax.Array:
        return (jnp.sum(batch[F.ATTENTION_MASK], axis=-1) > 0).astype(jnp.float32)

    def terms_from(self, outputs: dict[str, jax.Array], batch: Batch) -> LossTerms:
        _require(batch, (F.LABELS,), "classification objective")
        if self.num_labels is not None and 1 in self.num_labels:
            _require(batch, (F.REGRESSION_TARGETS,), "classification objective (regression task)")
        per_example = per_example_loss(outputs, batch[F.LABELS], batch.get(F.REGRESSION_TARGETS))
        weights = self._weights(batch)
        per_example = jnp.where(weights > 0, per_example, 0.0)
        task_ids = batch[F.TASK_ID].astype(jnp.int32)
        task_loss, task_weight = losses.per_task_sums(
            per_example, weights, task_ids, self.num_tasks
        )
        scaled = per_example * weights * self.example_scale(batch)
        task_numerator, _ = losses.per_task_sums(scaled, jnp.ones_like(scaled), task_ids,
                                                 self.num_tasks)
        return LossTerms(
            numerator=jnp.sum(scaled),
            denominator=jnp.sum(weights),
            task_loss=task_loss,
            task_weight=task_weight,
            z_loss=jnp.zeros((), jnp.float32),
            task_numerator=task_numerator,
        )

    def divergence(
        self, outputs_a: dict[str, jax.Array], outputs_b: dict[str, jax.Array], batch: Batch,
        detach_targets: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Over each example's own label columns (other tasks' columns masked out); regression
        examples contribute nothing."""
        logits_a, logits_b = outputs_a["logits"], outputs_b["logits"]
        columns = jnp.arange(logits_a.shape[-1])
        valid = columns[None, :] < outputs_a["num_labels"][:, None]
        kl = losses.symmetric_kl(logits_a, logits_b, valid, detach_targets=detach_targets)
        weights = self._weights(batch) * (~outputs_a["is_regression"]).astype(jnp.float32)
        return kl * weights * self.example_scale(batch), batch[F.TASK_ID].astype(jnp.int32)

    def embedding_shape(self, model: nnx.Module, batch: Batch) -> tuple[int, int, int]:
        b, length = batch[F.INPUT_IDS].shape
        return b, length, model.config.hidden_size

    def embedding_mask(self, batch: Batch) -> jax.Array:
        return (batch[F.ATTENTION_MASK] > 0).astype(jnp.float32)

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Masked logits, the predicted class and the regression output per example."""
        out = self.outputs(model, batch, True, None)
        return {
            "logits": out["logits"],
            "predictions": jnp.argmax(out["logits"], axis=-1).astype(jnp.int32),
            "regression": out["regression"],
        }


def row_noise(
    key: jax.Array, rows: jax.Array, shape: tuple[int, int, int], sigma: float, kind: str
) -> jax.Array:
    """Float32 noise ``shape``, ``U(-sigma, sigma)`` (``kind="uniform"``) or ``N(0, sigma^2)``
    (``"normal"``); batch row r from ``fold_in(key, rows[r])``, so a row gets the same noise
    whichever micro-batch holds it (``rows`` is the batch's ``F.ROW_INDEX``)."""
    _, length, width = shape

    def one(row: jax.Array) -> jax.Array:
        k = jax.random.fold_in(key, row)
        if kind == "uniform":
            return jax.random.uniform(k, (length, width), jnp.float32, -sigma, sigma)
        return sigma * jax.random.normal(k, (length, width), jnp.float32)

    return jax.vmap(one)(rows)


@dataclasses.dataclass(frozen=True)
class WrappedObjective:
    """An objective that adds a term to a family objective's (``base``) loss terms (R3F, SMART):
    reduction and prediction are the base's."""

    base: Objective

    @property
    def num_tasks(self) -> int:
        return self.base.num_tasks

    @property
    def normalization(self) -> Any:
        return self.base.normalization

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        raise NotImplementedError

    def noise_key(self, rngs: nnx.Rngs | None) -> jax.Array:
        """The step's noise key (one per step, the same in every micro-batch: per-row noise
        derives from it with ``F.ROW_INDEX``)."""
        stream = getattr(rngs, "noise", None) if rngs is not None else None
        if stream is None:
            raise ValueError(
                f"{type(self).__name__} needs a 'noise' RNG stream (the train step provides one)")
        return stream()

    def add_divergence(
        self, terms: LossTerms, values: jax.Array, task_ids: jax.Array, weight: float, name: str
    ) -> LossTerms:
        """``terms`` plus ``weight * sum(values)`` (per task too, for PCGrad), logged as ``name``."""
        per_task, _ = losses.per_task_sums(values, jnp.ones_like(values), task_ids,
                                           self.num_tasks)
        total = jnp.sum(values)
        return dataclasses.replace(
            terms, numerator=terms.numerator + weight * total,
            task_numerator=terms.task_numerator + weight * per_task,
            extra={**terms.extra, name: total},
        )

    def finalize(self, terms: LossTerms) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.base.finalize(terms)

    def predict(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        return self.base.predict(model, batch)


@dataclasses.dataclass(frozen=True)
class R3FObjective(WrappedObjective):
    """R3F (Aghajanyan et al. 2020): ``L(f(x)) + lam * KL_sym(f(x) || f(x + z))`` with ``z``
    added to the raw token-embedding lookup, ``z ~ U(-sigma, sigma)`` or ``N(0, sigma^2)``.

    Wraps a family objective; gradients flow through both passes (as the reference does); the
    KL term is logged as ``r3f_kl`` (normalised like the loss). The noise of batch row r is drawn
    from ``fold_in(noise_key, r)`` (``F.ROW_INDEX``, set by the train step), so micro-batches see
    exactly the noise the whole batch would. Regression heads get no KL term.
    """

    sigma: float = 1e-5
    lam: float = 1e-2
    noise: str = "uniform"

    def __post_init__(self) -> None:
        if self.noise not in ("uniform", "normal"):
            raise ValueError(f"R3F noise must be 'uniform' or 'normal', got {self.noise!r}")
        if self.sigma < 0 or self.lam < 0:
            raise ValueError(f"R3F sigma and lambda must be >= 0, got {self.sigma}, {self.lam}")

    def sample_noise(self, key: jax.Array, rows: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
        return row_noise(key, rows, shape, self.sigma, self.noise)

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> LossTerms:
        clean = self.base.outputs(model, batch, deterministic, rngs)
        terms = self.base.terms_from(clean, batch)
        shape = self.base.embedding_shape(model, batch)
        rows = batch.get(F.ROW_INDEX, jnp.arange(shape[0]))
        z = self.sample_noise(self.noise_key(rngs), rows, shape)
        noised = self.base.outputs(model, batch, deterministic, rngs, embedding_noise=z)
        values, task_ids = self.base.divergence(clean, noised, batch)
        return self.add_divergence(terms, values, task_ids, self.lam, "r3f_kl")

"""Optax chains for the two model families, learning-rate schedules and the partition hook.

- Adafactor with T5's defaults (mT5): factored second moments, decay exponent 0.8, update clipping
  at RMS 1.0, step size relative to the parameter's RMS (floored at ``eps2=1e-3``), no momentum,
  ``eps1=1e-30`` added to squared gradients. These are T5X's/Mesh TF's defaults; the chain is built
  from optax's pieces so both epsilons are explicit arguments.
- AdamW (XLM-R) with decoupled weight decay masked off norm scales and biases.
- The partition hook: ``partition_fn(path) -> label`` labels every parameter ("trainable",
  "frozen"); frozen parameters go through ``optax.set_to_zero`` (no update) and, because the
  trainable chain is wrapped in a mask, they hold NO optimizer state. LoRA, CA-MTL and layer
  freezing are partition functions (``make_partition``: LoRA matrices + ``train`` regexes, minus
  ``freeze`` and the model's own frozen set).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.models.ca_mtl import is_conditional_param
from mtl_jax.models.lora import is_lora_param
from mtl_jax.training.partitioning import path_str
from mtl_jax.training.teacher import Momentum, momentum_teacher

TRAINABLE, FROZEN = "trainable", "frozen"
Schedule = Callable[[jax.Array | int], jax.Array]
PartitionFn = Callable[[str], str]


class Optimizer(NamedTuple):
    """What the train step needs: the optax transformation, the schedule (for logging the
    learning rate of a step) and the partition hook (to leave frozen gradients uncomputed)."""

    tx: optax.GradientTransformation
    learning_rate_fn: Schedule
    partition_fn: PartitionFn | None = None

    def frozen_mask(self, params: Any) -> Any:
        """True for every parameter the partition hook labels ``frozen``."""
        if self.partition_fn is None:
            return jax.tree.map(lambda _: False, params)
        return path_mask(params, lambda path: self.partition_fn(path) == FROZEN)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def make_schedule(
    schedule: str,
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    end_learning_rate: float = 0.0,
) -> Schedule:
    """The learning rate as a function of the optimizer step (0 for the first update).

    - ``constant``: ``learning_rate``, after an optional linear warmup from 0.
    - ``linear``: linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then linear
      decay to ``end_learning_rate`` at ``total_steps`` (Hugging Face's
      ``get_linear_schedule_with_warmup`` when ``end_learning_rate=0``).
    - ``rsqrt``: T5's inverse square root, ``learning_rate * sqrt(w / max(step, w))`` with
      ``w = warmup_steps``: constant ``learning_rate`` during the first ``w`` steps, then
      ``1/sqrt(step)`` decay. T5's pre-training (``1/sqrt(max(step, 10000))``) is
      ``learning_rate=0.01, warmup_steps=10000``.
    """
    lr = float(learning_rate)
    w = int(warmup_steps)
    if w < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def warmup(step: jax.Array) -> jax.Array:
        return jnp.minimum(1.0, step / w) if w > 0 else jnp.ones_like(step)

    if schedule == "constant":
        return lambda step: lr * warmup(jnp.asarray(step, jnp.float32))
    if schedule == "linear":
        if total_steps is None or total_steps <= w:
            raise ValueError(
                f"schedule 'linear' needs total_steps > warmup_steps, got total_steps={total_steps}"
                f" warmup_steps={w}"
            )
        end = float(end_learning_rate)

        def linear(step: jax.Array | int) -> jax.Array:
            step = jnp.asarray(step, jnp.float32)
            frac = jnp.clip((total_steps - step) / (total_steps - w), 0.0, 1.0)
            return jnp.where(step < w, lr * warmup(step), end + (lr - end) * frac)

        return linear
    if schedule == "rsqrt":
        if w <= 0:
            raise ValueError("schedule 'rsqrt' needs warmup_steps > 0 (T5 uses 10000)")
        return lambda step: lr * jnp.sqrt(w / jnp.maximum(jnp.asarray(step, jnp.float32), w))
    raise ValueError(f"unknown schedule {schedule!r}; choose constant, linear or rsqrt")


# ------------------------------------------------------------------------------------------------
# Masks and partitions from parameter paths
# ------------------------------------------------------------------------------------------------


def default_weight_decay(path: str) -> bool:
    """Decay everything except biases, norm scales and anything under a norm layer (the usual
    BERT/RoBERTa fine-tuning rule)."""
    parts = path.lower().split("/")
    if parts[-1] in ("bias", "scale", "b"):
        return False
    return not any("norm" in p for p in parts)


def path_mask(params: Any, predicate: Callable[[str], bool]) -> Any:
    """A boolean tree: ``predicate(path)`` for every parameter."""
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(path_str(p))), params)


def param_labels(
    params: Any, partition_fn: PartitionFn | None, allowed: Sequence[str] = (TRAINABLE, FROZEN)
) -> Any:
    """The label of every parameter (all ``trainable`` without a partition function)."""

    def label(path: tuple[Any, ...], _: Any) -> str:
        name = path_str(path)
        value = TRAINABLE if partition_fn is None else partition_fn(name)
        if value not in allowed:
            raise ValueError(
                f"partition function labelled parameter {name!r} as {value!r}; "
                f"allowed labels: {list(allowed)}"
            )
        return value

    return jax.tree_util.tree_map_with_path(label, params)


def freeze_matching(*patterns: str) -> PartitionFn:
    """A partition function freezing every parameter whose path matches one of the regular
    expressions (``re.search``), e.g. ``freeze_matching(r"^embedder/", r"encoder/layers/[0-5]/")``."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path: FROZEN if any(c.search(path) for c in compiled) else TRAINABLE


def train_only_matching(*patterns: str) -> PartitionFn:
    """The complement: only parameters matching a pattern are trained (e.g. LoRA/adapters/heads)."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path: TRAINABLE if any(c.search(path) for c in compiled) else FROZEN


def make_partition(
    train: Sequence[str] = (), freeze: Sequence[str] = (), lora: bool = False,
    model_frozen: Callable[[str], bool] | None = None,
) -> PartitionFn | None:
    """A run's partition from its switches, by one rule: with LoRA or a ``train`` list, only the
    LoRA matrices, CA-MTL's conditional parameters and the parameters matching a ``train`` regex
    are trained; otherwise all are; in both cases a parameter matching a ``freeze`` regex, or
    that ``model_frozen`` (the model's own frozen set, e.g. ``ca_mtl.frozen_predicate``) names,
    is frozen. ``None`` when everything trains (no partition, no masking cost). Regexes are
    ``re.search``-ed in the parameter path."""
    if isinstance(train, str) or isinstance(freeze, str):
        raise TypeError("train/freeze take a list of regular expressions, not one string")
    if not (train or freeze or lora or model_frozen):
        return None
    only = [re.compile(p) for p in train]
    frozen = [re.compile(p) for p in freeze]
    restrict = lora or bool(only)

    def partition(path: str) -> str:
        if any(c.search(path) for c in frozen) or (model_frozen is not None and model_frozen(path)):
            return FROZEN
        if restrict and not (is_lora_param(path) or is_conditional_param(path)
                             or any(c.search(path) for c in only)):
            return FROZEN
        return TRAINABLE

    return partition


# ------------------------------------------------------------------------------------------------
# Chains
# ------------------------------------------------------------------------------------------------


def adafactor(
    learning_rate: float | Schedule,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    eps1: float = 1e-30,
    eps2: float = 1e-3,
    min_dim_size_to_factor: int = 128,
    factored: bool = True,
    momentum: float | None = None,
    decay_offset: int = 0,
) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern 2018) with T5's defaults, step = -lr * max(eps2, RMS(param)) *
    clip(g / sqrt(v_hat))."""
    parts: list[optax.GradientTransformation] = [
        optax.scale_by_factored_rms(
            factored=factored,
            decay_rate=decay_rate,
            step_offset=decay_offset,
            min_dim_size_to_factor=min_dim_size_to_factor,
            epsilon=eps1,
        )
    ]
    if clipping_threshold is not None:
        parts.append(optax.clip_by_block_rms(clipping_threshold))
    parts.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        parts.append(optax.scale_by_param_block_rms(eps2))
    if momentum is not None:
        parts.append(optax.ema(momentum, debias=False))
    parts.append(optax.scale(-1.0))
    return optax.chain(*parts)


def make_optimizer(
    name: str = "adafactor",
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    end_learning_rate: float = 0.0,
    clip_grad_norm: float | None = None,
    # AdamW
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay_fn: Callable[[str], bool] = default_weight_decay,
    # Adafactor
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    eps1: float = 1e-30,
    eps2: float = 1e-3,
    min_dim_size_to_factor: int = 128,
    momentum: float | None = None,
    # Partition hook
    partition_fn: PartitionFn | None = None,
    extra_transforms: Mapping[str, optax.GradientTransformation] | None = None,
    # SMART's Bregman proximal point
    teacher_momentum: Momentum | None = None,
) -> Optimizer:
    """The one entry point: ``name`` is ``"adafactor"`` (T5 defaults) or ``"adamw"``.

    ``clip_grad_norm`` clips the global norm of the trainable gradients first. ``partition_fn``
    maps a parameter path (``"encoder/layers/0/mlp/wi/kernel"``) to ``"trainable"``,
    ``"frozen"`` or a key of ``extra_transforms`` (e.g. a head trained with another rate).
    ``teacher_momentum``: keep an exponential moving average of the trainable parameters in the
    optimizer state (``teacher.momentum_teacher``; SMART's proximal point term reads it).
    """
    lr_fn = make_schedule(schedule, learning_rate, warmup_steps, total_steps, end_learning_rate)
    if name == "adafactor":
        core = adafactor(
            lr_fn,
            decay_rate=decay_rate,
            clipping_threshold=clipping_threshold,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            eps1=eps1,
            eps2=eps2,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=momentum,
        )
    elif name == "adamw":
        core = optax.adamw(
            lr_fn,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            mask=lambda params: path_mask(params, weight_decay_fn),
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose 'adafactor' or 'adamw'")
    if clip_grad_norm is not None:
        core = optax.chain(optax.clip_by_global_norm(clip_grad_norm), core)
    if teacher_momentum is not None:
        core = optax.chain(core, momentum_teacher(teacher_momentum))
    if partition_fn is None and not extra_transforms:
        return Optimizer(core, lr_fn, None)
    transforms: dict[str, optax.GradientTransformation] = {
        TRAINABLE: core,
        FROZEN: optax.set_to_zero(),
        **dict(extra_transforms or {}),
    }
    allowed = tuple(transforms)
    partition = getattr(optax, "partition", None) or optax.multi_transform
    tx = partition(transforms, lambda params: param_labels(params, partition_fn, allowed))
    return Optimizer(tx, lr_fn, partition_fn)

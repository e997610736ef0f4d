"""Task embeddings of Vu et al. (2020), "Exploring and Predicting Transferability across NLP
Tasks": TextEmb (what a task's text looks like to an encoder) and TaskEmb (the diagonal empirical
Fisher information of a model fine-tuned on the task), each a dict of named fixed-size vectors.

Batches come in as the batch dicts of ``mtl_jax.features`` (built by the data layer); the model
family is read from the batch (``encoder_input_tokens``: mT5, ``input_ids``: XLM-R).

TextEmb: per example the mean of the encoder's final token states over its real tokens (XLM-R:
the last layer; mT5: the encoder output after its final norm), averaged over the examples. No
label is read.

TaskEmb follows the reference implementation (``run_taskemb_CR.py`` of tuvuumass/
task-transferability) batch by batch: the loss is the batch's mean task loss (mean over examples
for heads, over target tokens for mT5); its gradient is taken with respect to the parameters and
to zero-valued probes at the component outputs (``probe_shapes`` of the model: per layer the heads'
output before the out projection and the layer output, plus the first-token state for XLM-R).
Per batch, a parameter contributes its squared gradient; a component output contributes the square
of its gradient summed over the batch's real tokens (the first-token state: over the examples),
divided by the batch's real tokens. The per-batch values are summed and divided by the number of
examples. Squaring the token-summed gradient (not summing squared per-token gradients) is what
the reference does; it is the Fisher of a per-dimension offset shared by every token.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax import features as F
from mtl_jax.training.partitioning import path_str
from mtl_jax.training.train_state import merge_model, split_model

VALID = "valid"  # eval batches mark their real rows (mtl_jax.data.eval_sets.VALID)
TEXT_COMPONENT = "text"
PARAM_PREFIX = "param/"
Batch = Mapping[str, np.ndarray]
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], Mapping[str, jax.Array]], jax.Array]
# Parameters whose Fisher is kept by default: all but the embedding tables (vocabulary-sized,
# gradients only on the rows a task's text uses), per-task heads / LM head (their shapes differ
# between runs, so they cannot be compared across tasks) and XLM-R's pooler (the heads read the
# first token, so the pooler gets no gradient).
DEFAULT_PARAMS = (r"^(?!.*(word_embeddings|position_embeddings|token_type_embeddings|shared|heads"
                  r"|lm_head|pooler)).*")


def _is_encdec(batch: Mapping[str, Any]) -> bool:
    if F.ENCODER_INPUT_TOKENS in batch:
        return True
    if F.INPUT_IDS in batch:
        return False
    raise KeyError(f"a task-embedding batch needs {F.INPUT_IDS!r} (XLM-R) or "
                   f"{F.ENCODER_INPUT_TOKENS!r} (mT5); it has {sorted(batch)}")


def token_mask(batch: Mapping[str, Any]) -> Any:
    """Real input tokens ``[batch, length]`` (float32): XLM-R's attention mask, mT5's nonzero
    encoder tokens; rows marked invalid by ``valid`` count none."""
    if _is_encdec(batch):
        mask = (batch[F.ENCODER_INPUT_TOKENS] != 0).astype(jnp.float32)
    else:
        mask = jnp.asarray(batch[F.ATTENTION_MASK]).astype(jnp.float32)
    if VALID in batch:
        mask = mask * jnp.asarray(batch[VALID]).astype(jnp.float32)[:, None]
    return mask


def _numeric(batch: Batch) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in batch.items()
            if np.asarray(v).dtype.kind in "biuf"}


def _examples(mask: np.ndarray) -> int:
    return int(np.sum(np.asarray(mask).sum(axis=1) > 0))


# ------------------------------------------------------------------------------------------------
# TextEmb
# ------------------------------------------------------------------------------------------------


def final_token_states(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The encoder's final token states ``[batch, length, hidden]`` in float32."""
    if _is_encdec(batch):
        return model.encode(batch[F.ENCODER_INPUT_TOKENS]).astype(jnp.float32)
    hidden, _ = model.encoder(batch[F.INPUT_IDS], batch[F.ATTENTION_MASK],
                              batch.get(F.TOKEN_TYPE_IDS))
    return hidden.astype(jnp.float32)


def text_embedding(model: nnx.Module, batches: Iterable[Batch],
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """``{"text": [hidden]}``: the mean over examples of each example's mean final token state
    (padding masked). Raises when the batches hold no example."""
    graphdef, params, rest = split_model(model)
    total: np.ndarray | None = None
    count = 0
    for batch in batches:
        batch = _numeric(batch)
        summed = np.asarray(_text_step(graphdef, params, rest, batch), np.float64)
        total = summed if total is None else total + summed
        n = _examples(np.asarray(token_mask(batch)))
        count += n
        if progress is not None:
            progress(n)
    if total is None or count == 0:
        raise ValueError("TextEmb: the task gave no example (empty split?)")
    return {TEXT_COMPONENT: (total / count).astype(np.float32)}


@functools.partial(jax.jit, static_argnums=0)
def _text_step(graphdef: Any, params: Any, rest: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """The batch's sum over examples of each example's mean final token state."""
    states = final_token_states(merge_model(graphdef, params, rest), batch)
    mask = token_mask(batch)
    per_example = jnp.einsum("blh,bl->bh", states, mask) / jnp.maximum(
        mask.sum(axis=1, keepdims=True), 1.0)
    return per_example.sum(axis=0)  # rows without tokens are zeros


# ------------------------------------------------------------------------------------------------
# TaskEmb
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObjectiveLoss:
    """``loss(model, batch, probes)``: ``objective``'s loss (a training objective of
    ``mtl_jax.training.objectives`` with a per-batch mean normalisation) on a forward pass that
    carries ``probes``. Hashable, so runs of one architecture share one compiled step."""

    objective: Any

    def __call__(self, model: nnx.Module, batch: Mapping[str, jax.Array],
                 probes: Mapping[str, jax.Array]) -> jax.Array:
        if _is_encdec(batch):
            packing = {k: batch[k] for k in F.PACKING_FEATURES if k in batch}
            outputs = model(batch[F.ENCODER_INPUT_TOKENS], batch[F.DECODER_INPUT_TOKENS],
                            **packing, probes=dict(probes))
        else:
            extra = {F.TOKEN_TYPE_IDS: batch[F.TOKEN_TYPE_IDS]} if F.TOKEN_TYPE_IDS in batch else {}
            outputs = model(batch[F.INPUT_IDS], batch[F.ATTENTION_MASK], batch[F.TASK_ID],
                            **extra, probes=dict(probes))
        value, _ = self.objective.finalize(self.objective.terms_from(outputs, batch))
        return value


def objective_loss(objective: Any) -> ObjectiveLoss:
    """The task loss of ``objective`` as a ``LossFn`` (see ``ObjectiveLoss``)."""
    return ObjectiveLoss(objective)


def parameter_paths(model: nnx.Module, pattern: str | None) -> list[str]:
    """Paths (``encoder/layers/0/attention/query/kernel``) of the parameters ``pattern`` selects
    (``re.search``); None selects none."""
    if pattern is None:
        return []
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"parameter pattern {pattern!r} is not a regular expression: {e}") from None
    _, params, _ = split_model(model)
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [p for p in paths if regex.search(p)]


def fisher_embedding(
    model: nnx.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    param_pattern: str | None = DEFAULT_PARAMS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """TaskEmb: the reference's diagonal empirical Fisher of every probe point of the model
    (named as in ``probe_shapes``, flattened to ``[width]``) and of the parameters
    ``param_pattern`` selects (``param/<path>``, in the parameter's shape)."""
    graphdef, params, rest = split_model(model)
    selected = tuple(parameter_paths(model, param_pattern))
    totals: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        batch = _numeric(batch)
        n = _examples(np.asarray(token_mask(batch)))
        if n == 0:
            continue
        for name, value in _fisher_step(graphdef, loss_fn, selected, params, rest, batch).items():
            value = np.asarray(value, np.float64)
            totals[name] = value if name not in totals else totals[name] + value
        count += n
        if progress is not None:
            progress(n)
    if count == 0:
        raise ValueError("TaskEmb: the task gave no example (empty split?)")
    return {k: (v / count).astype(np.float32) for k, v in totals.items()}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _fisher_step(graphdef: Any, loss_fn: LossFn, selected: tuple[str, ...], params: Any, rest: Any,
                 batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One batch's Fisher terms (see the module docstring); compiled once per architecture,
    loss and parameter selection."""
    b, length = batch[F.ENCODER_INPUT_TOKENS if _is_encdec(batch) else F.INPUT_IDS].shape
    shapes = merge_model(graphdef, params, rest).probe_shapes(b, length)
    probes = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}

    def loss(params: Any, probes: Any) -> jax.Array:
        return loss_fn(merge_model(graphdef, params, rest), batch, probes)

    grad_params, grad_probes = jax.grad(loss, argnums=(0, 1))(params, probes)
    mask = token_mask(batch)
    tokens = jnp.maximum(mask.sum(), 1.0)
    out: dict[str, jax.Array] = {}
    for name, g in grad_probes.items():
        g = g.astype(jnp.float32)
        if g.ndim == 2:  # one state per example (the first token)
            summed = g.sum(axis=0)
        else:
            summed = jnp.einsum("blh,bl->h", g.reshape(b, length, -1), mask)
        out[name] = jnp.square(summed) / tokens
    for path, g in jax.tree_util.tree_flatten_with_path(grad_params)[0]:
        name = path_str(path)
        if name in selected:
            out[PARAM_PREFIX + name] = jnp.square(g.astype(jnp.float32))
    return out

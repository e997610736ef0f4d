"""Per-task sentence heads over a shared encoder, selected per example inside one compiled step.

Every task has RoBERTa's classification head (dropout, dense, tanh, dropout, out projection on the
first token); a task with one label is a regression head (HF's ``num_labels == 1`` convention).
The T heads are stored stacked (``[tasks, ...]``) and padded to the largest label count, so a batch
that mixes tasks runs one fixed computation: no recompilation and no Python branching per task.

The dense layer of every head is computed for every example and the example's row selected:
gathering per-example ``[hidden, hidden]`` weights instead would copy ``batch * hidden**2`` floats
(128 MB at batch 32 for XLM-R large), while one batched einsum over the stacked weights costs
``2 * batch * T * hidden**2`` FLOPs, about ``T / (12 * length * layers)`` of the encoder (far
under 1%). The out projection is only ``[hidden, max_labels]`` per task, so it is gathered per
example. Selection is ``take_along_axis``/``take``: only the example's own head gets gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_jax.models.layers import dropout, param
from mtl_jax.models.losses import classification_cross_entropy, masked_logits, squared_error


class SpectralVector(nnx.Variable):
    """Power-iteration state of a spectrally normalised layer: not trained, checkpointed."""


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TaskHeads(nnx.Module):
    """T RoBERTa heads, computed in float32 (they are tiny, and the logits feed the loss).

    ``spectral_norm`` (R4F, Aghajanyan et al. 2020): each head's out projection is used divided by
    its largest singular value, estimated by one power iteration from the stored vector ``sn_u``
    (``[tasks, max_labels]``). The forward pass never writes ``sn_u``; ``update_spectral`` moves it
    one iteration on, after each optimizer update. Training and evaluation at the same state
    therefore use exactly the same normalised weights, and the state is checkpointed with the
    model."""

    def __init__(
        self,
        hidden_size: int,
        task_num_labels: Sequence[int],
        *,
        dropout_rate: float,
        initializer_range: float,
        rngs: nnx.Rngs,
        spectral_norm: bool = False,
    ):
        task_num_labels = tuple(int(n) for n in task_num_labels)
        if not task_num_labels or min(task_num_labels) < 1:
            raise ValueError(f"task_num_labels={task_num_labels}: need >= 1 task, each with >= 1 label")
        t, h, c = len(task_num_labels), hidden_size, max(task_num_labels)
        labels = jnp.asarray(task_num_labels)

        def normal(key, shape, dtype=jnp.float32):
            return initializer_range * jax.random.normal(key, shape, dtype)

        def padded_normal(key, shape, dtype=jnp.float32):
            # Columns past a task's label count stay zero, so export/import round trips are exact.
            return normal(key, shape, dtype) * (jnp.arange(c)[None, None, :] < labels[:, None, None])

        zeros = nnx.initializers.zeros_init()
        self.dense_kernel = param(rngs, normal, (t, h, h), ("tasks", "embed", "mlp"))
        self.dense_bias = param(rngs, zeros, (t, h), ("tasks", "mlp"))
        self.out_kernel = param(rngs, padded_normal, (t, h, c), ("tasks", "mlp", "classes"))
        self.out_bias = param(rngs, zeros, (t, c), ("tasks", "classes"))
        self.task_num_labels = task_num_labels
        self.dropout_rate = dropout_rate
        self.spectral_norm = spectral_norm
        if spectral_norm:
            # A fixed start (normalised, label columns only): no RNG draw, so enabling R4F leaves
            # every other parameter's initialisation unchanged.
            start = (jnp.arange(c)[None, :] < labels[:, None]).astype(jnp.float32)
            self.sn_u = SpectralVector(_normalize(start))

    @property
    def max_labels(self) -> int:
        return max(self.task_num_labels)

    def _power_step(self, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One power iteration from ``sn_u``: ``(v [T, hidden], u [T, labels])``, no gradient."""
        u = jax.lax.stop_gradient(self.sn_u[...])
        w = jax.lax.stop_gradient(kernel)
        v = _normalize(jnp.einsum("thc,tc->th", w, u))
        return v, _normalize(jnp.einsum("thc,th->tc", w, v))

    def out_projection(self) -> jax.Array:
        """The out-projection kernels the forward pass uses ``[T, hidden, labels]``."""
        kernel = self.out_kernel[...]
        if not self.spectral_norm:
            return kernel
        v, u = self._power_step(kernel)
        sigma = jnp.einsum("th,thc,tc->t", v, kernel, u)  # gradient flows through the kernel
        return kernel / sigma[:, None, None]

    def update_spectral(self) -> None:
        """Move the power iteration one step on with the current kernels (after an update)."""
        if self.spectral_norm:
            self.sn_u[...] = self._power_step(self.out_kernel[...])[1]

    def __call__(
        self,
        first_token: jax.Array,
        task_id: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Outputs of each example's own head from its first-token state ``[batch, hidden]``."""
        task_id = jnp.asarray(task_id, jnp.int32)
        x = dropout(first_token.astype(jnp.float32), self.dropout_rate, deterministic=deterministic, rngs=rngs)
        dense = jnp.einsum("bh,thk->btk", x, self.dense_kernel[...]) + self.dense_bias[...][None]
        h = jnp.take_along_axis(jnp.tanh(dense), task_id[:, None, None], axis=1)[:, 0]
        h = dropout(h, self.dropout_rate, deterministic=deterministic, rngs=rngs)
        kernel = jnp.take(self.out_projection(), task_id, axis=0)  # [batch, hidden, max_labels]
        raw = jnp.einsum("bh,bhc->bc", h, kernel) + jnp.take(self.out_bias[...], task_id, axis=0)
        num_labels = jnp.take(jnp.asarray(self.task_num_labels, jnp.int32), task_id)
        return {
            "logits": masked_logits(raw, num_labels),
            "regression": raw[:, 0],
            "is_regression": num_labels == 1,
            "num_labels": num_labels,
        }


SIAMESE_SCALE = 5.0  # the top of the similarity scale (STS: 0-5)


def siamese_score(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """A siamese head's prediction from the two texts' pooled vectors ``[batch, hidden]``:
    ``2.5 * (cos(a, b) + 1)``, so cosine -1, 0, 1 map to 0, 2.5, 5 (float32, ``[batch]``).

    Linear in the cosine (Pearson and Spearman are those of the cosine itself) and never
    clipped, so the squared error against a 0-5 label has a gradient at every cosine (a clip at 0,
    ``5 * max(cos, 0)``, would leave examples with a negative cosine without one).
    """
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    cos = jnp.sum(a * b, axis=-1) / jnp.maximum(norms, eps)
    return SIAMESE_SCALE / 2 * (cos + 1.0)


def per_example_loss(
    outputs: dict[str, jax.Array],
    labels: jax.Array,
    regression_targets: jax.Array | None = None,
) -> jax.Array:
    """Each example's loss under its own task: cross entropy, or squared error for 1-label tasks.

    Means over a task's examples equal HF's ``CrossEntropyLoss`` / ``MSELoss`` for that task.
    ``regression_targets`` (float) may be None when no task in the run is a regression task.
    """
    is_reg = outputs["is_regression"]
    safe_labels = jnp.where(is_reg, 0, labels.astype(jnp.int32))
    ce = classification_cross_entropy(outputs["logits"], safe_labels)
    if regression_targets is None:
        return jnp.where(is_reg, jnp.nan, ce)
    se = squared_error(outputs["regression"], regression_targets)
    return jnp.where(is_reg, se, ce)

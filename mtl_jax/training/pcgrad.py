"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") as the train step's
gradient combiner.

For every task i present in the effective batch, its gradient g_i is projected, in a fresh random
order of the other tasks j, onto the normal plane of g_j whenever they conflict:

    if g_i' . g_j < 0:  g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j      (g_j: the ORIGINAL gradient)

and the projected gradients are summed. Every g_i' stays a linear combination of the original
gradients, so the whole surgery runs on the ``[T, T]`` Gram matrix of the tasks' gradients
(coefficients ``c_i`` with ``g_i' = sum_k c_ik g_k``); the parameters are touched once, for the
Gram matrix and for the final weighted sum. Dot products are over the shared parameters only;
task-specific parameters (XLM-R's per-task head rows, paths under ``heads``) receive the plain
sum, which for them is their own task's gradient untouched (other tasks' gradients are zero
there).

Cost: the step keeps one gradient per task (``T`` x the trainable parameters in float32) and runs
one backward pass per task present in each micro-batch (one forward pass, its residuals reused).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def task_orders(key: jax.Array, num_tasks: int) -> jax.Array:
    """``[T, T]``: row i is the random order in which task i meets the other tasks."""
    return jnp.stack([jax.random.permutation(jax.random.fold_in(key, i), num_tasks)
                      for i in range(num_tasks)])


def pcgrad_coefficients(gram: jax.Array, present: jax.Array, orders: jax.Array) -> jax.Array:
    """``C [T, T]``: task i's projected gradient is ``sum_k C[i, k] g_k`` (rows of absent tasks
    are zero)."""
    t = gram.shape[0]
    eye = jnp.eye(t, dtype=gram.dtype)
    rows = []
    for i in range(t):
        c = eye[i]
        for k in range(t):
            j = orders[i, k]
            dot = c @ gram[:, j]
            norm = gram[j, j]
            conflict = present[i] & present[j] & (j != i) & (dot < 0) & (norm > 0)
            c = jnp.where(conflict, c - dot / jnp.where(norm > 0, norm, 1.0) * eye[j], c)
        rows.append(jnp.where(present[i], c, 0.0))
    return jnp.stack(rows)


def pcgrad_weights(gram: jax.Array, present: jax.Array, orders: jax.Array) -> jax.Array:
    """``w [T]`` such that the PCGrad sum is ``sum_k w_k g_k`` (see the module docstring)."""
    return pcgrad_coefficients(gram, present, orders).sum(0)


@dataclasses.dataclass(frozen=True)
class PCGrad:
    """The combiner: per-task gradients ``[T, ...]`` per leaf in, one gradient per leaf out."""

    def combine(
        self, task_grads: list[jax.Array], present: jax.Array, key: jax.Array, shared: list[bool]
    ) -> list[jax.Array]:
        num_tasks = task_grads[0].shape[0] if task_grads else 0
        shared_grads = [g.reshape(num_tasks, -1) for g, s in zip(task_grads, shared, strict=True)
                        if s]
        if not shared_grads:
            return [g.sum(0) for g in task_grads]
        gram = sum(g @ g.T for g in shared_grads)
        weights = pcgrad_weights(gram, present, task_orders(key, num_tasks))
        return [jnp.tensordot(weights, g, axes=1) if s else g.sum(0)
                for g, s in zip(task_grads, shared, strict=True)]


def is_task_specific(path: str) -> bool:
    """Parameters that belong to one task (XLM-R's stacked per-task heads)."""
    return "'heads'" in path or ".heads" in path

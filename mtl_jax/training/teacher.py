"""The momentum teacher of SMART's Bregman proximal point step: an exponential moving average of
the parameters, ``teacher <- beta * teacher + (1 - beta) * params_after_update``.

It lives in the optimizer state, as the last transformation of the trainable chain, because
there it is everything it must be without new machinery: checkpointed and restored with the
run (exact resume), sharded like the parameter it follows (``partitioning.opt_state_shardings``
matches state leaves to parameters by path), left unchanged when a step is skipped for a
non-finite update (the train step keeps the old optimizer state), absent from runs that do not
ask for it, and held only for trainable parameters (inside the partition a frozen parameter is
an ``optax.MaskedNode``: a frozen base costs no copy; ``teacher_params`` reads the parameter
itself there, which is what the teacher of a never-updated parameter equals).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Momentum = Callable[[jax.Array], jax.Array]


class TeacherState(NamedTuple):
    count: jax.Array  # int32: updates folded into the average (skipped steps excluded)
    teacher: Any  # float32 copy of the parameters it follows (MaskedNode where frozen)


def momentum_schedule(beta: float, beta_late: float, switch_fraction: float,
                      total_steps: int | None) -> Momentum:
    """SMART's ``beta``: ``beta`` for the first ``switch_fraction`` of ``total_steps`` updates,
    ``beta_late`` after (the paper: 0.99 for the first 10 %, 0.999 for the rest); ``beta``
    throughout when the run has no known length."""
    if not (0.0 <= beta < 1.0 and 0.0 <= beta_late < 1.0):
        raise ValueError(f"teacher momentum must be in [0, 1), got beta={beta}, "
                         f"beta_late={beta_late}")
    if not 0.0 <= switch_fraction <= 1.0:
        raise ValueError(f"beta_switch must be a fraction of the run in [0, 1], got "
                         f"{switch_fraction}")
    if total_steps is None:
        return lambda count: jnp.float32(beta)
    switch = int(round(switch_fraction * total_steps))
    return lambda count: jnp.where(count < switch, jnp.float32(beta), jnp.float32(beta_late))


def momentum_teacher(momentum: Momentum) -> optax.GradientTransformation:
    """Leaves the updates unchanged and folds ``params + updates`` (the parameters this update
    produces, in their own dtype, as ``optax.apply_updates`` writes them) into the average. Must
    be the chain's last transformation, so ``updates`` are the final ones."""

    def init(params: Any) -> TeacherState:
        return TeacherState(jnp.zeros((), jnp.int32),
                            jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))

    def update(updates: Any, state: TeacherState, params: Any = None) -> tuple[Any, TeacherState]:
        if params is None:
            raise ValueError("momentum_teacher needs the parameters (optimizer.update(g, s, params))")
        beta = momentum(state.count)

        def fold(t: jax.Array, p: jax.Array, u: jax.Array) -> jax.Array:
            new = jnp.asarray(p + u).astype(p.dtype).astype(jnp.float32)
            return beta * t + (1.0 - beta) * new

        teacher = jax.tree.map(fold, state.teacher, params, updates)
        return updates, TeacherState(state.count + 1, teacher)

    return optax.GradientTransformation(init, update)


def _is_teacher(x: Any) -> bool:
    return isinstance(x, TeacherState)


def find_teacher(opt_state: Any) -> TeacherState | None:
    """The one ``TeacherState`` inside an optimizer state, or None."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_teacher) if _is_teacher(x)]
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} momentum teachers, expected 1")
    return found[0] if found else None


def teacher_params(opt_state: Any, params: Any) -> Any | None:
    """The teacher as a full parameter tree in the parameters' dtypes (frozen parameters taken
    from ``params``), or None when the optimizer keeps no teacher."""
    found = find_teacher(opt_state)
    if found is None:
        return None
    leaves, treedef = jax.tree.flatten(params)
    averaged = jax.tree.leaves(found.teacher, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    if len(averaged) != len(leaves):
        raise ValueError(f"the momentum teacher has {len(averaged)} leaves, the parameters "
                         f"{len(leaves)}")
    full = [p if isinstance(t, optax.MaskedNode) else t.astype(p.dtype)
            for t, p in zip(averaged, leaves, strict=True)]
    return jax.tree.unflatten(treedef, full)

"""The train state: everything a step reads and writes, as a pytree of arrays.

The model's structure (NNX ``GraphDef``) is static and kept outside; parameters and the other
(non-trainable) NNX variables are plain nested dicts (``nnx.to_pure_dict`` layout), which is what
optax, orbax and the parameter paths of the partition hook all see. ``rng`` is the base dropout
key; a step's key is ``fold_in(rng, step)``, so a resumed run draws exactly the same dropout masks.

``create_train_state`` initialises directly into the target shardings inside one ``jax.jit``:
no device ever holds a full unsharded copy of a large model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from mtl_jax.training import partitioning as part
from mtl_jax.training.optimizers import Optimizer


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # pure dict of nnx.Param values
    opt_state: Any  # optax state over ``params``
    rest: Any  # pure dict of the model's other (non-trainable) variables
    rng: jax.Array  # raw PRNG key data (uint32); dropout key of a step = fold_in(rng, step)


def no_eager_sharding() -> contextlib.AbstractContextManager:
    """Flax >= 0.12 shards annotated variables at creation, which needs a mesh context and
    divisible dimensions; the shardings here come from ``partitioning`` instead."""
    use = getattr(nnx, "use_eager_sharding", None)
    return use(False) if use is not None else contextlib.nullcontext()


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, params, rest)`` with params/rest as pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_model(graphdef: nnx.GraphDef, params: Any, rest: Any) -> nnx.Module:
    return nnx.merge(graphdef, params, rest)


def abstract_model(model_fn: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, params_state, rest_state)`` of ``model_fn()`` without allocating: the two
    states are abstract ``nnx.State`` trees that still carry the logical-axis metadata."""
    with no_eager_sharding():
        model = nnx.eval_shape(model_fn)
    return nnx.split(model, nnx.Param, ...)


def train_state_shardings(
    model_fn: Callable[[], nnx.Module],
    optimizer: Optimizer,
    mesh: Mesh,
    rules: part.Rules,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """``(graphdef, abstract_state, shardings)``: the state's ShapeDtypeStructs (carrying the
    shardings, a restore target for orbax) and its NamedShardings, both ``TrainState`` trees."""
    graphdef, p_state, r_state = abstract_model(model_fn)
    params = nnx.to_pure_dict(p_state)
    rest = nnx.to_pure_dict(r_state)
    p_sh = part.state_shardings(p_state, mesh, rules)
    r_sh = part.state_shardings(r_state, mesh, rules)
    opt_abs = jax.eval_shape(optimizer.tx.init, params)
    o_sh = part.opt_state_shardings(opt_abs, params, p_sh, mesh)
    repl = part.replicated(mesh)
    shardings = TrainState(step=repl, params=p_sh, opt_state=o_sh, rest=r_sh, rng=repl)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=opt_abs,
        rest=rest,
        rng=jax.eval_shape(seed_key, 0),
    )
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    return graphdef, abstract, shardings


def create_train_state(
    model_fn: Callable[[], nnx.Module],
    optimizer: Optimizer,
    mesh: Mesh,
    rules: part.Rules,
    seed: int = 0,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Initialise ``(graphdef, state, shardings)`` with every array born in its sharding.

    ``model_fn`` builds the model with its own ``nnx.Rngs`` (e.g.
    ``lambda: T5Model(cfg, rngs=nnx.Rngs(seed))``); ``seed`` seeds dropout.
    """
    graphdef, _, shardings = train_state_shardings(model_fn, optimizer, mesh, rules)

    def init() -> TrainState:
        _, params, rest = split_model(model_fn())
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.tx.init(params),
            rest=rest,
            rng=seed_key(seed),
        )

    with no_eager_sharding(), nnx.logical_axis_rules(rules):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state, shardings


def state_from_params(
    graphdef: nnx.GraphDef,
    params: Any,
    rest: Any,
    optimizer: Optimizer,
    shardings: TrainState,
    seed: int = 0,
) -> TrainState:
    """A fresh train state around given parameters (e.g. converted pretrained weights, already
    placed with ``partitioning.host_to_global``), optimizer state initialised in place.
    ``graphdef`` is not needed (the structure is in ``params``); it is accepted for callers."""
    del graphdef

    def init(params: Any, rest: Any) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.tx.init(params),
            rest=rest,
            rng=seed_key(seed),
        )

    return jax.jit(
        init,
        in_shardings=(shardings.params, shardings.rest),
        out_shardings=shardings,
    )(params, rest)


def param_count(state: TrainState) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state.params))


def seed_key(seed: int) -> jax.Array:
    """The raw (checkpointable) base key stored in ``TrainState.rng``."""
    return jax.random.key_data(jax.random.key(seed))


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The dropout key of ``step``: a pure function of (seed, step), hence exact on resume."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng), step)

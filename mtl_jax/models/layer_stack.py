"""Running a stack of identical layers: a Python loop, or one ``jax.lax.scan``, each optionally
rematerialised (``scan_layers`` and ``remat`` of ``T5Config``/``XLMRConfig``).

Parameters keep their per-layer layout (``layers/{i}/...``) and are stacked to ``[layers, ...]``
inside the step, only when scanning. Why not store the stacked layout (and convert at HF
import/export and checkpoint restore)? Keeping the per-layer layout means checkpoints, HF
conversion, LoRA's path regexes, task-embedding probes and cached decoding are the same with the
switch on or off: a checkpoint written either way restores the other way as it is. Its costs, from
the AOT measurements in docs/scaling.md: one stacked (sharded) copy of the layer weights and of
their gradients per step (within the +5-7 % temporary memory of scan without remat, far below what
remat then saves); and the optimizer update stays one block of HLO per layer parameter, so the
lowered step barely shrinks with scan (-1.5 % at 4 + 4 layers) and compile time still grows with
depth, less steeply than unscanned. A stored stacked layout would remove both; it was not built
(every consumer above would need converting).

Dropout keys are those of the Python loop: layer ``i`` draws from each stream at the counter the
loop would have reached (``start + i * draws_per_layer``), so scan/remat on or off give the same
outputs and gradients in training mode too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import spmd as nnx_spmd

REMAT_POLICIES: tuple[str, ...] = ("none", "full", "save_dots")


def check_stack_options(scan_layers: bool, remat: str, where: str) -> None:
    """Validate the two switches; errors name the config class's field."""
    if not isinstance(scan_layers, bool):
        raise ValueError(f"{where}.scan_layers must be True or False, got {scan_layers!r}")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"{where}.remat must be one of {REMAT_POLICIES}, got {remat!r}")


def _policy(remat: str) -> Any:
    """``full`` saves only the layer's inputs; ``save_dots`` also keeps the outputs of the
    matmuls without batch dimensions (the dense projections), recomputing attention and the
    element-wise ops (T5X's and MaxText's common choice)."""
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "save_dots" else None


class _LayerRngs:
    """Stands in for ``nnx.Rngs`` inside one layer: stream ``name``'s j-th draw is
    ``fold_in(key, start + j)``, exactly what ``nnx.Rngs`` would give at counter ``start + j``,
    but as a pure function of arrays passed in (no state to mutate inside scan/checkpoint)."""

    def __init__(self, keys: Mapping[str, jax.Array], starts: Mapping[str, jax.Array]) -> None:
        self.keys = keys
        self.starts = starts
        self.draws = dict.fromkeys(keys, 0)

    def _name(self, name: str) -> str:
        if name in self.keys:
            return name
        if "default" in self.keys:  # nnx.Rngs falls back to its default stream
            return "default"
        raise KeyError(f"No RngStream named {name!r} found in Rngs.")

    def __getitem__(self, name: str) -> Any:
        name = self._name(name)

        def draw() -> jax.Array:
            j = self.draws[name]
            self.draws[name] = j + 1
            start = self.starts[name]
            return jax.random.fold_in(self.keys[name], start + jnp.asarray(j, start.dtype))

        return draw


def _streams(rngs: nnx.Rngs) -> dict[str, Any]:
    return {name: rngs[name] for name in rngs}


def _draws_per_layer(apply: Any, state: Any, x: jax.Array, extra: Any, keys: dict, starts: dict) -> dict[str, int]:
    """How many keys one layer draws from each stream (found by tracing it once, abstractly)."""
    counter: dict[str, dict[str, int]] = {}

    def trace(state: Any, x: jax.Array, extra: Any) -> jax.Array:
        proxy = _LayerRngs(keys, starts)
        out = apply(state, x, extra, proxy)
        counter["draws"] = proxy.draws
        return out

    jax.eval_shape(trace, state, x, extra)
    return counter["draws"]


def run_layers(
    layers: Sequence[nnx.Module],
    x: jax.Array,
    *args: Any,
    scan: bool,
    remat: str,
    deterministic: bool,
    rngs: nnx.Rngs | None,
    probes: Sequence[Mapping[str, jax.Array]] | None = None,
    where: str = "model config",
    **kwargs: Any,
) -> jax.Array:
    """``x = layer(x, *args, **kwargs, probes=probes[i], deterministic=..., rngs=...)`` for each
    layer in order (``probes=`` only when layer i has some). ``probes[i]`` maps layer i's probe
    points to arrays; ``args`` and ``kwargs`` are shared (masks, the relative position bias
    computed once by the caller, the encoder output). ``where`` names the config class in errors.
    """
    n = len(layers)
    per_layer = [{"probes": dict(p)} if p else {} for p in (probes or [{}] * n)]
    if len(per_layer) != n:
        raise ValueError(f"{n} layers but probes for {len(per_layer)}")
    if not scan and remat == "none":
        for layer, extra in zip(layers, per_layer, strict=True):
            x = layer(x, *args, **kwargs, **extra, deterministic=deterministic, rngs=rngs)
        return x

    split = [nnx.split(layer) for layer in layers]
    graphdefs = [g for g, _ in split]
    states = [s for _, s in split]
    active = not deterministic and rngs is not None
    keys = {k: s.key[...] for k, s in _streams(rngs).items()} if active else {}
    counts = {k: s.count[...] for k, s in _streams(rngs).items()} if active else {}

    def make_apply(graphdef: Any) -> Any:
        def apply(state: Any, x: jax.Array, extra: Any, proxy: _LayerRngs | None) -> jax.Array:
            layer = nnx.merge(graphdef, state)
            return layer(x, *args, **kwargs, **extra, deterministic=deterministic, rngs=proxy)

        return apply

    draws: dict[str, int] = {}
    if active:
        draws = _draws_per_layer(make_apply(graphdefs[0]), states[0], x, per_layer[0], keys, counts)

    def starts_of(i: jax.Array | int) -> dict[str, jax.Array]:
        return {k: c + jnp.asarray(i, c.dtype) * jnp.asarray(draws[k], c.dtype) for k, c in counts.items()}

    policy = _policy(remat)
    if not scan:
        for i in range(n):
            apply = make_apply(graphdefs[i])

            def body(state: Any, x: jax.Array, extra: Any, starts: Any, apply: Any = apply) -> jax.Array:
                return apply(state, x, extra, _LayerRngs(keys, starts) if active else None)

            if remat != "none":
                body = jax.checkpoint(body, policy=policy)
            x = body(states[i], x, per_layer[i], starts_of(i) if active else {})
    else:
        if any(g != graphdefs[0] for g in graphdefs[1:]):
            raise ValueError(
                f"{where}.scan_layers=True needs every layer to have the same structure, but they "
                "differ (e.g. LoRA targets that select only some layers); use scan_layers=False"
            )
        apply = make_apply(graphdefs[0])
        stacked = _stack_states(states)
        extras = _stack_probes([p.get("probes", {}) for p in per_layer])

        def step(x: jax.Array, xs: tuple[Any, Any, Any]) -> tuple[jax.Array, None]:
            state, extra, starts = xs
            return apply(state, x, extra, _LayerRngs(keys, starts) if active else None), None

        if remat != "none":
            step = jax.checkpoint(step, policy=policy, prevent_cse=False)
        starts = starts_of(jnp.arange(n)) if active else {}
        x, _ = jax.lax.scan(step, x, (stacked, extras, starts))
    if active:  # leave the streams where the Python loop would have left them
        for k, stream in _streams(rngs).items():
            stream.count[...] = counts[k] + jnp.asarray(n * draws[k], counts[k].dtype)
    return x


def _stack_states(states: Sequence[Any]) -> Any:
    """The layers' variables stacked to ``[layers, ...]``, each pinned to the sharding of its
    per-layer parameters (the layer axis unsharded, as the rules' ``layers -> None``), so the
    stacked copy is split over the mesh like the weights it copies."""
    def stack(*variables: Any) -> Any:
        first = variables[0]
        if not isinstance(first, nnx.Variable):
            return jnp.stack(variables)
        return first.replace(_constrain(first, jnp.stack([v.get_value() for v in variables]), 1))

    return jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _constrain(var: nnx.Variable, value: jax.Array, leading: int) -> jax.Array:
    """``value`` constrained to ``var``'s logical sharding after ``leading`` unsharded axes."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = None if mesh.empty else nnx_spmd.get_var_pspec(var)
    if spec is None:
        return value
    dims = value.shape[leading:]
    axes = [a if _divides(mesh, a, n) else None for a, n in zip(spec, dims, strict=False)]
    axes += [None] * (len(dims) - len(axes))
    return jax.lax.with_sharding_constraint(
        value, jax.sharding.PartitionSpec(*([None] * leading), *axes))


def _divides(mesh: Any, axes: Any, size: int) -> bool:
    if axes is None:
        return True
    names = axes if isinstance(axes, tuple) else (axes,)
    total = 1
    for name in names:
        total *= mesh.shape[name]
    return size % total == 0


def _stack_probes(probes: Sequence[Mapping[str, jax.Array]]) -> dict[str, Any]:
    """Per-layer probes stacked on a leading layer axis, as the layer's keyword inputs; a layer
    without some probe point gets zeros there (probes are added, so zeros change nothing)."""
    names = sorted({k for p in probes for k in p})
    if not names:
        return {}
    out: dict[str, jax.Array] = {}
    for name in names:
        like = next(p[name] for p in probes if name in p)
        out[name] = jnp.stack([p.get(name, jnp.zeros_like(like)) for p in probes])
    return {"probes": out}

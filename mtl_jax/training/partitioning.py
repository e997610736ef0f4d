"""Device mesh, logical-axis rules and the NamedShardings of parameters, optimizer state and batches.

Models name every parameter dimension with a *logical* axis (``embed``, ``vocab``, ``mlp``, ...).
A rules table maps logical axes to the *mesh* axes ``data``, ``fsdp`` and ``tensor``, so changing
the parallelism is a change of mesh sizes or rules name, never of model code. Resolution is done
here (not by Flax's eager sharding) because it must also handle what eager sharding cannot:
dimensions that a mesh axis does not divide (e.g. 6 heads over 4 devices, or an unpadded vocabulary)
fall back to replication instead of failing, and optimizer statistics whose shape differs from the
parameter (Adafactor's factored rows/columns) get the parameter's spec minus the reduced dimension.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical axes that are always replicated (positions, relative-position buckets, layer stacks...).
_REPLICATED = (
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
    ("type_vocab", None),
    ("token_types", None),
    ("position_embeddings", None),
    ("tasks", None),
    ("labels", None),
    ("classes", None),
    ("lora_rank", None),
    ("norm", None),
    ("conditioning", None),  # CA-MTL's task-embedding width, attention blocks, bottleneck
)

# T5X's standard rules (1-D parameter and activation partitioning) with ``model`` named ``tensor``:
# data parallelism over ``data``, Megatron-style tensor parallelism over ``tensor``.
T5X_RULES: Rules = (
    ("batch", "data"),
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("joined_kv", "tensor"),
    *_REPLICATED,
)

# ZeRO-3 / FSDP: the batch is split over ``data`` x ``fsdp`` and every parameter's ``embed``
# dimension over ``fsdp`` (gathered per layer by XLA), tensor parallelism as above.
FSDP_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("joined_kv", "tensor"),
    *_REPLICATED,
)

_RULES_BY_NAME: dict[str, Rules] = {"t5x": T5X_RULES, "fsdp": FSDP_RULES}


def rules_by_name(name: str) -> Rules:
    """The rules table called ``name`` (``"t5x"``, the default, or ``"fsdp"``)."""
    try:
        return _RULES_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown partitioning rules {name!r}; choose one of {sorted(_RULES_BY_NAME)}"
        ) from None


# ------------------------------------------------------------------------------------------------
# Mesh
# ------------------------------------------------------------------------------------------------


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (``data``, ``fsdp``, ``tensor``) mesh over ``devices`` (default: all devices of all
    processes). One size may be -1, meaning "all remaining devices"."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
    if bad or len(free) > 1:
        raise ValueError(
            f"mesh sizes must be positive with at most one -1, got data={data} fsdp={fsdp} "
            f"tensor={tensor}"
        )
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n % fixed:
            raise ValueError(
                f"mesh sizes data={data} fsdp={fsdp} tensor={tensor}: the fixed sizes multiply to "
                f"{fixed}, which does not divide the {n} available devices"
            )
        sizes[free[0]] = n // fixed
    elif fixed != n:
        raise ValueError(
            f"mesh sizes data={data} fsdp={fsdp} tensor={tensor} multiply to {fixed}, but there "
            f"are {n} devices; use -1 for one axis to take the rest"
        )
    shape = tuple(sizes[a] for a in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)


# ------------------------------------------------------------------------------------------------
# Logical axes -> PartitionSpec
# ------------------------------------------------------------------------------------------------


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


_WARNED: set[tuple[Any, ...]] = set()


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
    name: str = "<array>",
) -> PartitionSpec:
    """Resolve one array's logical axes to a PartitionSpec on ``mesh``.

    A mesh axis is used at most once per array (the first dimension asking for it wins), and a
    dimension that the mesh axes' total size does not divide is replicated instead (logged).
    Unknown logical names are an error: silently replicating them would hide a sharding bug.
    """
    if not logical_axes:
        return PartitionSpec()
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"{name}: {len(logical_axes)} logical axes {tuple(logical_axes)} for an array of "
            f"shape {tuple(shape)}"
        )
    table = dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, logical in zip(shape, logical_axes, strict=True):
        if logical is None:
            spec.append(None)
            continue
        if logical not in table:
            raise ValueError(
                f"{name}: logical axis {logical!r} has no partitioning rule; known axes: "
                f"{sorted(table)}"
            )
        axes = tuple(a for a in _as_tuple(table[logical]) if a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            key = (name, logical, dim, axes, size)
            if key not in _WARNED:
                _WARNED.add(key)
                log.warning(
                    "%s: dimension %s (%d) is not divisible by mesh axes %s (size %d); "
                    "replicating it", name, logical, dim, axes, size,
                )
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _var_logical_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
    meta = var.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        axes = meta.get(key)
        if axes:
            return tuple(axes)
    return None


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def path_str(path: tuple[Any, ...]) -> str:
    """``encoder/layers/0/mlp/wi/kernel`` for a JAX key path (the name partition hooks see)."""
    return _path_str(path)


def logical_axes(state: Any) -> Any:
    """The logical axes of every variable of an NNX state/module, as a pure-dict tree (the layout
    of ``nnx.to_pure_dict``); ``None`` where a variable carries no annotation."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    boxed = nnx.to_pure_dict(
        state, lambda v: _Leaf(_var_logical_axes(v) if isinstance(v, nnx.Variable) else None)
    )
    return jax.tree.map(lambda leaf: leaf.value, boxed, is_leaf=_is_leaf_box)


class _Leaf:
    """Opaque box so a tuple of axis names survives ``to_pure_dict`` as a single leaf."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _is_leaf_box(x: Any) -> bool:
    return isinstance(x, _Leaf)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def tree_specs(tree: Any, axes: Any, mesh: Mesh, rules: Rules) -> Any:
    """PartitionSpecs for a pure-dict tree of arrays given its matching tree of logical axes."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat_axes = treedef.flatten_up_to(axes)
    specs = [
        logical_to_spec(ax, _shape(x), mesh, rules, name=_path_str(p))
        for (p, x), ax in zip(flat, flat_axes, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, specs)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings (pure-dict tree) for an NNX state or module, from its logical annotations.

    ``state`` may be abstract (``nnx.eval_shape``); only shapes and metadata are read.
    """
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    axes = logical_axes(state)
    specs = tree_specs(nnx.to_pure_dict(state), axes, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def batch_axes(mesh: Mesh, rules: Rules) -> MeshAxes:
    """The mesh axes the batch dimension is split over (the ``batch`` rule)."""
    axes = tuple(a for a in _as_tuple(dict(rules).get("batch", "data")) if a in mesh.shape)
    return None if not axes else axes[0] if len(axes) == 1 else axes


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    return math.prod(mesh.shape[a] for a in _as_tuple(batch_axes(mesh, rules)))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """One sharding for every batch array: dimension 0 over the data-parallel axes, the rest
    replicated (a PartitionSpec prefix, valid for any rank >= 1)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh, rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical axes (e.g. ``("batch", "length", "embed")``).

    For model code: resolved with the rules of ``nnx.logical_axis_rules`` and the mesh of
    ``jax.set_mesh`` that the compiled steps enter; a no-op outside them (one device, tests).
    Under FSDP it keeps activations split by batch where XLA would otherwise follow a gathered
    parameter's layout (e.g. an embedding lookup) and re-materialise the whole activation.
    """
    from flax.core.spmd import get_logical_axis_rules

    mesh = jax.sharding.get_abstract_mesh()
    rules = get_logical_axis_rules()
    if mesh.empty or not rules:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, tuple(rules), name="activation")
    return jax.lax.with_sharding_constraint(x, spec)


# ------------------------------------------------------------------------------------------------
# Optimizer state
# ------------------------------------------------------------------------------------------------


def opt_state_shardings(
    opt_state: Any, params: Any, param_shardings: Any, mesh: Mesh
) -> Any:
    """NamedShardings for an (abstract) optax state, derived from the parameters it mirrors.

    Each state leaf is matched to the parameter whose key path is a suffix of the leaf's path
    (``.../mu/encoder/wi/kernel`` <- ``encoder/wi/kernel``). Same shape: the parameter's spec.
    One dimension fewer (Adafactor's factored ``v_row``/``v_col``): the parameter's spec with
    that dimension dropped, using optax's rule for which dimension each factor reduces.
    Anything else (step counts, size-1 placeholders) is replicated.
    """
    index: dict[tuple[str, ...], tuple[tuple[int, ...], PartitionSpec]] = {}
    p_flat, p_def = jax.tree_util.tree_flatten_with_path(params)
    s_flat = p_def.flatten_up_to(param_shardings)
    for (path, x), sh in zip(p_flat, s_flat, strict=True):
        index[tuple(_path_str(path).split("/"))] = (_shape(x), sh.spec)
    max_len = max((len(k) for k in index), default=0)

    def spec_for(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        keys = tuple(_path_str(path).split("/"))
        shape = _shape(leaf)
        for start in range(max(0, len(keys) - max_len), len(keys)):
            hit = index.get(keys[start:])
            if hit is None:
                continue
            p_shape, p_spec = hit
            spec = _derived_spec(shape, p_shape, p_spec, keys[:start])
            return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(spec_for, opt_state)


def _derived_spec(
    shape: tuple[int, ...],
    p_shape: tuple[int, ...],
    p_spec: PartitionSpec,
    prefix: tuple[str, ...],
) -> PartitionSpec:
    full = tuple(p_spec) + (None,) * (len(p_shape) - len(p_spec))
    if shape == p_shape:
        return PartitionSpec(*full)
    if len(shape) == len(p_shape) - 1 and len(p_shape) >= 2:
        order = np.argsort(p_shape)  # optax's _factored_dims: (d1, d0) = two largest dims
        d1, d0 = int(order[-2]), int(order[-1])
        field = next((k for k in reversed(prefix) if k in ("v_row", "v_col")), None)
        candidates = [d for d in range(len(p_shape)) if p_shape[:d] + p_shape[d + 1 :] == shape]
        if field == "v_row" and d0 in candidates:
            drop = d0
        elif field == "v_col" and d1 in candidates:
            drop = d1
        elif len(candidates) == 1:
            drop = candidates[0]
        else:
            return PartitionSpec()
        return PartitionSpec(*(full[:drop] + full[drop + 1 :]))
    return PartitionSpec()


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------


def global_batch(
    local_batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    shardings: NamedSharding | Mapping[str, NamedSharding],
) -> dict[str, jax.Array]:
    """Global arrays from this process's share of the batch (dimension 0).

    Every process passes its own rows; the global batch is their concatenation in process order,
    so the same code runs on one host and on many.
    """
    out = {}
    for key, value in local_batch.items():
        sharding = shardings[key] if isinstance(shardings, Mapping) else shardings
        value = np.asarray(value)
        try:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        except ValueError as e:
            raise ValueError(
                f"batch feature {key!r} with local shape {value.shape} cannot be laid out as "
                f"{sharding.spec} on mesh {dict(mesh.shape)} over {jax.process_count()} "
                f"process(es): {e}"
            ) from e
    return out


def local_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a global batch that this process's devices hold.

    One process's rows must be contiguous (``make_array_from_process_local_data`` needs that);
    processes whose devices only split the model (tensor axis across hosts) hold the same rows.
    """
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(batch_size)
        starts.append(start)
        stops.append(stop)
    start, stop = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops, strict=True)))
    reach = start
    for a, b in covered:
        if a > reach:
            break
        reach = max(reach, b)
    if reach < stop:
        raise ValueError(
            f"process {jax.process_index()} holds rows {covered} of the batch: not one contiguous "
            "range; order the mesh so each process's devices are adjacent on the batch axes")
    return start, stop


def check_batch_size(batch_size: int, mesh: Mesh, rules: Rules, micro_batches: int = 1) -> None:
    """Fail early, naming the sizes, if a global batch cannot be split as configured."""
    dp = data_parallel_size(mesh, rules)
    if batch_size % (dp * micro_batches):
        raise ValueError(
            f"global batch size {batch_size} must be divisible by micro_batches ({micro_batches})"
            f" x data-parallel size ({dp} = mesh axes {batch_axes(mesh, rules)})"
        )


def host_to_global(tree: Any, shardings: Any) -> Any:
    """Place a host (NumPy) tree that every process holds in full onto ``shardings``
    (e.g. converted pretrained weights); each process materialises only its own shards."""

    def place(x: Any, sharding: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(place, tree, shardings)


# ------------------------------------------------------------------------------------------------
# Parameter table
# ------------------------------------------------------------------------------------------------


def _bytes_per_device(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec, mesh: Mesh) -> int:
    n = math.prod(shape) * np.dtype(dtype).itemsize
    for axes in spec:
        n //= math.prod(mesh.shape[a] for a in _as_tuple(axes))
    return n


def parameter_table(
    state: Any, mesh: Mesh, rules: Rules, frozen: Callable[[str], bool] | None = None
) -> str:
    """A plain-text table (name, shape, logical axes, mesh sharding, bytes per device) of an NNX
    state or module, with totals, for the start-of-run log. The totals line counts trainable and
    frozen parameters; with ``frozen(path)`` (the run's partition) a ``train`` column marks each
    row ``yes``/``no``, so a LoRA or freezing run shows what it trains."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    pure = nnx.to_pure_dict(state)
    axes = logical_axes(state)
    flat, treedef = jax.tree_util.tree_flatten_with_path(pure)
    flat_axes = treedef.flatten_up_to(axes)
    rows = [("name", "shape", "logical axes", "mesh sharding", "bytes/device")]
    if frozen is not None:
        rows[0] += ("train",)
    total = total_dev = count = n_frozen = 0
    for (path, x), ax in zip(flat, flat_axes, strict=True):
        name = _path_str(path)
        shape = _shape(x)
        spec = logical_to_spec(ax, shape, mesh, rules, name=name)
        dtype = getattr(x, "dtype", np.float32)
        dev = _bytes_per_device(shape, dtype, spec, mesh)
        total += math.prod(shape) * np.dtype(dtype).itemsize
        total_dev += dev
        count += math.prod(shape)
        row = (
            name,
            "x".join(map(str, shape)) or "()",
            ",".join("-" if a is None else a for a in ax) if ax else "-",
            _spec_str(spec, len(shape)),
            f"{dev:,}",
        )
        if frozen is not None:
            is_frozen = bool(frozen(name))
            n_frozen += math.prod(shape) if is_frozen else 0
            row += ("no" if is_frozen else "yes",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"{len(flat)} arrays, {count:,} parameters, {total:,} bytes total, {total_dev:,} bytes per "
        f"device on mesh {dict(mesh.shape)}; {count - n_frozen:,} trainable / {n_frozen:,} frozen "
        "parameters"
    )
    return "\n".join(lines)


def _spec_str(spec: PartitionSpec, ndim: int) -> str:
    full = tuple(spec) + (None,) * (ndim - len(spec))
    parts = ["+".join(_as_tuple(a)) or "-" for a in full]
    return "(" + ",".join(parts) + ")" if parts else "replicated"


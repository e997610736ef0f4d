"""LoRA (Hu et al. 2021): a trainable low-rank update ``x A B * alpha/r`` beside a frozen kernel.

Why a wrapper chosen by path regex: the models build plain ``DenseGeneral`` layers and, when their
config has ``lora`` set, :func:`apply_lora` replaces each one whose module path (e.g.
``encoder/layers/0/attention/query``) matches ``LoRAConfig.targets`` by a :class:`LoRADense` that
keeps the very same ``kernel``/``bias`` variables. Every base parameter therefore keeps its path
(Hugging Face conversion, checkpoints and freeze regexes see the names they always saw) and LoRA
adds ``lora_a``/``lora_b`` beside the kernel. No model code branches on LoRA.

Shapes and sharding: a kernel ``in_features + out_features`` with logical axes
``in_axes + out_axes`` gets ``lora_a`` of shape ``in_features + (rank,)`` (axes
``in_axes + ("lora_rank",)``) and ``lora_b`` of shape ``(rank,) + out_features`` (axes
``("lora_rank",) + out_axes``), so both shard along the kernel's own axes.

Initialisation follows peft: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform with
a = sqrt(5)), B = 0, so adding LoRA leaves the model's function unchanged until B is trained.
Dropout (the model's ``dropout`` stream, off when deterministic) applies to the LoRA path's input
only; the base path never sees it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax.models.layers import DenseGeneral, Rngs, dropout, param

# Parameter names LoRA adds beside a kernel; the optimizer's partition trains exactly these.
LORA_PARAM_NAMES = ("lora_a", "lora_b")
RANK_AXIS = "lora_rank"
# peft's defaults for T5/mT5 (q, v of every self- and cross-attention) and XLM-R (query, value),
# written with our module names: T5 ``.../attention|self_attention|cross_attention/query``,
# XLM-R ``encoder/layers/i/attention/query``.
DEFAULT_TARGETS: tuple[str, ...] = (r"attention/(query|value)$",)

_LORA_PARAM = re.compile(r"(^|/)lora_[ab]$")


def is_lora_param(path: str) -> bool:
    """True for a LoRA matrix's parameter path (``.../query/lora_a``)."""
    return bool(_LORA_PARAM.search(path))


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank ``r``, ``alpha`` (the update is scaled by ``alpha / rank``), dropout on the LoRA path,
    and the dense layers to wrap as regular expressions searched (``re.search``) in each dense
    layer's module path. Defaults are peft's (r = 8, alpha = 8, no dropout, q and v projections
    of every attention); the thesis setting is r = 32, alpha = 32, dropout 0.1
    (``gin_configs/methods/lora.gin``)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "alpha", float(self.alpha))
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        if not targets:
            raise ValueError("LoRAConfig.targets is empty: name at least one dense layer regex")
        for t in targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ValueError(f"LoRAConfig.targets: {t!r} is not a regular expression: {e}") from None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def matches(self, module_path: str) -> bool:
        return any(re.search(t, module_path) for t in self.targets)

    @classmethod
    def coerce(cls, value: LoRAConfig | Mapping[str, Any] | None) -> LoRAConfig | None:
        """``None``, a ``LoRAConfig`` or its fields as a mapping (a JSON record) -> the config."""
        if value is None or isinstance(value, LoRAConfig):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"lora: unknown LoRAConfig fields {unknown}")
            return cls(**value)
        raise TypeError(f"lora must be a LoRAConfig, a dict of its fields or None, got {value!r}")


def _kaiming_uniform(fan_in: int):
    """peft's A init: torch's kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

    return init


class LoRADense(DenseGeneral):
    """A ``DenseGeneral`` plus ``dropout(x) A B * alpha/r``; takes over the wrapped layer's
    ``kernel`` and ``bias`` variables unchanged (same paths, same values)."""

    def __init__(self, base: DenseGeneral, config: LoRAConfig, *, rngs: Rngs) -> None:
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.dtype = base.dtype
        self.axis_names = base.axis_names
        self.kernel = base.kernel
        self.bias = base.bias
        self.rank = int(config.rank)
        self.scaling = float(config.scaling)
        self.dropout_rate = float(config.dropout)
        n_in = len(self.in_features)
        param_dtype = base.kernel.get_value().dtype
        self.lora_a = param(
            rngs,
            _kaiming_uniform(math.prod(self.in_features)),
            self.in_features + (self.rank,),
            self.axis_names[:n_in] + (RANK_AXIS,),
            param_dtype,
        )
        self.lora_b = param(
            rngs,
            nnx.initializers.zeros_init(),
            (self.rank,) + self.out_features,
            (RANK_AXIS,) + self.axis_names[n_in:],
            param_dtype,
        )

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        y = super().__call__(x)
        h = dropout(x, self.dropout_rate, deterministic=deterministic, rngs=rngs)
        n_in = len(self.in_features)
        contract = (tuple(range(h.ndim - n_in, h.ndim)), tuple(range(n_in)))
        a = self.lora_a[...].astype(self.dtype)
        h = jax.lax.dot_general(h.astype(self.dtype), a, (contract, ((), ())))  # [..., rank]
        delta = jnp.tensordot(h, self.lora_b[...].astype(self.dtype), axes=1)
        return y + delta * jnp.asarray(self.scaling, self.dtype)

    def delta(self) -> jax.Array:
        """The kernel update ``A B * alpha/r`` (float32, kernel-shaped)."""
        a = jnp.asarray(self.lora_a[...], jnp.float32).reshape(-1, self.rank)
        b = jnp.asarray(self.lora_b[...], jnp.float32).reshape(self.rank, -1)
        return (self.scaling * (a @ b)).reshape(self.kernel[...].shape)

    def merged_kernel(self) -> jax.Array:
        """``W + A B * alpha/r`` in the kernel's dtype."""
        kernel = self.kernel[...]
        return (jnp.asarray(kernel, jnp.float32) + self.delta()).astype(kernel.dtype)


# ------------------------------------------------------------------------------------------------
# Finding and wrapping layers
# ------------------------------------------------------------------------------------------------


def _path_name(path: Sequence[Any]) -> str:
    return "/".join(map(str, path))


def dense_layers(model: nnx.Module) -> list[tuple[tuple[Any, ...], DenseGeneral]]:
    """``(module path, layer)`` of every dense layer of ``model`` (LoRA-wrapped or not)."""
    return [(tuple(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, DenseGeneral)]


def lora_layers(model: nnx.Module) -> list[tuple[tuple[Any, ...], LoRADense]]:
    """``(module path, layer)`` of every LoRA-wrapped dense layer."""
    return [(p, n) for p, n in dense_layers(model) if isinstance(n, LoRADense)]


def _set_child(model: nnx.Module, path: tuple[Any, ...], child: nnx.Module) -> None:
    parent: Any = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = child
    else:
        setattr(parent, path[-1], child)


def apply_lora(model: nnx.Module, config: LoRAConfig | None, rngs: Rngs) -> None:
    """Wrap, in place, every dense layer whose module path matches ``config.targets``.

    Models call this at the end of their constructor, after every base parameter exists, so the
    base weights of a seed are the same with and without LoRA. A target regex that matches no
    dense layer is an error (a typo would otherwise train nothing).
    """
    if config is None:
        return
    layers = dense_layers(model)
    names = [_path_name(p) for p, _ in layers]
    unmatched = [t for t in config.targets if not any(re.search(t, n) for n in names)]
    if unmatched:
        shown = ", ".join(sorted({re.sub(r"/\d+/", "/<i>/", n) for n in names}))
        raise ValueError(
            f"LoRAConfig.targets {unmatched} match no dense layer of {type(model).__name__}; "
            f"its dense layers are: {shown}"
        )
    for path, layer in layers:
        if isinstance(layer, LoRADense):
            raise ValueError(f"{_path_name(path)} already has LoRA")
        if config.matches(_path_name(path)):
            _set_child(model, path, LoRADense(layer, config, rngs=rngs))


def init_lora_params(model: nnx.Module, seed: int = 0) -> None:
    """Fresh A (uniform) and B (zeros) for every LoRA layer, in place; works on abstract models
    (``nnx.eval_shape``) whose base weights a loader fills from a checkpoint. Inside
    ``jax.set_mesh`` + ``nnx.logical_axis_rules`` each matrix is placed by its logical axes."""
    key = jax.random.key(seed)
    mesh = jax.sharding.get_mesh() if not jax.sharding.get_abstract_mesh().empty else None
    for i, (_, layer) in enumerate(lora_layers(model)):
        a_var, b_var = layer.lora_a, layer.lora_b
        fan_in = math.prod(layer.in_features)
        spec_a, spec_b = a_var.get_value(), b_var.get_value()
        a = np.asarray(_kaiming_uniform(fan_in)(jax.random.fold_in(key, i), spec_a.shape, spec_a.dtype))
        b = np.zeros(spec_b.shape, spec_b.dtype)
        for var, value in ((a_var, a), (b_var, b)):
            if mesh is not None:
                sharding = jax.sharding.NamedSharding(mesh, nnx.spmd.get_var_pspec(var))
                var.set_value(jax.device_put(value, sharding))
            else:
                var.set_value(jnp.asarray(value))


# ------------------------------------------------------------------------------------------------
# Merging and stripping (export)
# ------------------------------------------------------------------------------------------------


def has_lora(model: nnx.Module) -> bool:
    return getattr(getattr(model, "config", None), "lora", None) is not None


def _rebuild_without_lora(model: nnx.Module, fold: bool) -> nnx.Module:
    config = model.config
    base_config = dataclasses.replace(config, lora=None)
    target = nnx.eval_shape(lambda: type(model)(base_config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(target)
    values = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}
    if fold:
        for path, layer in lora_layers(model):
            values[path + ("kernel",)] = layer.merged_kernel()
    leaves = []
    for path, var in nnx.to_flat_state(state):
        path = tuple(path)
        if path not in values:  # pragma: no cover - same model class and config minus LoRA
            raise ValueError(f"{_path_name(path)} has no value in the LoRA model")
        leaves.append((path, var.replace(values[path])))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def merged(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` without LoRA whose kernels are ``W + A B * alpha/r`` (the same
    function, for export); ``model`` itself when it has no LoRA. The model class must take
    ``(config, rngs=...)`` and its config a ``lora`` field, as ``T5Model``/``XLMRMultiTask`` do."""
    return _rebuild_without_lora(model, fold=True) if has_lora(model) else model


def without_lora(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with the LoRA matrices dropped: the base model LoRA was trained on
    (what a peft adapter is applied to)."""
    return _rebuild_without_lora(model, fold=False) if has_lora(model) else model

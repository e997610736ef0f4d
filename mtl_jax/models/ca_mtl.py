"""CA-MTL (Pilault, El Hattami, Pal, ICLR 2021): task-conditioned modules for the XLM-R/BERT encoder.

A learned task embedding ``z`` (one row per task, picked per example by the batch's ``task_id``, so a
batch that mixes tasks runs one compiled step) conditions the encoder through FiLM maps
``(gamma, beta) = (W_g z + b_g, W_b z + b_b)``:

- conditional alignment: the embedding output becomes ``(1 + gamma(z)) * x + beta(z)``;
- conditional attention: ``softmax(q k^T / sqrt(d) + M(z) [+ mask]) v`` with ``M(z)`` block-diagonal
  (``N = hidden_size / max_seq_length`` blocks of ``ceil(L / N)`` rows and columns, the last block cut
  at ``L``), each block the FiLM-modulated trainable matrix ``(1 + gamma(z)) * A + beta(z)``, shared by
  every head;
- conditional layer norm: the gain becomes ``(1 + gamma(z)) * w + beta(z)`` (the bias is kept);
- conditional bottleneck adapter: ``h + up(down((1 + gamma(z)) * h + beta(z)))`` with
  ``down: hidden -> adapter_size`` (``hidden // 3`` by default) on the feed-forward output.

Where this follows the paper and where the reference implementation (github.com/CAMTL/CA-MTL):

- Every FiLM map, the attention matrix ``A`` and the adapter's up projection start at zero, so a
  CA-MTL model computes exactly what its base encoder computes and a pretrained checkpoint starts
  unchanged (the reference initialises the FiLM kernels randomly and trains its top layer from
  scratch; we do neither).
- The adapter is a residual added to the feed-forward output before its layer norm (Houlsby et al.),
  in the layers ``adapter_layers`` names; the reference replaces the top layer's feed-forward
  residual by an adapter on a freshly initialised layer. Down and up projections are linear, as in
  the reference.
- The FiLM maps read ``z`` directly; the reference passes ``z`` through one more shared linear map for
  the layers (``task_transformation``), which composed with a linear FiLM map is again a linear map
  of ``z`` and adds nothing the FiLM map cannot learn.
- Freezing: embeddings and the lower layers are frozen but every conditional parameter inside them
  trains (:func:`frozen_predicate`); the reference's name list misses the attention FiLM maps of
  its frozen layers and leaves them at their random initialisation.

Module names start with ``ca_`` (``encoder/ca_task``, ``encoder/layers/3/ca_adapter/down/kernel``):
:func:`is_conditional_param` is that rule, and conversion/freeze regexes never see them otherwise.
The modules are attached after every base parameter exists (:func:`attach`), so the base weights
of a seed are the same with and without CA-MTL.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_jax.models.layers import DenseGeneral, eager_sharding_if_mesh, param

# The logical axis of every CA-MTL-only dimension (task-embedding width, attention blocks, the
# bottleneck): small, replicated by every rules table.
AXIS = "conditioning"
PREFIX = "ca_"


def is_conditional_param(path: str) -> bool:
    """True for a CA-MTL parameter path (a module named ``ca_*`` on the way)."""
    return any(part.startswith(PREFIX) for part in path.split("/"))


def _layers(value: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(sorted({int(i) for i in value}))


@dataclasses.dataclass(frozen=True)
class CAMTLConfig:
    """Which CA-MTL parts an ``XLMRConfig`` gets (``XLMRConfig.ca_mtl``; ``None`` = plain encoder).

    Layer lists ``None`` mean the defaults: conditional attention in every layer (as the reference),
    conditional layer norm, adapters and trainable layers in the upper half (``i >= n // 2``),
    frozen embeddings and lower half (``i < n // 2``) when ``freeze_lower``.
    ``max_seq_length`` is the ``L`` of the block-diagonal attention: ``hidden_size`` must be a
    multiple of it and no input may be longer (training fills it from
    ``TrainConfig.sequence_length['inputs']`` when unset). ``task_embed_dim`` ``None`` = hidden size.
    """

    task_embed_dim: int | None = None
    conditional_alignment: bool = True
    conditional_attention: bool = True
    attention_layers: tuple[int, ...] | None = None
    max_seq_length: int | None = None
    conditional_layer_norm: bool = True
    norm_layers: tuple[int, ...] | None = None
    adapters: bool = True
    adapter_layers: tuple[int, ...] | None = None
    adapter_size: int | None = None
    freeze_lower: bool = True
    frozen_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("attention_layers", "norm_layers", "adapter_layers", "frozen_layers"):
            object.__setattr__(self, name, _layers(getattr(self, name)))
        for name in ("task_embed_dim", "max_seq_length", "adapter_size"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"CAMTLConfig.{name} must be a positive integer or None, got {value!r}")

    @classmethod
    def coerce(cls, value: CAMTLConfig | Mapping[str, Any] | None) -> CAMTLConfig | None:
        """``None``, a ``CAMTLConfig`` or its fields as a mapping (a JSON record) -> the config."""
        if value is None or isinstance(value, CAMTLConfig):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"ca_mtl: unknown CAMTLConfig fields {unknown}")
            return cls(**value)
        raise TypeError(f"ca_mtl must be a CAMTLConfig, a dict of its fields or None, got {value!r}")

    # -- resolved per model ------------------------------------------------------------------------

    def embed_dim(self, hidden_size: int) -> int:
        return self.task_embed_dim or hidden_size

    def bottleneck(self, hidden_size: int) -> int:
        return self.adapter_size or max(1, hidden_size // 3)

    def layer_sets(self, num_layers: int) -> dict[str, frozenset[int]]:
        """Layer indices of each per-layer part (empty when the part is off)."""
        upper, lower = range(num_layers // 2, num_layers), range(num_layers // 2)
        pick = {
            "attention": (self.conditional_attention, self.attention_layers, range(num_layers)),
            "norm": (self.conditional_layer_norm, self.norm_layers, upper),
            "adapter": (self.adapters, self.adapter_layers, upper),
            "frozen": (self.freeze_lower, self.frozen_layers, lower),
        }
        out = {}
        for kind, (on, chosen, default) in pick.items():
            layers = frozenset(default if chosen is None else chosen) if on else frozenset()
            bad = sorted(i for i in layers if not 0 <= i < num_layers)
            if bad:
                raise ValueError(f"CAMTLConfig.{kind}_layers {bad} outside the {num_layers} layers")
            out[kind] = layers
        return out

    def attention_blocks(self, hidden_size: int) -> tuple[int, int]:
        """``(N, block)``: ``N = hidden_size / max_seq_length`` blocks of ``ceil(L / N)``."""
        length = self.max_seq_length
        if length is None:
            raise ValueError(
                "CAMTLConfig.max_seq_length is unset: conditional attention needs the longest "
                "input length L (set it, or TrainConfig.sequence_length['inputs'] in a run)")
        if length > hidden_size or hidden_size % length:
            raise ValueError(
                f"CA-MTL conditional attention splits the L x L bias into N = hidden_size / L "
                f"blocks, so XLMRConfig.hidden_size={hidden_size} must be a multiple of "
                f"CAMTLConfig.max_seq_length={length} (e.g. L = {_divisors_hint(hidden_size)}); "
                "or set CAMTLConfig.conditional_attention=False")
        n = hidden_size // length
        return n, math.ceil(length / n)

    def check(self, hidden_size: int, num_layers: int, scan_layers: bool) -> None:
        """Raise on a configuration the model cannot build (called by ``XLMRConfig``)."""
        sets = self.layer_sets(num_layers)
        if self.conditional_attention and self.max_seq_length is not None:
            self.attention_blocks(hidden_size)
        parts = {k: v for k, v in sets.items() if k != "frozen"}
        mixed = sorted(k for k, v in parts.items() if v and len(v) != num_layers)
        if scan_layers and mixed:
            raise ValueError(
                "XLMRConfig.scan_layers=True needs every layer to have the same structure, but "
                f"XLMRConfig.ca_mtl puts its {', '.join(mixed)} modules in some layers only "
                f"({', '.join(f'{k}: {sorted(parts[k])}' for k in mixed)}); set "
                "XLMRConfig.scan_layers=False, or give those CAMTLConfig layer lists every layer")


def _divisors_hint(hidden_size: int) -> str:
    """Lengths that work, e.g. 32, 48, 64, 96, 128, 192, 256, 384, 768 for 768."""
    return ", ".join(str(d) for d in range(32, hidden_size + 1) if hidden_size % d == 0)


# ------------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------------

_ZEROS = nnx.initializers.zeros_init()


def _normal(stddev: float) -> Callable[..., jax.Array]:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return stddev * jax.random.normal(key, shape, dtype)

    return init


class FiLM(nnx.Module):
    """``gamma(z), beta(z)``: two zero-initialised linear maps of the task embedding (float32)."""

    def __init__(self, embed_dim: int, size: int, out_axis: str, *, rngs: nnx.Rngs) -> None:
        kw = dict(axis_names=(AXIS, out_axis), use_bias=True, kernel_init=_ZEROS, rngs=rngs)
        self.gamma = DenseGeneral(embed_dim, size, **kw)
        self.beta = DenseGeneral(embed_dim, size, **kw)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``z [batch, embed_dim]`` -> ``(gamma, beta)`` ``[batch, size]`` float32."""
        z = z.astype(jnp.float32)
        return self.gamma(z), self.beta(z)

    def modulate(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``(1 + gamma(z)) * x + beta(z)`` per example, over ``x [batch, ..., size]``, in
        float32 and returned in ``x``'s dtype (exactly ``x`` while the maps are zero)."""
        gamma, beta = self(z)
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        y = (1.0 + gamma.reshape(shape)) * x.astype(jnp.float32) + beta.reshape(shape)
        return y.astype(x.dtype)


class TaskEmbedding(nnx.Module):
    """One learned vector per task (the reference's ``task_type_embeddings``, N(0, 0.02))."""

    def __init__(self, num_tasks: int, dim: int, stddev: float, *, rngs: nnx.Rngs) -> None:
        self.embedding = param(rngs, _normal(stddev), (num_tasks, dim), ("tasks", AXIS))

    def __call__(self, task_id: jax.Array) -> jax.Array:
        """``[batch]`` -> ``[batch, dim]``; an id outside ``[0, T)`` gives NaN (no raise in jit)."""
        return jnp.take(self.embedding[...], jnp.asarray(task_id, jnp.int32), axis=0, mode="fill",
                        fill_value=jnp.nan)


class ConditionalAttentionBias(nnx.Module):
    """The block-diagonal ``M(z)`` added to the attention scores, ``[batch, 1, l, l]``.

    ``A`` is ``[L, ceil(L/N)]`` (the reference's ``random_weight_matrix``, zero at init); its row
    chunk ``n`` of ``ceil(L/N)`` rows, FiLM-modulated column-wise, is diagonal block ``n`` (the last
    chunk, when ``N`` does not divide ``L``, is shorter and its block cut at ``L``, as the
    reference's ``block_diag(...)[:, :L]``). An input of length ``l < L`` gets ``M[:l, :l]``,
    what padding it to ``L`` would give its real tokens.
    """

    def __init__(self, embed_dim: int, hidden_size: int, config: CAMTLConfig, *, rngs: nnx.Rngs) -> None:
        _, block = config.attention_blocks(hidden_size)
        self.max_len = int(config.max_seq_length)
        self.block = block
        self.matrix = param(rngs, _ZEROS, (self.max_len, block), (AXIS, AXIS))
        self.film = FiLM(embed_dim, block, AXIS, rngs=rngs)

    def __call__(self, z: jax.Array, length: int) -> jax.Array:
        if length > self.max_len:
            raise ValueError(
                f"input length {length} exceeds CAMTLConfig.max_seq_length={self.max_len} (the "
                "block-diagonal conditional attention is built for inputs up to that length)")
        rows = jnp.arange(length)
        same_block = (rows[:, None] // self.block) == (rows[None, :] // self.block)
        a = self.film.modulate(jnp.broadcast_to(self.matrix[...][:length], (z.shape[0], length, self.block)), z)
        full = jnp.take(a, rows % self.block, axis=2)  # [batch, l, l]: a[b, r, c mod block]
        return jnp.where(same_block, full, 0.0)[:, None]


class ConditionalAdapter(nnx.Module):
    """``up(down(FiLM(h, z)))``, down ``N(0, initializer_range)``, up zero (added as a residual)."""

    def __init__(self, embed_dim: int, hidden_size: int, size: int, stddev: float, *, rngs: nnx.Rngs) -> None:
        self.film = FiLM(embed_dim, hidden_size, "embed", rngs=rngs)
        self.down = DenseGeneral(hidden_size, size, axis_names=("embed", AXIS), use_bias=True,
                                 kernel_init=_normal(stddev), rngs=rngs)
        self.up = DenseGeneral(size, hidden_size, axis_names=(AXIS, "embed"), use_bias=True,
                               kernel_init=_ZEROS, rngs=rngs)

    def __call__(self, h: jax.Array, z: jax.Array) -> jax.Array:
        x = self.film.modulate(h, z).astype(jnp.float32)
        return self.up(self.down(x)).astype(h.dtype)


def conditional_gain(film: FiLM | None, scale: jax.Array, z: jax.Array | None) -> jax.Array | None:
    """The per-example layer-norm gain ``(1 + gamma(z)) * w + beta(z)`` ``[batch, 1, hidden]``,
    or ``None`` (the norm's own scale) without a FiLM map."""
    if film is None:
        return None
    gain = film.modulate(jnp.broadcast_to(scale.astype(jnp.float32), (z.shape[0], scale.shape[-1])), z)
    return gain[:, None, :]


# ------------------------------------------------------------------------------------------------
# Attaching to an encoder, freezing
# ------------------------------------------------------------------------------------------------


def build(config: Any, rngs: nnx.Rngs) -> dict[tuple[Any, ...], nnx.Module]:
    """Fresh CA-MTL modules for an ``XLMRConfig`` with ``ca_mtl`` set, keyed by their path
    relative to the encoder (``("layers", 3, "ca_adapter")``)."""
    ca: CAMTLConfig = config.ca_mtl
    if not config.task_num_labels:
        raise ValueError("XLMRConfig.ca_mtl needs task heads (XLMRConfig.task_num_labels): "
                         "the task embedding has one row per task")
    h, std, n = config.hidden_size, config.initializer_range, config.num_hidden_layers
    e = ca.embed_dim(h)
    sets = ca.layer_sets(n)
    out: dict[tuple[Any, ...], nnx.Module] = {
        ("ca_task",): TaskEmbedding(len(config.task_num_labels), e, std, rngs=rngs)}
    if ca.conditional_alignment:
        out[("ca_alignment",)] = FiLM(e, h, "embed", rngs=rngs)
    for i in range(n):
        if i in sets["attention"]:
            out[("layers", i, "attention", "ca_attention")] = ConditionalAttentionBias(e, h, ca, rngs=rngs)
        if i in sets["norm"]:
            out[("layers", i, "ca_attention_norm")] = FiLM(e, h, "embed", rngs=rngs)
            out[("layers", i, "ca_output_norm")] = FiLM(e, h, "embed", rngs=rngs)
        if i in sets["adapter"]:
            out[("layers", i, "ca_adapter")] = ConditionalAdapter(e, h, ca.bottleneck(h), std, rngs=rngs)
    return out


def attach(encoder: nnx.Module, modules: Mapping[tuple[Any, ...], nnx.Module]) -> None:
    """Set each module at its path in ``encoder`` (the placeholders are ``None``), in place."""
    for path, module in modules.items():
        parent: Any = encoder
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        setattr(parent, path[-1], nnx.data(module))  # the placeholder was a static None


def init_conditional_params(model: nnx.Module, seed: int = 0) -> None:
    """Fresh CA-MTL modules (from ``seed``) in an ``XLMRMultiTask`` whose base weights a loader
    filled from a checkpoint (``nnx.eval_shape`` left the CA-MTL ones abstract)."""
    with eager_sharding_if_mesh():
        attach(model.encoder, build(model.config, nnx.Rngs(params=seed)))


def frozen_predicate(config: Any) -> Callable[[str], bool] | None:
    """``path -> frozen?`` for CA-MTL's freezing: the embeddings and the ``frozen_layers``
    (lower half) of the encoder, except every conditional parameter in them. ``None`` when the
    config has no CA-MTL or freezes nothing."""
    ca = getattr(config, "ca_mtl", None)
    if ca is None or not ca.freeze_lower:
        return None
    frozen = ca.layer_sets(config.num_hidden_layers)["frozen"]

    def is_frozen(path: str) -> bool:
        if is_conditional_param(path):
            return False
        parts = path.split("/")
        if parts[:2] == ["encoder", "embeddings"]:
            return True
        return parts[:2] == ["encoder", "layers"] and len(parts) > 2 and parts[2].isdigit() \
            and int(parts[2]) in frozen

    return is_frozen

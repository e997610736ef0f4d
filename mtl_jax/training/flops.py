"""Analytic FLOP counts of a training step, peak accelerator rates and MFU.

Why analytic and not ``6 * params * tokens``: in an encoder-decoder each token goes through the
encoder OR the decoder, never both, the 250k-entry embedding tables hold most of mT5's parameters
but cost nothing (a lookup), while the LM head over that vocabulary is the single largest matmul
of the decoder; and attention grows with the sequence length. A parameter count gets all three
wrong, so the count here walks the architecture.

Conventions (``tests/test_flops.py`` checks them against XLA's own count of the same program):

- A matmul ``[m, k] @ [k, n]`` costs ``2 * m * k * n`` FLOPs (one multiply and one add).
- Only matmuls are counted: the attention projections (``d_model -> heads * d_kv``), attention
  scores ``q.k`` and values ``p.v`` (``2 * 2 * heads * d_kv`` per query-key pair), the
  feed-forward (two input matrices when gated), the LM head (``2 * d_model * vocab`` per decoder
  token), the XLM-R pooler/heads. Norms, softmax, activations, dropout, residual adds, bias adds,
  the relative position bias and embedding lookups count 0; they are a few percent of a
  matmul-bound step (XLA's count includes them, hence the documented gap in the tests).
- Cross-attention keys/values are projections of the *encoder* output, so they are counted per
  encoder token and per decoder layer.
- Causal decoder self-attention: ``causal="full"`` (default) counts every query-key pair, which is
  what our models execute (the dense einsum path and ``jax.nn.dot_product_attention`` with a
  boolean mask both compute the full square); ``causal="half"`` counts only the pairs at or below
  the diagonal (``L * (L + 1) / 2``), the "useful" work a causal kernel would do. For T5-style
  short targets the difference is well under 1% of a step.
- Backward = 2 x forward (the gradient w.r.t. activations and w.r.t. weights each repeat every
  matmul), so a training step is 3 x forward. Not modelled: frozen parameters (their
  weight-gradient matmuls are skipped), the optimizer update and the embedding-gradient
  scatter-add (both elementwise), rematerialisation (recomputed FLOPs are not model FLOPs).
- Shapes: by default the padded batch shape, i.e. the FLOPs the hardware executes. With
  ``encoder_lengths``/``decoder_lengths`` (real tokens per example) every per-token term counts
  real tokens only and attention counts real query-key pairs of each example: the "useful" FLOPs
  of a padded batch. Packed rows should be counted by shape (segments attend within themselves,
  but the kernel computes the whole row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mtl_jax.models.t5 import T5Config
    from mtl_jax.models.xlmr import XLMRConfig

CAUSAL_MODES = ("full", "half")


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one step on one global batch. ``breakdown`` splits ``forward`` by component."""

    forward: int | float
    train: int | float  # forward + backward = 3 * forward
    breakdown: Mapping[str, int | float]


def _lengths(
    name: str, lengths: Sequence[int] | np.ndarray | None, batch_size: int, padded: int
) -> np.ndarray:
    """Real tokens per example as int64 (all ``padded`` when not given), validated."""
    if lengths is None:
        return np.full((batch_size,), padded, np.int64)
    arr = np.asarray(lengths, np.int64).reshape(-1)
    if arr.shape[0] != batch_size:
        raise ValueError(f"{name} has {arr.shape[0]} entries for a batch of {batch_size}")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > padded:
        raise ValueError(f"{name} must lie in [0, {padded}], got {arr.min()}..{arr.max()}")
    return arr


def _check_shape(**sizes: int) -> None:
    for name, value in sizes.items():
        if int(value) < 0 or int(value) != value:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _causal_pairs(lengths: np.ndarray, causal: str) -> int:
    """Query-key pairs of causal self-attention summed over examples."""
    if causal not in CAUSAL_MODES:
        raise ValueError(f"causal must be one of {CAUSAL_MODES}, got {causal!r}")
    if causal == "full":
        return int(np.sum(lengths * lengths))
    return int(np.sum(lengths * (lengths + 1) // 2))


def _result(breakdown: dict[str, int]) -> FlopCount:
    forward = sum(breakdown.values())
    return FlopCount(forward=forward, train=3 * forward, breakdown=breakdown)


def t5_flops(
    config: T5Config,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    *,
    encoder_lengths: Sequence[int] | np.ndarray | None = None,
    decoder_lengths: Sequence[int] | np.ndarray | None = None,
    causal: str = "full",
) -> FlopCount:
    """FLOPs of T5/mT5 on a ``[batch, inputs_length]`` -> ``[batch, targets_length]`` batch.

    Per encoder token and layer: q, k, v, o projections ``4 * 2 * d_model * heads * d_kv``,
    scores and values ``2 * 2 * heads * d_kv`` per key, feed-forward ``(1 + gated) * 2 * d_model *
    d_ff + 2 * d_ff * d_model``. Per decoder token and layer: the same for causal self-attention,
    cross-attention q and o projections and its scores/values over the encoder keys, the
    feed-forward; cross-attention k and v are ``2 * 2 * d_model * heads * d_kv`` per encoder token
    and decoder layer. Per decoder token: the LM head ``2 * d_model * vocab`` (tied or not).
    """
    _check_shape(batch_size=batch_size, inputs_length=inputs_length, targets_length=targets_length)
    enc = _lengths("encoder_lengths", encoder_lengths, batch_size, inputs_length)
    dec = _lengths("decoder_lengths", decoder_lengths, batch_size, targets_length)
    d, inner, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    ffn_in = 2 if config.is_gated else 1
    enc_tokens, dec_tokens = int(enc.sum()), int(dec.sum())
    proj = 2 * d * inner  # one d_model <-> heads*d_kv projection, per token
    ffn = (ffn_in + 1) * 2 * d * f  # per token
    pair = 2 * 2 * inner  # q.k and p.v for one query-key pair (all heads)
    breakdown = {
        "encoder_attention_projections": n_enc * enc_tokens * 4 * proj,
        "encoder_attention_scores": n_enc * int(np.sum(enc * enc)) * pair,
        "encoder_ffn": n_enc * enc_tokens * ffn,
        "decoder_self_attention_projections": n_dec * dec_tokens * 4 * proj,
        "decoder_self_attention_scores": n_dec * _causal_pairs(dec, causal) * pair,
        "decoder_cross_attention_q_o": n_dec * dec_tokens * 2 * proj,
        "decoder_cross_attention_k_v": n_dec * enc_tokens * 2 * proj,
        "decoder_cross_attention_scores": n_dec * int(np.sum(dec * enc)) * pair,
        "decoder_ffn": n_dec * dec_tokens * ffn,
        "lm_head": dec_tokens * 2 * d * config.vocab_size,
    }
    return _result(breakdown)


def xlmr_flops(
    config: XLMRConfig,
    batch_size: int,
    length: int,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
    pooler: bool = False,
) -> FlopCount:
    """FLOPs of the XLM-R encoder with per-task heads on a ``[batch, length]`` batch.

    Per token and layer: q, k, v, o ``4 * 2 * hidden**2``, scores and values ``2 * 2 * hidden``
    per key, feed-forward ``2 * 2 * hidden * intermediate``. Per example: the task heads as
    ``models.heads`` runs them (the dense layer of every task, ``2 * tasks * hidden**2``, then the
    example's out projection ``2 * hidden * max_labels``). The pooler (``2 * hidden**2`` per
    example) feeds no head, so XLA removes it from a training step: counted only if ``pooler``.
    """
    _check_shape(batch_size=batch_size, length=length)
    real = _lengths("lengths", lengths, batch_size, length)
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = int(real.sum())
    breakdown = {
        "attention_projections": n * tokens * 4 * 2 * h * h,
        "attention_scores": n * int(np.sum(real * real)) * 2 * 2 * h,
        "ffn": n * tokens * 2 * 2 * h * f,
        "pooler": batch_size * 2 * h * h if pooler else 0,
        "task_heads": 0,
    }
    labels = tuple(config.task_num_labels)
    if labels:
        breakdown["task_heads"] = batch_size * 2 * h * (len(labels) * h + max(labels))
    return _result(breakdown)


def model_flops(config: Any, batch_size: int, inputs_length: int, targets_length: int = 0,
                **kwargs: Any) -> FlopCount:
    """``t5_flops`` for a ``T5Config``, ``xlmr_flops`` (inputs only) for an ``XLMRConfig``."""
    if hasattr(config, "d_kv"):
        return t5_flops(config, batch_size, inputs_length, targets_length, **kwargs)
    if hasattr(config, "intermediate_size"):
        return xlmr_flops(config, batch_size, inputs_length, **kwargs)
    raise TypeError(f"no FLOP model for config type {type(config).__name__}")


# ------------------------------------------------------------------------------------------------
# Peak rates and MFU
# ------------------------------------------------------------------------------------------------

# Dense (no 2:4 sparsity) bf16/fp16 tensor-core rate per chip from the vendors' data sheets, keyed
# by a substring of ``jax.Device.device_kind`` (first match wins, so specific names come first).
# MFU divides by these spec numbers, as PaLM, MaxText and T5X/Rosetta do, so the results compare
# with their published MFU. On an H100/H200 a plain bf16 matmul measures ~790-800e12 (measured),
# about 80% of the spec: an MFU of 0.40 is ~0.50 of what a matmul alone reaches there.
_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3"), 989.4 TFLOP/s
    ("H200", 989e12),  # SXM, same compute as H100 SXM (more and faster memory)
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16 (no bf16 on Volta)
    ("TPU v6", 918e12),  # Trillium, "TPU v6 lite"
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)
# NVIDIA GPUs with TF32 tensor cores: JAX's default precision runs float32 matmuls as TF32 there,
# at half the bf16 rate. (TPUs run float32 matmuls as bf16 passes by default.)
_TF32_HALF_RATE = ("H100", "H200", "A100", "L40S", "L4")


def peak_flops(device: Any, dtype: str = "bfloat16") -> float | None:
    """Dense peak FLOP/s of one chip for matmuls in ``dtype``, or None when unknown (CPU).

    ``device`` is a ``jax.Device`` or its ``device_kind`` string. ``float32`` on an NVIDIA GPU
    with TF32 tensor cores gives the TF32 rate (what JAX's default matmul precision uses); on a
    V100 it is the plain float32 rate, unknown here (None).
    """
    kind = device if isinstance(device, str) else getattr(device, "device_kind", "")
    platform = "" if isinstance(device, str) else getattr(device, "platform", "")
    if platform == "cpu" or "cpu" in kind.lower():
        return None
    peak = next((value for key, value in _PEAK_BF16 if key.lower() in kind.lower()), None)
    if peak is None:
        return None
    if str(dtype) in ("bfloat16", "float16"):
        return peak
    if str(dtype) != "float32":
        raise ValueError(f"peak_flops: dtype must be bfloat16, float16 or float32, got {dtype!r}")
    if kind.lower().startswith("tpu"):
        return peak
    if any(key.lower() in kind.lower() for key in _TF32_HALF_RATE):
        return peak / 2
    return None


def mfu(
    flops_per_step: float, step_time: float, peak: float | None, num_devices: int = 1
) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices used.

    ``flops_per_step`` is the analytic count of the whole global batch (``FlopCount.train``),
    ``peak`` the per-device rate (``peak_flops``). None when the peak is unknown.
    """
    if step_time <= 0:
        raise ValueError(f"step_time must be positive, got {step_time}")
    if peak is None:
        return None
    return flops_per_step / step_time / (peak * num_devices)

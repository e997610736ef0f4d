"""Vocabulary tables padded to a multiple of rows (default 128), so they shard like the rest.

Why: a mesh axis shards a dimension only when it divides it. XLM-R's 250,002 rows divide by 2 and
nothing larger, so its word embeddings were replicated on every device of a tensor axis of 4 or 8.
Our embedding and LM-head parameters therefore hold ``padded_size(vocab_size, multiple)`` rows.
The extra rows start at zero and are never looked up (token ids are ``< vocab_size``); logits over
them are masked to the most negative float32 (``losses.masked_logits``), so the model computes
the unpadded model's function. Conversions pad on import (zeros) and drop the rows on export:
Hugging Face files and transformers never see them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MULTIPLE = 128
# A stored model record (converted checkpoint, training checkpoint) without the field was written
# before padding existed: its parameters have exactly ``vocab_size`` rows.
_BEFORE_PADDING = {"vocab_pad_multiple": 1}


def stored_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A stored model record's config fields, ``vocab_pad_multiple=1`` where it predates padding
    (so old checkpoints restore as the unpadded models they are, and compare as such)."""
    return {**_BEFORE_PADDING, **fields}


def check_multiple(owner: str, multiple: int) -> None:
    """Raise unless ``multiple`` is a positive integer (1 = no padding)."""
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"{owner}.vocab_pad_multiple must be a positive integer, got {multiple!r}")


def padded_size(vocab_size: int, multiple: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple``."""
    return -(-int(vocab_size) // int(multiple)) * int(multiple)


def padded_init(
    init: Callable[..., jax.Array], vocab_size: int, axis: int
) -> Callable[..., jax.Array]:
    """``init`` over the real ``vocab_size`` entries of ``axis``, zeros beyond them.

    The real entries are exactly what ``init`` draws for the unpadded shape, so a model's
    initial function does not depend on the padding multiple.
    """

    def padded(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        real = list(shape)
        real[axis] = vocab_size
        x = init(key, tuple(real), dtype)
        return _pad_array(jnp, x, axis, shape[axis])

    return padded


def pad(x: np.ndarray, axis: int, vocab_size: int, size: int) -> np.ndarray:
    """``x`` (exactly ``vocab_size`` entries on ``axis``) with zeros appended up to ``size``."""
    x = np.asarray(x)
    if x.shape[axis] != vocab_size:
        raise ValueError(f"array of shape {x.shape} has {x.shape[axis]} vocabulary entries on axis "
                         f"{axis}; the config's vocab_size is {vocab_size}")
    return _pad_array(np, x, axis, size)


def unpad(x: np.ndarray, axis: int, vocab_size: int) -> np.ndarray:
    """The first ``vocab_size`` entries of ``axis`` (export): the padding never leaves."""
    x = np.asarray(x)
    if x.shape[axis] < vocab_size:
        raise ValueError(f"array of shape {x.shape} has fewer than {vocab_size} vocabulary entries "
                         f"on axis {axis}")
    return np.take(x, np.arange(vocab_size), axis=axis)


def _pad_array(xp: Any, x: Any, axis: int, size: int) -> Any:
    have = x.shape[axis]
    if have > size:
        raise ValueError(f"array of shape {x.shape} has more than {size} vocabulary entries on "
                         f"axis {axis}")
    if have == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - have)
    return xp.pad(x, widths)

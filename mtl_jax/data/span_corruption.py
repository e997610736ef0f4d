"""T5 span corruption (Raffel et al. 2020, section 3.1.4) as seqio preprocessors.

The objective the mT5 checkpoints were pre-trained with, so that mC4 text can be mixed into
fine-tuning mixtures: a document's tokens are split into chunks, ~15% of each chunk's tokens are
chosen as noise in spans of mean length 3, each noise span is replaced in the inputs by one sentinel
token, and the targets list every sentinel followed by the span it replaced.

Noise layout (the published algorithm): for a chunk of ``n`` tokens,
``noise = round(n * density)`` (clamped to ``[1, n - 1]``), ``spans = round(noise / mean_span)``
(at least 1), the noise tokens and the non-noise tokens are each cut into ``spans`` non-empty
pieces uniformly at random, and the pieces alternate starting with non-noise. Sentinels come from
the top of the vocabulary and descend (mT5: ``<extra_id_0>`` = ``vocab_size - 1``).

Randomness comes from seqio's per-example seeds (``seqio.map_over_dataset(num_seeds=...)``), so a
Task's ``get_dataset(seed=s)`` is deterministic for ``s``. Compose it in a Task as:
``[..., tokenize (text -> targets), span_corruption, seqio.preprocessors.append_eos_after_trim]``;
the chunk length already leaves room for the EOS token that the last step appends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
# T5's standard encoder length; used only when a caller asks for the dataset without lengths.
DEFAULT_INPUTS_LENGTH = 512


@dataclasses.dataclass(frozen=True)
class SpanCounts:
    """How a chunk of ``length`` tokens is corrupted (identical in Python and in the TF graph).

    ``inputs_length`` / ``targets_length`` count the EOS token appended after corruption.
    """

    length: int
    noise_tokens: int
    noise_spans: int
    inputs_length: int
    targets_length: int


def _check_params(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"span corruption: noise_density must be in (0, 1), got {noise_density}")
    if mean_noise_span_length < 1.0:
        raise ValueError(
            f"span corruption: mean_noise_span_length must be >= 1, got {mean_noise_span_length}"
        )


def span_counts(
    length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> SpanCounts:
    """Noise token and span counts for a chunk of ``length`` tokens (``length >= 1``).

    Computed in float32 with round-half-to-even exactly like the graph code (T5's helper uses
    float64 and can disagree with its own mask by one token on exact halves, e.g. 10 * 0.15).
    """
    _check_params(noise_density, mean_noise_span_length)
    if length < 1:
        raise ValueError(f"span corruption: chunk length must be >= 1, got {length}")
    if length == 1:
        # The mask is drawn for 2 tokens and cut back to 1: the token stays, and the targets hold
        # only the sentinel of the (cut) non-noise span.
        return SpanCounts(
            length=1, noise_tokens=0, noise_spans=0, inputs_length=2, targets_length=2
        )
    noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    noise = min(max(noise, 1), length - 1)
    spans = int(np.round(np.float32(noise) / np.float32(mean_noise_span_length)))
    spans = min(max(spans, 1), length - noise)
    return SpanCounts(
        length=length,
        noise_tokens=noise,
        noise_spans=spans,
        inputs_length=length - noise + spans + 1,
        targets_length=noise + spans + 1,
    )


def tokens_length_for(
    inputs_length: int,
    targets_length: int | None = None,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> int:
    """The longest chunk whose corrupted inputs (and targets, when a length is given) fit.

    This is T5's ``random_spans_helper`` (inputs 512 -> chunks of 568 tokens, targets 114) with
    the targets length as an extra constraint: a mixture that sets a short targets length (e.g.
    classification labels) gets shorter chunks instead of truncated span-corruption targets.
    Lengths include the EOS token appended after corruption.
    """
    if inputs_length < 2:
        raise ValueError(f"span corruption: inputs length must be >= 2, got {inputs_length}")
    if targets_length is not None and targets_length < 2:
        raise ValueError(f"span corruption: targets length must be >= 2, got {targets_length}")

    def fits(n: int) -> bool:
        c = span_counts(n, noise_density, mean_noise_span_length)
        return c.inputs_length <= inputs_length and (
            targets_length is None or c.targets_length <= targets_length
        )

    n = 1
    # Both lengths grow by at most one per extra token, so a linear scan finds the maximum.
    while fits(n + 1):
        n += 1
    return n


def _random_partition(num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Uniformly random composition of ``num_items`` into ``num_segments`` positive parts."""
    # Choose num_segments - 1 distinct cut points among the num_items - 1 gaps between items.
    scores = tf.random.stateless_uniform([num_items - 1], seed=seed)
    cuts = tf.sort(tf.math.top_k(scores, k=num_segments - 1).indices + 1)
    bounds = tf.concat([[0], cuts, [num_items]], axis=0)
    return bounds[1:] - bounds[:-1]


def random_spans_noise_mask(
    length: tf.Tensor,
    seeds: tf.Tensor,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
    """Boolean noise mask of shape ``[length]``: alternating non-noise / noise spans.

    ``seeds`` holds two stateless seeds (shape [2, 2]). Among all masks with the counts of
    :func:`span_counts`, every one is equally likely.
    """
    _check_params(noise_density, mean_noise_span_length)
    orig_length = length
    length = tf.maximum(length, 2)
    noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    noise = tf.minimum(tf.maximum(noise, 1), length - 1)
    spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length), tf.int32)
    spans = tf.minimum(tf.maximum(spans, 1), length - noise)
    noise_lengths = _random_partition(noise, spans, seeds[0])
    keep_lengths = _random_partition(length - noise, spans, seeds[1])
    span_lengths = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1), [-1])
    span_is_noise = tf.tile(tf.constant([False, True]), [spans])
    return tf.repeat(span_is_noise, span_lengths)[:orig_length]


def replace_spans_with_sentinels(
    tokens: tf.Tensor, span_mask: tf.Tensor, first_sentinel_id: int
) -> tf.Tensor:
    """Each maximal run of ``span_mask`` becomes one sentinel, numbered downwards in order."""
    previous = tf.concat([[False], span_mask[:-1]], axis=0)
    span_start = tf.logical_and(span_mask, tf.logical_not(previous))
    span_rest = tf.logical_and(span_mask, previous)
    sentinel = first_sentinel_id + 1 - tf.cumsum(tf.cast(span_start, tokens.dtype))
    return tf.boolean_mask(tf.where(span_start, sentinel, tokens), tf.logical_not(span_rest))


def split_tokens(
    dataset: tf.data.Dataset, max_tokens: int, feature_key: str = "targets"
) -> tf.data.Dataset:
    """Cut each example's ``feature_key`` into chunks of ``max_tokens`` (last one shorter).

    Other features (``task``, ``language``, ...) are copied to every chunk. Empty documents are
    dropped.
    """
    if max_tokens < 1:
        raise ValueError(f"split_tokens: max_tokens must be >= 1, got {max_tokens}")

    def to_chunks(ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        tokens = ex[feature_key]
        size = tf.size(tokens)
        num = (size + max_tokens - 1) // max_tokens
        padded = tf.pad(tokens, [[0, num * max_tokens - size]])
        lengths = tf.minimum(size - tf.range(num) * max_tokens, max_tokens)
        rows = {k: tf.repeat(v[tf.newaxis], num, axis=0) for k, v in ex.items() if k != feature_key}
        rows["__chunk"] = tf.reshape(padded, [num, max_tokens])
        rows["__chunk_length"] = lengths
        return tf.data.Dataset.from_tensor_slices(rows)

    def unpad(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {k: v for k, v in ex.items() if not k.startswith("__chunk")}
        out[feature_key] = ex["__chunk"][: ex["__chunk_length"]]
        return out

    dataset = dataset.filter(lambda ex: tf.size(ex[feature_key]) > 0)
    return dataset.flat_map(to_chunks).map(unpad, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=2)
def _corrupt_example(
    ex: Mapping[str, tf.Tensor],
    seeds: tf.Tensor,
    *,
    feature_key: str,
    first_sentinel_id: int,
    noise_density: float,
    mean_noise_span_length: float,
) -> dict[str, tf.Tensor]:
    tokens = ex[feature_key]
    mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density, mean_noise_span_length)
    out = {k: v for k, v in ex.items() if k not in (feature_key, "inputs")}
    out["inputs"] = replace_spans_with_sentinels(tokens, mask, first_sentinel_id)
    out["targets"] = replace_spans_with_sentinels(tokens, tf.logical_not(mask), first_sentinel_id)
    return out


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    feature_key: str = "targets",
    first_sentinel_id: int | None = None,
) -> tf.data.Dataset:
    """seqio preprocessor: tokenized ``feature_key`` -> span-corrupted ``inputs`` / ``targets``.

    Chunk length from :func:`tokens_length_for` on ``sequence_length`` (``inputs``, and
    ``targets`` when given); without lengths, T5's 512 inputs. No EOS is added here (append it
    with ``seqio.preprocessors.append_eos_after_trim``). Sentinels start at
    ``first_sentinel_id`` (default: the targets vocabulary's ``vocab_size - 1``) and descend.
    Other features pass through to every chunk.
    """
    _check_params(noise_density, mean_noise_span_length)
    lengths = dict(sequence_length or {})
    inputs_length = lengths.get("inputs") or DEFAULT_INPUTS_LENGTH
    chunk = tokens_length_for(
        inputs_length, lengths.get("targets"), noise_density, mean_noise_span_length
    )
    if first_sentinel_id is None:
        if "targets" not in output_features:
            raise ValueError(
                "span_corruption needs a 'targets' output feature (its vocabulary supplies the "
                f"sentinels); the task declares {sorted(output_features)}"
            )
        first_sentinel_id = output_features["targets"].vocabulary.vocab_size - 1
    dataset = split_tokens(dataset, chunk, feature_key)
    return _corrupt_example(
        dataset,
        feature_key=feature_key,
        first_sentinel_id=int(first_sentinel_id),
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )

"""seqio preprocessors that turn source examples into the two task formats.

Source examples (built by :mod:`mtl_jax.data.tasks` from canonical records) hold the task's text
fields as strings, ``label`` as the int32 ClassLabel id, and the pass-through features ``task``
(head name), ``language`` and, for WPR, ``query_id``. From there:

- text-to-text (mT5): :func:`t2t_tokenize` writes and tokenizes
  ``inputs = "{prefix}: {field}: {value} {field}: {value}"`` (field values cut longest first to the
  input length) and ``targets = label name``; then ``seqio.preprocessors.append_eos_after_trim``.
- classification (XLM-R): :func:`cls_text` writes ``text`` / ``text_pair`` (several fields joined by
  one space, e.g. WPR page title + snippet); :func:`tokenize_strings` encodes them without special
  tokens (the converter adds ``<s> a </s></s> b </s>``); ``label`` passes through.
- mC4: :func:`text_to_targets` then tokenization, span corruption and EOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf


def _join_fields(features: Mapping[str, tf.Tensor], fields: Sequence[str]) -> tf.Tensor:
    if not fields:
        return tf.constant("", tf.string)
    return tf.strings.reduce_join(tf.stack([features[f] for f in fields]), separator=" ")


def longest_first_tf(lengths: tf.Tensor, budget: tf.Tensor | int) -> tf.Tensor:
    """:func:`mtl_jax.data.converters.longest_first` on an int32 vector, inside tf.data."""
    lengths = tf.cast(lengths, tf.int32)
    budget = tf.maximum(tf.cast(budget, tf.int32), 0)
    k = lengths.shape[0]
    # Longest first, the later text first on a tie (the order extra tokens are handed out in).
    order = tf.argsort(lengths * (k + 1) + tf.range(k), direction="DESCENDING", stable=True)
    desc = tf.concat([tf.gather(lengths, order), [0]], 0)
    rest = tf.math.cumsum(desc, reverse=True)  # rest[j] = sum(desc[j:])
    j = tf.range(1, k + 1)
    thresholds = tf.math.floordiv(budget - rest[1:], j)
    first_valid = tf.argmax(tf.cast(thresholds >= desc[1:], tf.int32), output_type=tf.int32)
    threshold = thresholds[first_valid]
    kept = tf.minimum(lengths, threshold)
    rank = tf.math.invert_permutation(order)  # position of each text in ``order``
    kept += tf.cast(rank < budget - tf.reduce_sum(kept), tf.int32)
    return tf.where(tf.reduce_sum(lengths) <= budget, lengths, kept)


def t2t_tokenize(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    *,
    prefix: str,
    fields: Sequence[str],
    label_names: Sequence[str],
    target_feature: str | None = None,
) -> tf.data.Dataset:
    """``inputs`` = ``"{prefix}: {field}: {value} {field}: {value} ..."`` tokenized, ``targets`` =
    the label name tokenized (no EOS), both with ``*_pretokenized`` copies.

    When the text is longer than ``sequence_length['inputs']`` (less EOS), the field values are
    cut longest first (:func:`longest_first_tf`), not the end of the text: a short field after a
    long one (CTKFacts' claim after its evidence, XNLI's hypothesis after the premise) keeps its
    tokens. Each piece is tokenized on its own; pieces meet at a space, which SentencePiece never
    merges across, so an untruncated ``inputs`` equals the tokenization of the joined text.
    Without a sequence length (inspection, statistics) nothing is cut. ``target_feature``
    names a string feature that is the target text instead of a label name (regression).
    """
    in_feature, out_feature = output_features["inputs"], output_features["targets"]
    heads = [f"{prefix}: {fields[0]}:"] + [f"{name}:" for name in fields[1:]]
    head_ids = [tf.constant(in_feature.vocabulary.encode(h), tf.int32) for h in heads]
    length = (sequence_length or {}).get("inputs")
    budget = None
    if length is not None:
        budget = int(length) - int(in_feature.add_eos) - sum(len(h) for h in head_ids)
    names = tf.constant(list(label_names) or [""], tf.string)

    @seqio.map_over_dataset
    def fn(ex):
        out = {k: v for k, v in ex.items() if k not in fields}
        values = [in_feature.vocabulary.encode_tf(ex[name]) for name in fields]
        if budget is not None:
            kept = longest_first_tf(tf.stack([tf.size(v) for v in values]), budget)
            values = [v[: kept[i]] for i, v in enumerate(values)]
        pieces: list[tf.Tensor] = []
        text: list[tf.Tensor | str] = []
        for i, name in enumerate(fields):
            pieces += [head_ids[i], tf.cast(values[i], tf.int32)]
            text += [heads[i] + " ", ex[name], " "]
        out["inputs_pretokenized"] = tf.strings.join(text[:-1])
        out["inputs"] = tf.concat(pieces, 0)
        if target_feature is not None:
            out["targets_pretokenized"] = ex[target_feature]
            out.pop(target_feature, None)
        else:
            out["targets_pretokenized"] = tf.gather(names, ex["label"])
        out["targets"] = tf.cast(out_feature.vocabulary.encode_tf(out["targets_pretokenized"]),
                                 tf.int32)
        return out

    return fn(dataset)


def cls_text(
    dataset: tf.data.Dataset, *, text_fields: Sequence[str], pair_fields: Sequence[str]
) -> tf.data.Dataset:
    """``text`` / ``text_pair`` = the given fields joined by one space (pair empty if none)."""
    used = set(text_fields) | set(pair_fields)

    @seqio.map_over_dataset
    def fn(ex):
        out = {k: v for k, v in ex.items() if k not in used}
        out["text"] = _join_fields(ex, text_fields)
        out["text_pair"] = _join_fields(ex, pair_fields)
        return out

    return fn(dataset)


@seqio.map_over_dataset
def text_to_targets(ex):
    """mC4: the document ``text`` becomes ``targets`` (span corruption reads ``targets``)."""
    out = {k: v for k, v in ex.items() if k != "text"}
    out["targets"] = ex["text"]
    return out


def tokenize_strings(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    copy_pretokenized: bool = True,
) -> tf.data.Dataset:
    """``seqio.preprocessors.tokenize`` restricted to string features (``label`` is an int feature).

    Keeps ``{key}_pretokenized`` copies (inspection decodes them); never appends EOS.
    """
    string_features = {
        k: f
        for k, f in output_features.items()
        if dataset.element_spec.get(k) is not None and dataset.element_spec[k].dtype == tf.string
    }
    return seqio.preprocessors.tokenize(
        dataset, string_features, copy_pretokenized=copy_pretokenized, with_eos=False
    )

"""seqio preprocessors that turn source examples into the two task formats.

Source examples (built by :mod:`mtl_jax.data.tasks` from canonical records) hold the task's text
fields as strings, ``label`` as the int32 ClassLabel id, and the pass-through features ``task``
(head name), ``language`` and, for WPR, ``query_id``. From there:

- text-to-text (mT5): :func:`t2t_text` writes ``inputs = "{prefix}: {field}: {value} {field}: {value}"``
  and ``targets = label name``; then :func:`tokenize_strings` and
  ``seqio.preprocessors.append_eos_after_trim``.
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


def t2t_text(
    dataset: tf.data.Dataset,
    *,
    prefix: str,
    fields: Sequence[str],
    label_names: Sequence[str],
) -> tf.data.Dataset:
    """``inputs`` = ``"{prefix}: {field}: {value} ..."`` over ``fields`` in order; ``targets`` = label name."""
    names = tf.constant(list(label_names), tf.string)

    @seqio.map_over_dataset
    def fn(ex):
        parts: list[tf.Tensor | str] = [f"{prefix}: "]
        for i, name in enumerate(fields):
            parts += [f"{' ' if i else ''}{name}: ", ex[name]]
        out = {k: v for k, v in ex.items() if k not in fields}
        out["inputs"] = tf.strings.join(parts)
        out["targets"] = tf.gather(names, ex["label"])
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

"""NumPy feature converters: task examples -> fixed-shape model batches (mtl_jax/features.py).

Pure NumPy on purpose: the converters run on examples already pulled out of tf.data, one at a
time, so the batch iterator can decide per example whether it still fits (packing) without
consuming it; that is what keeps the iterator's saved position exact.

A converter makes a :class:`BatchBuilder` for one batch; ``builder.add(example)`` returns False
(and leaves the builder unchanged) when the example does not fit any more, ``builder.build()``
returns the batch. Rows never filled stay all-padding (zero loss weight / zero attention mask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from mtl_jax import features as F

# The string feature every example carries (the head name, see the mtl_jax.data.tasks docstring).
TASK_FEATURE = "task"



def task_id_map(heads: Sequence[str]) -> dict[str, int]:
    """Head name -> task id (its index in the run's head list)."""
    heads = list(heads)
    if not heads:
        raise ValueError("the run's head list is empty: at least one head (task) name is needed")
    dupes = sorted({h for h in heads if heads.count(h) > 1})
    if dupes:
        raise ValueError(f"head list {heads} names {dupes} more than once")
    return {h: i for i, h in enumerate(heads)}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def example_task_id(example: Mapping[str, Any], task_ids: Mapping[str, int]) -> int:
    """The example's task id, from its ``task`` head name (or an explicit ``task_id``)."""
    if F.TASK_ID in example:
        tid = int(np.asarray(example[F.TASK_ID]))
        if not 0 <= tid < len(task_ids):
            raise ValueError(f"example has task_id {tid}, outside the head list {list(task_ids)}")
        return tid
    if TASK_FEATURE not in example:
        raise KeyError(
            f"example has no '{TASK_FEATURE}' feature (the head name; see the mtl_jax.data.tasks docstring); "
            f"it has {sorted(example)}"
        )
    name = _text(example[TASK_FEATURE])
    if name not in task_ids:
        raise KeyError(f"example's head '{name}' is not in the run's head list {list(task_ids)}")
    return task_ids[name]


def _tokens(example: Mapping[str, Any], key: str, required: bool = True) -> np.ndarray:
    if key not in example:
        if not required:
            return np.zeros([0], np.int32)
        where = _text(example[TASK_FEATURE]) if TASK_FEATURE in example else "?"
        raise KeyError(
            f"example of head '{where}' has no '{key}' feature; it has {sorted(example)}"
        )
    arr = np.asarray(example[key])
    if arr.ndim != 1:
        raise ValueError(f"feature '{key}' must be a 1-D token id sequence, got shape {arr.shape}")
    return arr.astype(np.int32, copy=False)


def _scalar(example: Mapping[str, Any], key: str) -> int:
    if key not in example:
        raise KeyError(f"passthrough feature '{key}' missing from example with {sorted(example)}")
    return int(np.asarray(example[key]))


class BatchBuilder(Protocol):
    """Fills one batch example by example."""

    def add(self, example: Mapping[str, Any]) -> bool:
        """Place the example, or return False (builder unchanged) when it no longer fits."""

    @property
    def num_examples(self) -> int:
        """Examples placed so far."""

    def build(self) -> dict[str, np.ndarray]:
        """The batch as a dict of NumPy arrays."""


class FeatureConverter(Protocol):
    """What :class:`mtl_jax.data.iterator.BatchIterator` needs from a converter."""

    heads: tuple[str, ...]
    pack: bool

    def builder(self, batch_size: int, sequence_length: Mapping[str, int]) -> BatchBuilder: ...

    def describe(self) -> dict[str, Any]: ...


def _convert_all(
    conv: FeatureConverter,
    examples: Iterable[Mapping[str, Any]],
    sequence_length: Mapping[str, int],
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    examples = list(examples)
    b = conv.builder(batch_size if batch_size is not None else len(examples), sequence_length)
    for i, ex in enumerate(examples):
        if not b.add(ex):
            raise ValueError(
                f"example {i} of {len(examples)} does not fit in a batch of {batch_size} rows"
            )
    return b.build()


def _length(sequence_length: Mapping[str, int], key: str, who: str) -> int:
    if key not in sequence_length or sequence_length[key] is None:
        raise KeyError(f"{who} needs sequence_length['{key}']; got {dict(sequence_length)}")
    n = int(sequence_length[key])
    if n < 1:
        raise ValueError(f"{who}: sequence_length['{key}'] must be >= 1, got {n}")
    return n


# ------------------------------------------------------------------ encoder-decoder (mT5)


@dataclasses.dataclass(frozen=True)
class EncDecConverter:
    """``{inputs, targets, task}`` -> T5X encoder-decoder features.

    Unpacked: one example per row, ``task_id`` [batch]. Packed (``pack=True``): examples are
    placed in order, each into the current row while both its inputs and its targets fit, else
    into the next row (seqio's in-order greedy packing); segment ids are 1-based per row (0 =
    padding), positions restart per segment, ``decoder_input_tokens`` restart with 0 per segment,
    and ``decoder_task_ids`` [batch, targets_length] give each target token its example's task id
    (0 on padding) instead of ``task_id``. Token id 0 is padding and the decoder start token.
    ``passthrough`` copies scalar integer features (e.g. WPR ``query_id``) into [batch] arrays
    (unpacked only; -1 on empty rows).
    """

    heads: tuple[str, ...]
    pack: bool = False
    passthrough: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        task_id_map(self.heads)
        if self.pack and self.passthrough:
            raise ValueError(
                f"passthrough features {self.passthrough} need one example per row: use pack=False"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "encdec",
            "heads": list(self.heads),
            "pack": self.pack,
            "passthrough": list(self.passthrough),
        }

    def builder(self, batch_size: int, sequence_length: Mapping[str, int]) -> _EncDecBuilder:
        return _EncDecBuilder(
            self,
            batch_size,
            _length(sequence_length, "inputs", "EncDecConverter"),
            _length(sequence_length, "targets", "EncDecConverter"),
        )

    def convert(
        self,
        examples: Iterable[Mapping[str, Any]],
        sequence_length: Mapping[str, int],
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """All examples into one batch (``batch_size`` rows, default one per example)."""
        return _convert_all(self, examples, sequence_length, batch_size)


class _EncDecBuilder:
    def __init__(self, conv: EncDecConverter, batch_size: int, inputs_len: int, targets_len: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._conv = conv
        self._task_ids = task_id_map(conv.heads)
        self._b, self._li, self._lt = batch_size, inputs_len, targets_len
        shape_i, shape_t = (batch_size, inputs_len), (batch_size, targets_len)
        self._enc = np.zeros(shape_i, np.int32)
        self._dec_in = np.zeros(shape_t, np.int32)
        self._dec_tgt = np.zeros(shape_t, np.int32)
        self._weights = np.zeros(shape_t, np.float32)
        if conv.pack:
            self._enc_seg = np.zeros(shape_i, np.int32)
            self._enc_pos = np.zeros(shape_i, np.int32)
            self._dec_seg = np.zeros(shape_t, np.int32)
            self._dec_pos = np.zeros(shape_t, np.int32)
            self._dec_task = np.zeros(shape_t, np.int32)
        else:
            self._task = np.zeros([batch_size], np.int32)
            self._extra = {k: np.full([batch_size], -1, np.int32) for k in conv.passthrough}
        self._row = 0  # current row
        self._segments = 0  # segments in the current row (packed)
        self._used_i = 0  # tokens used in the current row (packed)
        self._used_t = 0
        self._n = 0

    @property
    def num_examples(self) -> int:
        return self._n

    def add(self, example: Mapping[str, Any]) -> bool:
        inputs = _tokens(example, "inputs")[: self._li]
        targets = _tokens(example, "targets")[: self._lt]
        if inputs.size == 0 or targets.size == 0:
            raise ValueError(
                f"example of head '{_text(example.get(TASK_FEATURE, '?'))}' has empty "
                f"{'inputs' if inputs.size == 0 else 'targets'}; every example needs at least "
                "one token (EOS) on both sides"
            )
        tid = example_task_id(example, self._task_ids)
        if self._conv.pack:
            return self._add_packed(inputs, targets, tid)
        if self._row >= self._b:
            return False
        extras = {k: _scalar(example, k) for k in self._conv.passthrough}
        r = self._row
        self._write(r, 0, 0, inputs, targets)
        if targets.size < self._lt:
            # As seqio/T5X (shift of the padded row): the last target lands on the first pad
            # position, where the loss weight is 0.
            self._dec_in[r, targets.size] = targets[-1]
        self._task[r] = tid
        for k, v in extras.items():
            self._extra[k][r] = v
        self._row += 1
        self._n += 1
        return True

    def _add_packed(self, inputs: np.ndarray, targets: np.ndarray, tid: int) -> bool:
        if self._row >= self._b:
            return False
        fits = self._used_i + inputs.size <= self._li and self._used_t + targets.size <= self._lt
        if not fits:
            if self._row + 1 >= self._b:
                return False
            self._row += 1
            self._segments = self._used_i = self._used_t = 0
        r, oi, ot = self._row, self._used_i, self._used_t
        self._write(r, oi, ot, inputs, targets)
        self._segments += 1
        ni, nt = inputs.size, targets.size
        self._enc_seg[r, oi : oi + ni] = self._segments
        self._enc_pos[r, oi : oi + ni] = np.arange(ni)
        self._dec_seg[r, ot : ot + nt] = self._segments
        self._dec_pos[r, ot : ot + nt] = np.arange(nt)
        self._dec_task[r, ot : ot + nt] = tid
        self._used_i += ni
        self._used_t += nt
        self._n += 1
        return True

    def _write(self, r: int, oi: int, ot: int, inputs: np.ndarray, targets: np.ndarray) -> None:
        ni, nt = inputs.size, targets.size
        self._enc[r, oi : oi + ni] = inputs
        self._dec_tgt[r, ot : ot + nt] = targets
        # Teacher forcing: targets shifted right within the segment, 0 = decoder start.
        self._dec_in[r, ot] = 0
        self._dec_in[r, ot + 1 : ot + nt] = targets[:-1]
        self._weights[r, ot : ot + nt] = 1.0

    def build(self) -> dict[str, np.ndarray]:
        out = {
            F.ENCODER_INPUT_TOKENS: self._enc,
            F.DECODER_INPUT_TOKENS: self._dec_in,
            F.DECODER_TARGET_TOKENS: self._dec_tgt,
            F.DECODER_LOSS_WEIGHTS: self._weights,
        }
        if self._conv.pack:
            out.update(
                {
                    F.ENCODER_SEGMENT_IDS: self._enc_seg,
                    F.DECODER_SEGMENT_IDS: self._dec_seg,
                    F.ENCODER_POSITIONS: self._enc_pos,
                    F.DECODER_POSITIONS: self._dec_pos,
                    F.DECODER_TASK_IDS: self._dec_task,
                }
            )
        else:
            out[F.TASK_ID] = self._task
            out.update(self._extra)
        return out


# ------------------------------------------------------------ encoder classification (XLM-R)


def longest_first(lengths: Sequence[int], budget: int) -> list[int]:
    """Kept lengths of several texts cut to ``budget`` tokens in all, longest first.

    Only texts longer than a common threshold are cut, to the threshold, so a short text (a
    claim, a question) survives a long one (the evidence, a passage); what is left of the budget
    goes one token each to the longest of the cut texts (on a tie, to the later one). For two
    texts this is Hugging Face ``truncation="longest_first"`` as the ``tokenizers`` backend of
    transformers 5 computes it; :func:`mtl_jax.data.preprocessors.longest_first_tf` is the same
    rule inside tf.data.
    """
    lengths = [int(n) for n in lengths]
    if budget < 0:
        raise ValueError(f"no room for text: budget {budget} < 0")
    if any(n < 0 for n in lengths):
        raise ValueError(f"negative text length in {lengths}")
    if sum(lengths) <= budget:
        return lengths
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i), reverse=True)
    desc = [lengths[i] for i in order] + [0]
    for j in range(1, len(lengths) + 1):  # j texts are cut: the first j of ``order``
        threshold = (budget - sum(desc[j:])) // j
        if threshold >= desc[j]:
            break
    kept = [min(n, threshold) for n in lengths]
    for i in order[: budget - sum(kept)]:
        kept[i] += 1
    return kept


def xlmr_input_ids(
    text: Sequence[int],
    text_pair: Sequence[int] | None,
    max_length: int,
    bos_id: int = 0,
    eos_id: int = 2,
) -> list[int]:
    """``<s> a </s></s> b </s>`` (or ``<s> a </s>`` without a second text), cut to fit."""
    a = [int(t) for t in text]
    b = [] if text_pair is None else [int(t) for t in text_pair]
    if not b:
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for <s> </s>")
        return [bos_id, *a[: max_length - 2], eos_id]
    if max_length < 4:
        raise ValueError(f"max_length {max_length} leaves no room for <s> </s></s> </s>")
    na, nb = longest_first((len(a), len(b)), max_length - 4)
    return [bos_id, *a[:na], eos_id, eos_id, *b[:nb], eos_id]


@dataclasses.dataclass(frozen=True)
class ClassificationConverter:
    """``{text, text_pair, label, task}`` token ids (no specials) -> XLM-R classifier features.

    ``input_ids`` = ``<s> a </s></s> b </s>`` (``<s> a </s>`` when ``text_pair`` is absent or
    empty) cut longest-first to ``sequence_length['inputs']``, padded with ``pad_id``;
    ``attention_mask`` 1 on real tokens; ``token_type_ids`` zeros; ``labels``; ``task_id``.
    Special ids default to XLM-R's (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2). Empty rows have
    attention mask 0, label -1 and task id 0. A regression example's ``label`` is a float score:
    with ``regression`` (a run with a regression task) the batch holds ``regression_targets``
    (float32: those scores, 0 elsewhere); such rows have ``labels`` -1 (without ``regression``,
    e.g. when only predicting, the score is not put in the batch).

    ``siamese_heads``: heads whose two texts are encoded separately (the siamese cosine head of
    ``models.xlmr``): their rows hold ``<s> a </s>`` in ``input_ids`` and ``<s> b </s>`` in
    ``pair_input_ids`` / ``pair_attention_mask``, each cut to ``sequence_length['inputs']``.
    Every batch then carries the pair features (all padding on other heads' rows), so batch
    shapes do not depend on which tasks a batch holds.
    """

    heads: tuple[str, ...]
    bos_id: int = 0
    pad_id: int = 1
    eos_id: int = 2
    passthrough: tuple[str, ...] = ()
    regression: bool = False
    siamese_heads: tuple[str, ...] = ()
    pack: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        object.__setattr__(self, "siamese_heads", tuple(self.siamese_heads))
        task_id_map(self.heads)
        unknown = [h for h in self.siamese_heads if h not in self.heads]
        if unknown:
            raise ValueError(f"siamese heads {unknown} are not in the head list {list(self.heads)}")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "classification",
            "heads": list(self.heads),
            "special_ids": [self.bos_id, self.pad_id, self.eos_id],
            "passthrough": list(self.passthrough),
            **({"regression": True} if self.regression else {}),
            **({"siamese_heads": list(self.siamese_heads)} if self.siamese_heads else {}),
        }

    def builder(self, batch_size: int, sequence_length: Mapping[str, int]) -> _ClsBuilder:
        return _ClsBuilder(
            self, batch_size, _length(sequence_length, "inputs", "ClassificationConverter")
        )

    def convert(
        self,
        examples: Iterable[Mapping[str, Any]],
        sequence_length: Mapping[str, int],
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """All examples into one batch (``batch_size`` rows, default one per example)."""
        return _convert_all(self, examples, sequence_length, batch_size)


class _ClsBuilder:
    def __init__(self, conv: ClassificationConverter, batch_size: int, length: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._conv, self._b, self._len = conv, batch_size, length
        self._task_ids = task_id_map(conv.heads)
        self._ids = np.full((batch_size, length), conv.pad_id, np.int32)
        self._mask = np.zeros((batch_size, length), np.int32)
        self._labels = np.full([batch_size], -1, np.int32)
        self._task = np.zeros([batch_size], np.int32)
        self._extra = {k: np.full([batch_size], -1, np.int32) for k in conv.passthrough}
        self._scores = np.zeros([batch_size], np.float32) if conv.regression else None
        self._siamese = {self._task_ids[h] for h in conv.siamese_heads}
        if self._siamese:
            self._pair_ids = np.full((batch_size, length), conv.pad_id, np.int32)
            self._pair_mask = np.zeros((batch_size, length), np.int32)
        self._n = 0

    @property
    def num_examples(self) -> int:
        return self._n

    def add(self, example: Mapping[str, Any]) -> bool:
        if self._n >= self._b:
            return False
        c = self._conv
        if "label" not in example:
            raise KeyError(f"classification example has no 'label'; it has {sorted(example)}")
        tid = example_task_id(example, self._task_ids)
        extras = {k: _scalar(example, k) for k in c.passthrough}
        text, pair = _tokens(example, "text"), _tokens(example, "text_pair", required=False)
        r = self._n
        if tid in self._siamese:
            if pair.size == 0:
                raise ValueError(
                    f"example of siamese head '{c.heads[tid]}' has no 'text_pair': a siamese "
                    "head compares two texts"
                )
            pair_ids = xlmr_input_ids(pair, None, self._len, c.bos_id, c.eos_id)
            self._pair_ids[r, : len(pair_ids)] = pair_ids
            self._pair_mask[r, : len(pair_ids)] = 1
            pair = None
        ids = xlmr_input_ids(text, pair, self._len, c.bos_id, c.eos_id)
        self._ids[r, : len(ids)] = ids
        self._mask[r, : len(ids)] = 1
        label = np.asarray(example["label"])
        if label.dtype.kind == "f":  # a regression score: no class id
            if self._scores is not None:
                self._scores[r] = float(label)
            self._labels[r] = -1
        else:
            self._labels[r] = int(label)
        self._task[r] = tid
        for k, v in extras.items():
            self._extra[k][r] = v
        self._n += 1
        return True

    def build(self) -> dict[str, np.ndarray]:
        return {
            F.INPUT_IDS: self._ids,
            F.ATTENTION_MASK: self._mask,
            F.TOKEN_TYPE_IDS: np.zeros_like(self._ids),
            F.LABELS: self._labels,
            F.TASK_ID: self._task,
            **({F.REGRESSION_TARGETS: self._scores} if self._scores is not None else {}),
            **({F.PAIR_INPUT_IDS: self._pair_ids, F.PAIR_ATTENTION_MASK: self._pair_mask}
               if self._siamese else {}),
            **self._extra,
        }

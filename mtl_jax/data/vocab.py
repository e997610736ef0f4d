"""The two SentencePiece vocabularies of the project, as seqio vocabularies.

mT5 uses the T5 id layout (pad 0, eos 1, unk 2, 100 sentinel ids at the top of the vocabulary,
``<extra_id_0>`` the highest), which ``seqio.SentencePieceVocabulary`` implements already.
XLM-R uses fairseq's layout, which shifts every SentencePiece id by one to make room for
``<s>``/``<pad>``/``</s>``/``<unk>`` at 0..3 and appends ``<mask>``; ``XlmrVocabulary`` implements
that mapping on both the Python and the TensorFlow path so seqio preprocessing emits exactly the
ids a pretrained XLM-R checkpoint (and transformers' ``XLMRobertaTokenizer``) expects.

Real runs point at a pretrained checkpoint directory in the Hugging Face layout (``spiece.model``
for mT5, ``sentencepiece.bpe.model`` for XLM-R) or at the ``.model`` file itself; the demo uses the
small multilingual models committed under ``mtl_jax/data/assets/`` (made by ``tools/make_vocab.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import sentencepiece as spm
import seqio
import tensorflow as tf
import tensorflow_text as tf_text
from sentencepiece import sentencepiece_model_pb2

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_T5_SPM = ASSETS_DIR / "demo_t5_spm.model"
DEMO_XLMR_SPM = ASSETS_DIR / "demo_xlmr_spm.model"

MT5_SPM_FILENAME = "spiece.model"
XLMR_SPM_FILENAME = "sentencepiece.bpe.model"
MT5_EXTRA_IDS = 100

VocabKind = Literal["mt5", "xlmr"]


def _resolve_spm_file(path: str | Path, filename: str, what: str) -> str:
    """A ``.model`` file path, or ``path/filename`` when ``path`` is a checkpoint directory."""
    path_str = str(path)
    if tf.io.gfile.isdir(path_str):
        candidate = path_str.rstrip("/") + "/" + filename
        if not tf.io.gfile.exists(candidate):
            raise FileNotFoundError(
                f"{what}: directory {path_str!r} has no {filename!r} (expected the Hugging Face "
                f"checkpoint layout, i.e. {candidate!r}); pass the directory of a pretrained "
                f"checkpoint or the SentencePiece .model file itself"
            )
        return candidate
    if not tf.io.gfile.exists(path_str):
        raise FileNotFoundError(
            f"{what}: no such file or directory {path_str!r} (expected a SentencePiece model "
            f"file, or a checkpoint directory containing {filename!r})"
        )
    return path_str


def _read_model_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return sentencepiece_model_pb2.ModelProto.FromString(data)
    except Exception as e:  # protobuf raises DecodeError subclasses that vary by version
        raise ValueError(f"{path!r} is not a SentencePiece model file: {e}") from e


def _has_sentinels(proto: sentencepiece_model_pb2.ModelProto) -> bool:
    pieces = {p.piece for p in proto.pieces}
    return "<extra_id_0>" in pieces or "▁<extra_id_0>" in pieces


def mt5_vocabulary(
    path: str | Path, extra_ids: int = MT5_EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
    """The mT5 vocabulary from ``spiece.model`` (or a checkpoint directory holding it).

    The file must use the T5 layout (pad 0, eos 1, unk 2). ``extra_ids`` sentinels are appended
    in reverse order so ``<extra_id_0>`` is the highest id, which is what T5/seqio span corruption
    assumes; a model file that already contains the sentinels gets none added.
    """
    file = _resolve_spm_file(path, MT5_SPM_FILENAME, "mT5 vocabulary")
    proto = _read_model_proto(file)
    spec = proto.trainer_spec
    if (spec.pad_id, spec.eos_id, spec.unk_id) != (0, 1, 2):
        raise ValueError(
            f"mT5 vocabulary {file!r} has pad/eos/unk ids {spec.pad_id}/{spec.eos_id}/"
            f"{spec.unk_id}; the T5 layout needs 0/1/2 (is this an XLM-R model? use "
            f"xlmr_vocabulary)"
        )
    if _has_sentinels(proto):
        extra_ids = 0
    return seqio.SentencePieceVocabulary(file, extra_ids=extra_ids)


class XlmrVocabulary(seqio.Vocabulary):
    """XLM-R's fairseq id layout on top of a SentencePiece model.

    fairseq ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, SentencePiece piece ``i`` (i >= 3)
    -> ``i + 1``, SentencePiece's own unk (id 0) -> 3, ``<mask>`` = the last id (piece count + 1).
    Encoding never adds ``<s>``/``</s>``: the classification converter adds the pair template.
    """

    FAIRSEQ_OFFSET = 1
    BOS_ID = 0
    PAD_ID = 1
    EOS_ID = 2
    UNK_ID = 3

    def __init__(self, sentencepiece_model_file: str):
        self._file = sentencepiece_model_file
        self._proc: spm.SentencePieceProcessor | None = None
        self._serialized: bytes | None = None
        self._tf_tok = None
        super().__init__(extra_ids=0)

    # Gin deep-copies configurables' arguments: keep the pickled state to the file name.
    def __getstate__(self) -> dict:
        return {"_file": self._file, "_extra_ids": self._extra_ids}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._proc = None
        self._serialized = None
        self._tf_tok = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XlmrVocabulary) and self.sp_model == other.sp_model

    def __hash__(self) -> int:
        return hash(self.sp_model)

    def __str__(self) -> str:
        return f"XlmrVocabulary(file={self._file}, vocab_size={self.vocab_size})"

    @property
    def sentencepiece_model_file(self) -> str:
        return self._file

    @property
    def sp_model(self) -> bytes:
        if self._serialized is None:
            proto = _read_model_proto(self._file)
            spec = proto.trainer_spec
            if spec.unk_id != 0 or spec.bos_id != 1 or spec.eos_id != 2:
                raise ValueError(
                    f"XLM-R vocabulary {self._file!r} has unk/bos/eos ids {spec.unk_id}/"
                    f"{spec.bos_id}/{spec.eos_id}; the fairseq mapping needs the SentencePiece "
                    f"defaults 0/1/2 (is this an mT5 model? use mt5_vocabulary)"
                )
            self._serialized = proto.SerializeToString()
        return self._serialized

    @property
    def tokenizer(self) -> spm.SentencePieceProcessor:
        if self._proc is None:
            proc = spm.SentencePieceProcessor()
            proc.LoadFromSerializedProto(self.sp_model)
            self._proc = proc
        return self._proc

    @property
    def tf_tokenizer(self) -> tf_text.SentencepieceTokenizer:
        if self._tf_tok is None:
            self._tf_tok = tf_text.SentencepieceTokenizer(model=self.sp_model)
        return self._tf_tok

    @property
    def bos_id(self) -> int:
        return self.BOS_ID

    @property
    def pad_id(self) -> int:
        return self.PAD_ID

    @property
    def eos_id(self) -> int:
        return self.EOS_ID

    @property
    def unk_id(self) -> int:
        return self.UNK_ID

    @property
    def mask_id(self) -> int:
        return self.tokenizer.GetPieceSize() + self.FAIRSEQ_OFFSET

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.GetPieceSize() + self.FAIRSEQ_OFFSET + 1  # + <mask>

    # --- id mapping -----------------------------------------------------------------------
    # SentencePiece's control pieces (<s>, </s>, ids 1 and 2) detokenize to nothing, so every
    # fairseq special id is sent there when decoding; the unk id goes to SentencePiece's unk.

    def _encode(self, s: str) -> list[int]:
        return [
            self.UNK_ID if i == 0 else i + self.FAIRSEQ_OFFSET
            for i in self.tokenizer.EncodeAsIds(s)
        ]

    def _to_spm_ids(self, ids: list[int]) -> list[int]:
        out = []
        for i in ids:
            i = int(i)
            if i == self.UNK_ID:
                out.append(0)
            elif i <= self.EOS_ID or i >= self.mask_id:
                out.append(1)
            else:
                out.append(i - self.FAIRSEQ_OFFSET)
        return out

    def _decode(self, ids) -> str:
        return self.tokenizer.DecodeIds(self._to_spm_ids(list(ids)))

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        ids = self.tf_tokenizer.tokenize(s)

        def shift(x: tf.Tensor) -> tf.Tensor:
            return tf.where(
                tf.equal(x, 0), tf.constant(self.UNK_ID, x.dtype), x + self.FAIRSEQ_OFFSET
            )

        if isinstance(ids, tf.RaggedTensor):
            return tf.ragged.map_flat_values(shift, ids)
        return shift(ids)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids) if not isinstance(ids, tf.RaggedTensor) else ids

        def unshift(x: tf.Tensor) -> tf.Tensor:
            x = tf.cast(x, tf.int32)
            special = tf.logical_or(
                tf.less_equal(x, self.EOS_ID), tf.greater_equal(x, self.mask_id)
            )
            spm_ids = tf.where(tf.equal(x, self.UNK_ID), 0, x - self.FAIRSEQ_OFFSET)
            return tf.where(special, 1, spm_ids)

        if isinstance(ids, tf.RaggedTensor):
            return self.tf_tokenizer.detokenize(tf.ragged.map_flat_values(unshift, ids))
        return self.tf_tokenizer.detokenize(unshift(ids))


def xlmr_vocabulary(path: str | Path) -> XlmrVocabulary:
    """The XLM-R vocabulary from ``sentencepiece.bpe.model`` (or a checkpoint directory holding it)."""
    vocab = XlmrVocabulary(_resolve_spm_file(path, XLMR_SPM_FILENAME, "XLM-R vocabulary"))
    _ = vocab.sp_model  # validate the id layout now, not at the first encode inside a tf.data map
    return vocab


def load_vocabulary(kind: VocabKind, path: str | Path) -> seqio.Vocabulary:
    """``mt5_vocabulary`` or ``xlmr_vocabulary`` by name (for config edges that carry a string)."""
    if kind == "mt5":
        return mt5_vocabulary(path)
    if kind == "xlmr":
        return xlmr_vocabulary(path)
    raise ValueError(f"unknown vocabulary kind {kind!r}; expected 'mt5' or 'xlmr'")


def demo_vocabulary(kind: VocabKind) -> seqio.Vocabulary:
    """The committed demo vocabulary of ``kind`` (trained by tools/make_vocab.py on sample text)."""
    demo = {"mt5": DEMO_T5_SPM, "xlmr": DEMO_XLMR_SPM}
    if kind not in demo:
        raise ValueError(f"unknown vocabulary kind {kind!r}; expected 'mt5' or 'xlmr'")
    if not demo[kind].is_file():
        raise FileNotFoundError(
            f"demo {kind} vocabulary {str(demo[kind])!r} is missing; regenerate it with "
            f"`python tools/make_vocab.py`"
        )
    return load_vocabulary(kind, demo[kind])

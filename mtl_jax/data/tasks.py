"""The seqio Task registry: every (dataset, language) pair in both formats, XNLI_mix, CTKFacts, mC4.

Naming (one scheme; per-language evaluation = the per-language tasks):

- ``{dataset}_{format}_{lang}`` with format ``t2t`` (mT5 text-to-text) or ``cls`` (XLM-R
  classification), e.g. ``xnli_t2t_de``, ``wpr_cls_zh``, ``ctkfacts_nli_t2t_cs``,
  ``ctkfacts_xnli_cls_cs``; a task has the splits its language has in the data table.
- ``xnli_mix_t2t`` / ``xnli_mix_cls``: train only (see :func:`mtl_jax.data.sources.load_xnli_mix`).
- ``mc4_t2t_{lang}``: span corruption of mC4 text, train and validation.

Every example carries ``task`` (the head: ``xnli``, ``pawsx``, ``nc``, ``qadsm``, ``qam``, ``wpr``,
``ctkfacts_nli``, ``mc4``; ``ctkfacts_xnli`` uses ``xnli``) and ``language``; WPR examples carry
``query_id``. Tasks read their source (:mod:`mtl_jax.data.sources`) and their vocabulary
(:func:`set_vocabulary`) when a dataset is built, not at registration, so both can be changed
after import. All tasks are registered when this module is imported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import seqio
import tensorflow as tf

from mtl_jax.data import formats, preprocessors, sources

TaskFormat = Literal["t2t", "cls"]
FORMATS: tuple[TaskFormat, ...] = ("t2t", "cls")
MIX_LANGUAGE = "mix"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a dataset's canonical records become task examples (fields, labels, head, metrics)."""

    name: str  # dataset key of the task names (e.g. "ctkfacts_xnli")
    source: str  # dataset key of the source (e.g. "ctkfacts_nli")
    head: str
    prefix: str
    fields: tuple[tuple[str, str], ...]  # (name shown in t2t text, canonical record field)
    text_fields: tuple[str, ...]  # cls `text` (names from `fields`)
    pair_fields: tuple[str, ...]  # cls `text_pair`
    label_field: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    label_map: Mapping[str, str] | None = None  # source label name -> task label name

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


_CTK_METRICS = ("macro_f1", "micro_f1", "accuracy")

DATASET_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("xnli", "xnli", "xnli", "xnli", _same("premise", "hypothesis"),
                    ("premise",), ("hypothesis",), "label", formats.XNLI_LABELS, ("accuracy",)),
        DatasetSpec("pawsx", "pawsx", "pawsx", "pawsx", _same("sentence1", "sentence2"),
                    ("sentence1",), ("sentence2",), "label", formats.PAWSX_LABELS, ("accuracy",)),
        DatasetSpec("nc", "nc", "nc", "nc", _same("news_title", "news_body"),
                    ("news_title",), ("news_body",), "news_category", formats.NC_LABELS,
                    ("accuracy",)),
        DatasetSpec("qadsm", "qadsm", "qadsm", "qadsm", _same("query", "ad_title", "ad_description"),
                    ("query",), ("ad_title", "ad_description"), "relevance_label",
                    formats.QADSM_LABELS, ("accuracy",)),
        DatasetSpec("qam", "qam", "qam", "qam", _same("question", "answer"),
                    ("question",), ("answer",), "label", formats.QAM_LABELS, ("accuracy",)),
        DatasetSpec("wpr", "wpr", "wpr", "wpr",
                    _same("query", "web_page_title", "web_page_snippet"),
                    ("query",), ("web_page_title", "web_page_snippet"), "relavance_label",
                    formats.WPR_LABELS, ("ndcg",)),
        DatasetSpec("ctkfacts_nli", "ctkfacts_nli", "ctkfacts_nli", "ctkfacts_nli",
                    _same("evidence", "claim"), ("evidence",), ("claim",), "label",
                    formats.CTKFACTS_LABELS, _CTK_METRICS),
        # The XNLI reformulation: evidence -> premise, claim -> hypothesis, XNLI head and prefix.
        DatasetSpec("ctkfacts_xnli", "ctkfacts_nli", "xnli", "xnli",
                    (("premise", "evidence"), ("hypothesis", "claim")), ("premise",),
                    ("hypothesis",), "label", formats.XNLI_LABELS, _CTK_METRICS,
                    label_map={"SUPPORTS": "entailment", "NOT ENOUGH INFO": "neutral",
                               "REFUTES": "contradiction"}),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a registered task is, without building it (for listings, mixtures and evaluation)."""

    name: str
    dataset: str  # "xnli", ..., "ctkfacts_xnli", "xnli_mix", "mc4"
    source_dataset: str  # whose source it reads ("ctkfacts_xnli" -> "ctkfacts_nli")
    format: TaskFormat
    language: str  # "mix" for XNLI_mix
    languages: tuple[str, ...]
    splits: tuple[str, ...]
    head: str
    label_names: tuple[str, ...]  # ClassLabel order: the label id is the index
    metrics: tuple[str, ...]
    prefix: str | None = None
    fields: tuple[str, ...] = ()  # t2t input fields in order
    text_fields: tuple[str, ...] = ()
    pair_fields: tuple[str, ...] = ()
    kind: Literal["classification", "regression", "span_corruption"] = "classification"
    group_field: str | None = None  # per-example group id for ranking metrics (WPR: "query_id")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def label_id(self, value: int | str) -> int:
        """A label id from an id or a label name; -1 for a name outside the label set."""
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, str):
            return self.label_names.index(value) if value in self.label_names else -1
        return int(value)


_TASK_INFOS: dict[str, TaskInfo] = {}


def _splits_for(dataset: str, language: str) -> tuple[str, ...]:
    table = sources.SPLIT_LANGUAGES[dataset]
    return tuple(s for s in sources.SPLITS if language in table.get(s, ()))


def _build_task_infos() -> dict[str, TaskInfo]:
    infos: dict[str, TaskInfo] = {}

    def classification(
        spec: DatasetSpec,
        fmt: TaskFormat,
        name: str,
        language: str,
        languages: tuple[str, ...],
        splits: tuple[str, ...],
        dataset: str,
    ) -> None:
        infos[name] = TaskInfo(
            name=name, dataset=dataset, source_dataset=spec.source, format=fmt,
            language=language, languages=languages, splits=splits, head=spec.head,
            label_names=spec.label_names, metrics=spec.metrics, prefix=spec.prefix,
            fields=spec.field_names, text_fields=spec.text_fields, pair_fields=spec.pair_fields,
            group_field="query_id" if spec.source == "wpr" else None,
        )  # fmt: skip

    for spec in DATASET_SPECS.values():
        table = sources.SPLIT_LANGUAGES[spec.source]
        languages = sorted({lang for langs in table.values() for lang in langs})
        for lang in languages:
            for fmt in FORMATS:
                name = f"{spec.name}_{fmt}_{lang}"
                classification(
                    spec, fmt, name, lang, (lang,), _splits_for(spec.source, lang), spec.name
                )
    for fmt in FORMATS:
        classification(DATASET_SPECS["xnli"], fmt, f"xnli_mix_{fmt}", MIX_LANGUAGE,
                       sources.XNLI_LANGUAGES, ("train",), "xnli_mix")  # fmt: skip
    for lang in sources.MC4_LANGUAGES:
        name = f"mc4_t2t_{lang}"
        infos[name] = TaskInfo(
            name=name, dataset="mc4", source_dataset="mc4", format="t2t", language=lang,
            languages=(lang,), splits=_splits_for("mc4", lang), head="mc4", label_names=(),
            metrics=(), kind="span_corruption",
        )  # fmt: skip
    return infos


def task_info(name: str) -> TaskInfo:
    if name not in _TASK_INFOS:
        raise KeyError(
            f"unknown task {name!r}; {len(_TASK_INFOS)} tasks are registered (see all_task_infos())"
        )
    return _TASK_INFOS[name]


def all_task_infos() -> list[TaskInfo]:
    return list(_TASK_INFOS.values())


def task_name(dataset: str, fmt: TaskFormat, language: str) -> str:
    """The registered name of (dataset, format, language); checks that it exists."""
    if dataset == "xnli_mix":
        name = f"xnli_mix_{fmt}"
    else:
        name = f"{dataset}_{fmt}_{language}"
    task_info(name)
    return name


# --------------------------------------------------------------------------- vocabularies

_VOCAB_SETTING: dict[str, seqio.Vocabulary | str | Path | None] = {"t2t": None, "cls": None}
_VOCAB_RESOLVED: dict[str, seqio.Vocabulary] = {}
_VOCAB_KIND = {"t2t": "mt5", "cls": "xlmr"}


def set_vocabulary(fmt: TaskFormat, vocabulary: seqio.Vocabulary | str | Path | None) -> None:
    """The vocabulary of every ``fmt`` task: a seqio vocabulary, a ``.model`` file or a checkpoint
    directory (HF layout: ``spiece.model`` for t2t/mT5, ``sentencepiece.bpe.model`` for cls/XLM-R),
    or None for the committed demo vocabulary. Paths are resolved at first use.
    """
    if fmt not in _VOCAB_SETTING:
        raise ValueError(f"unknown task format {fmt!r}; expected one of {FORMATS}")
    _VOCAB_SETTING[fmt] = vocabulary
    _VOCAB_RESOLVED.pop(fmt, None)


def get_vocabulary(fmt: TaskFormat) -> seqio.Vocabulary:
    """The concrete vocabulary ``fmt`` tasks use now (resolving a path or the demo default)."""
    if fmt not in _VOCAB_RESOLVED:
        from mtl_jax.data import vocab as vocab_lib

        setting = _VOCAB_SETTING[fmt]
        kind = _VOCAB_KIND[fmt]
        if setting is None:
            resolved = vocab_lib.demo_vocabulary(kind)
        elif isinstance(setting, seqio.Vocabulary):
            resolved = setting
        else:
            resolved = vocab_lib.load_vocabulary(kind, setting)
        # A vocabulary that caches its TF tokenizer must create it eagerly: one first built while
        # tracing a tf.data map would hold a graph tensor that the next task's map cannot use.
        with tf.init_scope():
            getattr(resolved, "tf_tokenizer", None)
        _VOCAB_RESOLVED[fmt] = resolved
    return _VOCAB_RESOLVED[fmt]


class FormatVocabulary(seqio.Vocabulary):
    """The vocabulary of a task format, looked up at use: tasks are registered once at import,
    while a run chooses its pretrained checkpoint's vocabulary later (:func:`set_vocabulary`)."""

    def __init__(self, fmt: TaskFormat):
        super().__init__(extra_ids=0)
        self._fmt = fmt

    @property
    def format(self) -> TaskFormat:
        return self._fmt

    @property
    def resolved(self) -> seqio.Vocabulary:
        return get_vocabulary(self._fmt)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_fmt":
            raise AttributeError(name)
        return getattr(self.resolved, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FormatVocabulary) and other._fmt == self._fmt

    def __hash__(self) -> int:
        return hash(("FormatVocabulary", self._fmt))

    def __repr__(self) -> str:
        return f"FormatVocabulary({self._fmt!r})"

    @property
    def bos_id(self):
        return self.resolved.bos_id

    @property
    def eos_id(self):
        return self.resolved.eos_id

    @property
    def pad_id(self) -> int:
        return self.resolved.pad_id

    @property
    def unk_id(self):
        return self.resolved.unk_id

    @property
    def extra_ids(self) -> int:
        return self.resolved.extra_ids

    @property
    def vocab_size(self) -> int:
        return self.resolved.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolved._base_vocab_size

    def encode(self, s):
        return self.resolved.encode(s)

    def decode(self, ids):
        return self.resolved.decode(ids)

    def encode_tf(self, s):
        return self.resolved.encode_tf(s)

    def decode_tf(self, ids):
        return self.resolved.decode_tf(ids)

    def _encode(self, s):
        return self.resolved._encode(s)

    def _decode(self, ids):
        return self.resolved._decode(ids)

    def _encode_tf(self, s):
        return self.resolved._encode_tf(s)

    def _decode_tf(self, ids):
        return self.resolved._decode_tf(ids)


VOCABULARIES: dict[str, FormatVocabulary] = {fmt: FormatVocabulary(fmt) for fmt in FORMATS}


def output_features(info: TaskInfo) -> dict[str, seqio.Feature]:
    if info.format == "t2t":
        vocab = VOCABULARIES["t2t"]
        return {
            "inputs": seqio.Feature(vocab, add_eos=True),
            "targets": seqio.Feature(vocab, add_eos=True),
        }
    vocab = VOCABULARIES["cls"]
    return {
        "text": seqio.Feature(vocab, add_eos=False),
        "text_pair": seqio.Feature(vocab, add_eos=False),
        "label": seqio.Feature(
            seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32, rank=0
        ),
    }


# --------------------------------------------------------------------------- source examples


def _classification_example(spec: DatasetSpec, info: TaskInfo, record: dict, language: str) -> dict:
    example: dict = {"task": info.head, "language": language}
    for name, field in spec.fields:
        value = record[field]
        example[name] = formats.evidence_text(value) if field == "evidence" else str(value)
    label = record[spec.label_field]
    if spec.label_map is not None:
        label = spec.label_map[label]
    example["label"] = int(label) if isinstance(label, int) else spec.label_names.index(label)
    if spec.source == "wpr":
        example["query_id"] = int(record["query_id"])
    return example


def _feature_types(info: TaskInfo) -> dict[str, tf.DType]:
    types: dict[str, tf.DType] = {"task": tf.string, "language": tf.string}
    if info.kind == "span_corruption":
        types["text"] = tf.string
        return types
    types.update({name: tf.string for name in info.fields})
    types["label"] = tf.int32
    if info.source_dataset == "wpr":
        types["query_id"] = tf.int32
    return types


def source_examples(name: str, split: str, *, limit: int | None = None) -> Iterable[dict]:
    """The examples a task's data source yields for ``split`` (before its preprocessors).

    Read from the dataset's *current* source; a list, except a lazy iterator for hub mC4.
    """
    info = task_info(name)
    if split not in info.splits:
        raise KeyError(f"task {name!r} has no split {split!r}; it has {list(info.splits)}")
    if info.kind == "span_corruption":
        records = sources.iter_records("mc4", info.language, split, limit=limit)
        examples = ({"task": "mc4", "language": info.language, "text": r["text"]} for r in records)
        return examples if sources.get_source("mc4").kind == "hub" else list(examples)
    spec = DATASET_SPECS["xnli" if info.dataset == "xnli_mix" else info.dataset]
    if info.dataset == "xnli_mix":
        records = sources.load_xnli_mix(info.languages)
        out = [_classification_example(spec, info, r, r["language"]) for r in records]
    else:
        records = sources.iter_records(spec.source, info.language, split, limit=limit)
        out = [_classification_example(spec, info, r, info.language) for r in records]
    return out[:limit] if limit is not None else out


def _to_tf_dataset(examples: Iterable[dict], types: Mapping[str, tf.DType]) -> tf.data.Dataset:
    if isinstance(examples, list):
        columns = {
            k: tf.constant([ex[k] for ex in examples], dtype=dtype, shape=(len(examples),))
            for k, dtype in types.items()
        }
        return tf.data.Dataset.from_tensor_slices(columns)
    signature = {k: tf.TensorSpec((), dtype) for k, dtype in types.items()}
    return tf.data.Dataset.from_generator(
        lambda: ({k: ex[k] for k in types} for ex in examples), output_signature=signature
    )


class RecordsSource(seqio.DataSource):
    """A seqio DataSource over :func:`source_examples`: reads the configured source per call."""

    def __init__(self, task: str, splits: Sequence[str]):
        super().__init__(splits=splits, num_input_examples=None, caching_permitted=False)
        self._task = task
        self._counts: dict[tuple, int] = {}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        return [f"{self._task}:{split}"]

    def num_input_examples(self, split: str) -> int | None:
        """Counted from local/bundled files; None for hub sources (counting would download).

        seqio asks on every ``get_dataset``; counts are memoised per file version.
        """
        info = task_info(self._task)
        spec = sources.get_source(info.source_dataset)
        if spec.kind == "hub":
            return None
        languages = info.languages if info.dataset == "xnli_mix" else (info.language,)
        files = [
            p
            for lang in languages
            for p in sources.locate(info.source_dataset, lang, split, spec).paths
        ]
        key = (split, spec) + tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if key not in self._counts:
            self._counts[key] = len(source_examples(self._task, split))  # type: ignore[arg-type]
        return self._counts[key]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # Task.get_dataset shuffles
        info = task_info(self._task)
        get_vocabulary(info.format)  # resolve now: a bad path fails here, not inside a tf.data map
        ds = _to_tf_dataset(source_examples(self._task, split), _feature_types(info))
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


# --------------------------------------------------------------------------- registration


def _span_corruption(dataset, sequence_length, output_features):
    from mtl_jax.data.span_corruption import span_corruption

    return span_corruption(dataset, sequence_length, output_features)


def _preprocessors(info: TaskInfo) -> list[Callable]:
    if info.kind == "span_corruption":
        return [
            preprocessors.text_to_targets,
            preprocessors.tokenize_strings,
            _span_corruption,
            seqio.preprocessors.append_eos_after_trim,
        ]
    if info.format == "t2t":
        return [
            functools.partial(
                preprocessors.t2t_tokenize,
                prefix=info.prefix,
                fields=info.fields,
                label_names=info.label_names,
            ),  # fmt: skip
            seqio.preprocessors.append_eos_after_trim,
        ]
    return [
        functools.partial(
            preprocessors.cls_text, text_fields=info.text_fields, pair_fields=info.pair_fields
        ),
        preprocessors.tokenize_strings,
    ]


def _make_task(info: TaskInfo) -> seqio.Task:
    # Scoring lives in mtl_jax.evaluation (score_task), which the data layer does not import.
    return seqio.Task(
        info.name,
        source=RecordsSource(info.name, info.splits),
        output_features=output_features(info),
        preprocessors=_preprocessors(info),
    )


def register_all(
    vocabularies: Mapping[TaskFormat, seqio.Vocabulary | str | Path | None] | None = None,
) -> list[str]:
    """Register every task with seqio (idempotent); optionally set the format vocabularies first."""
    for fmt, vocab in (vocabularies or {}).items():
        set_vocabulary(fmt, vocab)
    if not _TASK_INFOS:
        _TASK_INFOS.update(_build_task_infos())
    registered = set(seqio.TaskRegistry.names())
    for info in _TASK_INFOS.values():
        if info.name not in registered:
            seqio.TaskRegistry.add_provider(info.name, _make_task(info))
    return list(_TASK_INFOS)


register_all()

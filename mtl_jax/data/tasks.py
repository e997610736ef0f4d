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
after import. Every dataset of :mod:`mtl_jax.data.registry` has its tasks made when it is
registered (the built-ins when this module is imported; a user's dataset whenever
``register_dataset`` is called). A regression example's ``label`` is its score (float32), and it
carries ``target_text``, the score on T5's 0.2 grid.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import seqio
import tensorflow as tf

from mtl_jax import labels as labels_lib
from mtl_jax.data import preprocessors, registry, sources

TaskFormat = Literal["t2t", "cls"]
FORMATS: tuple[TaskFormat, ...] = ("t2t", "cls")
MIX_LANGUAGE = "mix"


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


def task_infos_of(spec: registry.DatasetSpec) -> list[TaskInfo]:
    """The tasks of one dataset: ``{name}_{format}_{language}`` for every format and language,
    plus ``{mix_task}_{format}`` (train only, every train language) when the spec has one."""
    source = registry.dataset_spec(spec.read_from) if spec.read_from else spec
    infos: list[TaskInfo] = []

    def add(fmt: TaskFormat, name: str, language: str, languages: tuple[str, ...],
            splits: tuple[str, ...], dataset: str) -> None:
        infos.append(TaskInfo(
            name=name, dataset=dataset, source_dataset=source.name, format=fmt,
            language=language, languages=languages, splits=splits, head=spec.task_head,
            label_names=tuple(spec.label_names), metrics=tuple(spec.metrics),
            prefix=None if spec.kind == "span_corruption" else spec.task_prefix,
            fields=() if spec.kind == "span_corruption" else spec.field_names,
            text_fields=tuple(spec.text_fields), pair_fields=tuple(spec.pair_fields),
            kind=spec.kind, group_field=spec.group_field,
        ))  # fmt: skip

    for lang in spec.languages:
        for fmt in spec.formats:
            add(fmt, f"{spec.name}_{fmt}_{lang}", lang, (lang,), spec.splits_of(lang), spec.name)
    if spec.mix_task:
        train = tuple(spec.mix_languages or spec.splits.get("train", ()))
        for fmt in spec.formats:
            add(fmt, f"{spec.mix_task}_{fmt}", MIX_LANGUAGE, train, ("train",), spec.mix_task)
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
    if registry.find_mix_task(dataset) is not None:
        name = f"{dataset}_{fmt}"
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
        "label": seqio.Feature(  # a class id, or the score of a regression task
            seqio.PassThroughVocabulary(size=0), add_eos=False,
            dtype=tf.float32 if info.kind == "regression" else tf.int32, rank=0,
        ),
    }


# --------------------------------------------------------------------------- source examples


TARGET_TEXT = "target_text"  # t2t target of a regression example: the score on T5's 0.2 grid


def _text(value: object) -> str:
    """A field value as text: a list of paragraphs (CTKFacts evidence) joined by one space."""
    if isinstance(value, list):
        return " ".join(str(p).strip() for p in value)
    return str(value)


def _spec_of(info: TaskInfo) -> registry.DatasetSpec:
    spec = registry.find_mix_task(info.dataset) if info.language == MIX_LANGUAGE else None
    return spec or registry.dataset_spec(info.dataset)


def _classification_example(
    spec: registry.DatasetSpec, info: TaskInfo, record: dict, language: str
) -> dict:
    example: dict = {"task": info.head, "language": language}
    for name, field in spec.fields:
        example[name] = _text(record[field])
    label = record[spec.label_field]
    if spec.kind == "regression":
        example["label"] = float(label)  # the score: float32 for regression tasks
        example[TARGET_TEXT] = labels_lib.regression_target_text(float(label))
    else:
        if spec.read_from is not None and spec.label_map is not None:
            # Records of another dataset carry its label names: rename them (ctkfacts_xnli).
            # A dataset's own reader has renamed its labels already.
            label = spec.label_map[label]
        example["label"] = int(label) if isinstance(label, int) else spec.label_names.index(label)
    if spec.group_field is not None:
        example[spec.group_field] = int(record[spec.group_field])
    return example


def _feature_types(info: TaskInfo) -> dict[str, tf.DType]:
    types: dict[str, tf.DType] = {"task": tf.string, "language": tf.string}
    if info.kind == "span_corruption":
        types["text"] = tf.string
        return types
    types.update({name: tf.string for name in info.fields})
    types["label"] = tf.int32
    if info.kind == "regression":
        types["label"] = tf.float32
        types[TARGET_TEXT] = tf.string
    if info.group_field is not None:
        types[info.group_field] = tf.int32
    return types


def source_examples(name: str, split: str, *, limit: int | None = None) -> Iterable[dict]:
    """The examples a task's data source yields for ``split`` (before its preprocessors).

    Read from the dataset's *current* source; a list, except a lazy iterator for a streamed hub
    corpus (mC4).
    """
    info = task_info(name)
    if split not in info.splits:
        raise KeyError(f"task {name!r} has no split {split!r}; it has {list(info.splits)}")
    spec = _spec_of(info)
    if info.kind == "span_corruption":
        records = sources.iter_records(info.source_dataset, info.language, split, limit=limit)
        examples = (
            {"task": info.head, "language": info.language, "text": r["text"]} for r in records
        )
        return examples if sources.get_source(info.source_dataset).kind == "hub" else list(examples)
    if info.language == MIX_LANGUAGE:
        records = sources.load_mix(info.source_dataset, info.languages)
        out = [_classification_example(spec, info, r, r["language"]) for r in records]
    else:
        records = sources.iter_records(info.source_dataset, info.language, split, limit=limit)
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

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        return [f"{self._task}:{split}"]

    def num_input_examples(self, split: str) -> int | None:
        """Counted from local/bundled files; None for hub sources (counting would download).

        seqio asks on every ``get_dataset``: a count is read once per file version and kept in
        memory and on disk (``sources.cached_count``).
        """
        info = task_info(self._task)
        spec = sources.get_source(info.source_dataset)
        if spec.kind == "hub":
            return None
        files = [
            p
            for lang in info.languages
            for p in sources.locate(info.source_dataset, lang, split, spec).paths
        ]
        identity = (self._task, info.kind, info.languages, split, spec,
                    sources.files_identity(files))
        return sources.cached_count(
            identity, lambda: len(source_examples(self._task, split)))  # type: ignore[arg-type]

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
                target_feature=TARGET_TEXT if info.kind == "regression" else None,
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


_DATASET_TASKS: dict[str, list[str]] = {}


def _register_tasks(spec: registry.DatasetSpec) -> None:
    """Make (or remake) the seqio tasks of one dataset: called for every registered dataset."""
    _remove_tasks(spec.name)
    infos = task_infos_of(spec)
    for info in infos:
        _TASK_INFOS[info.name] = info
        seqio.TaskRegistry.remove(info.name)
        seqio.TaskRegistry.add_provider(info.name, _make_task(info))
    _DATASET_TASKS[spec.name] = [i.name for i in infos]


def _remove_tasks(dataset: str) -> None:
    for name in _DATASET_TASKS.pop(dataset, []):
        _TASK_INFOS.pop(name, None)
        seqio.TaskRegistry.remove(name)


def register_all(
    vocabularies: Mapping[TaskFormat, seqio.Vocabulary | str | Path | None] | None = None,
) -> list[str]:
    """Every registered dataset's tasks (made at registration); optionally set the format
    vocabularies first. Kept for callers that registered tasks explicitly."""
    for fmt, vocab in (vocabularies or {}).items():
        set_vocabulary(fmt, vocab)
    return list(_TASK_INFOS)


registry.on_register(_register_tasks, _remove_tasks)

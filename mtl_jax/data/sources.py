"""Where each dataset's rows come from: the Hugging Face hub, a local directory, or the bundled samples.

One setting per dataset (:func:`set_source`) chooses the source; the default is the bundled samples,
so nothing touches the network unless ``"hub"`` is chosen. Tasks read the setting when they build
a dataset (not when they are registered), so a run can point a dataset at a local copy of the
original release, or at the hub, after importing the task registry.

- ``SourceSpec("bundled")``: the project's generated samples in ``mtl_jax/data/assets/samples``,
  written in the original release formats and read by the same code as a local copy.
- ``SourceSpec("local", "/path")``: a directory in an original release layout (XTREME TSVs,
  XNLI 1.0 / XNLI-MT 1.0, the XGLUE ``xglue_full_dataset`` tree, the original PAWS-X ``x-final``
  tree, CTKFacts NLI ``{split}.jsonl`` or a raw CTKFacts export, allenai/c4 ``multilingual``
  shards). The layout is detected from the files present; see :func:`candidate_files`.
- ``SourceSpec("hub", "owner/name[@revision]")``: ``datasets.load_dataset`` on a repository
  that datasets 5.x can load without a loading script (defaults in :data:`HUB_IDS`).

Malformed rows raise :class:`~mtl_jax.data.formats.DataFormatError` unless the spec (or the call)
says ``on_bad_row="skip"``; skips are logged and counted (:func:`last_read_stats`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from mtl_jax.data import formats, registry
from mtl_jax.data.formats import DataFormatError, OnBadRow, ReadStats

log = logging.getLogger(__name__)

SourceKind = Literal["hub", "local", "bundled"]
SPLITS = ("train", "validation", "test")

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")  # fmt: skip
PAWSX_LANGUAGES = ("de", "en", "es", "fr", "ja", "ko", "zh")
NC_LANGUAGES = ("de", "en", "es", "fr", "ru")
QADSM_LANGUAGES = ("de", "en", "fr")
QAM_LANGUAGES = ("de", "en", "fr")
WPR_LANGUAGES = ("de", "en", "es", "fr", "it", "pt", "zh")
MC4_LANGUAGES = (
    "ar", "bg", "cs", "de", "el", "en", "es", "fr", "hi", "it",
    "ja", "ko", "pt", "ru", "sw", "th", "tr", "ur", "vi", "zh",
)  # fmt: skip


def _eval_splits(train: Sequence[str], evaluation: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The usual table: training data in ``train`` languages, validation and test in ``evaluation``."""
    return {"train": tuple(train), "validation": tuple(evaluation), "test": tuple(evaluation)}


def _source_specs() -> list[registry.DatasetSpec]:
    return [s for s in registry.all_specs() if s.read_from is None]


SPLIT_LANGUAGES: Mapping[str, Mapping[str, tuple[str, ...]]] = registry.RegistryView(
    lambda: {s.name: s.splits for s in _source_specs()}
)
"""dataset -> split -> the languages that split exists in (each dataset's spec, live)."""

DATASET_ALIASES: Mapping[str, str] = registry.RegistryView(
    lambda: {
        **{s.name: s.read_from for s in registry.all_specs() if s.read_from},
        **{s.mix_task: s.read_from or s.name for s in registry.all_specs() if s.mix_task},
    }
)
"""Task-level names that read another dataset's source (``ctkfacts_xnli``, ``xnli_mix``)."""

HUB_IDS: Mapping[str, str] = registry.RegistryView(
    lambda: {s.name: s.hub.repo for s in _source_specs() if s.hub is not None}
)
"""Default hub repositories, loadable by ``datasets`` 5.x without a loading script."""

SAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "samples"
BUNDLED_SUBDIRS: Mapping[str, str] = registry.RegistryView(
    lambda: {s.name: s.bundled for s in _source_specs() if s.bundled}
)


def __getattr__(name: str):
    if name == "DATASETS":  # every dataset with its own source, as registered now
        return tuple(s.name for s in _source_specs())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a dataset is read from.

    ``path``: the directory for ``local``; an optional ``owner/name[@revision]`` override of
    :data:`HUB_IDS` for ``hub``; unused for ``bundled``. ``on_bad_row``: ``"error"`` (default)
    raises on the first malformed row, ``"skip"`` drops and counts such rows.
    """

    kind: SourceKind = "bundled"
    path: str | None = None
    on_bad_row: OnBadRow = "error"

    def __post_init__(self) -> None:
        if self.kind not in ("hub", "local", "bundled"):
            raise ValueError(
                f"SourceSpec.kind must be 'hub', 'local' or 'bundled', got {self.kind!r}"
            )
        if self.kind == "local" and not self.path:
            raise ValueError("SourceSpec('local') needs the directory as `path`")
        if self.on_bad_row not in formats.ON_BAD_ROW_CHOICES:
            raise ValueError(
                f"SourceSpec.on_bad_row must be one of {formats.ON_BAD_ROW_CHOICES}, got {self.on_bad_row!r}"
            )


_SOURCES: dict[str, SourceSpec] = {}
_CACHE: dict[tuple, list[dict]] = {}
_CACHE_MAX = 64
_STATS: dict[tuple[str, str, str], ReadStats] = {}


def canonical_dataset(dataset: str) -> str:
    """The dataset whose source a (task-level) name reads; unknown names are a clear error."""
    return registry.source_dataset(dataset)


def parse_source(value: SourceSpec | str) -> SourceSpec:
    """``SourceSpec`` from a spec or a string: ``bundled``, ``hub``, ``hub:owner/name``, or a path."""
    if isinstance(value, SourceSpec):
        return value
    if value == "bundled":
        return SourceSpec("bundled")
    if value == "hub":
        return SourceSpec("hub")
    if value.startswith("hub:"):
        return SourceSpec("hub", value[len("hub:") :])
    return SourceSpec("local", value[len("local:") :] if value.startswith("local:") else value)


def set_source(dataset: str, spec: SourceSpec | str) -> SourceSpec:
    """Choose where ``dataset`` (or an alias such as ``ctkfacts_xnli``) is read from."""
    name = canonical_dataset(dataset)
    spec = parse_source(spec)
    _SOURCES[name] = spec
    _CACHE.clear()
    return spec


def get_source(dataset: str) -> SourceSpec:
    """The source set for ``dataset``, else its spec's default (bundled samples for built-ins)."""
    name = canonical_dataset(dataset)
    if name in _SOURCES:
        return _SOURCES[name]
    return parse_source(registry.dataset_spec(name).default_source)


def reset_sources() -> None:
    """Back to each dataset's default source (tests use this)."""
    _SOURCES.clear()
    _CACHE.clear()
    _STATS.clear()


def describe_source(dataset: str) -> str:
    """One line for listings, e.g. ``bundled (.../samples/xnli)`` or ``hub facebook/xnli``."""
    name = canonical_dataset(dataset)
    spec = get_source(name)
    if spec.kind == "hub":
        return f"hub {spec.path or _spec(name).hub.repo}"  # type: ignore[union-attr]
    return f"{spec.kind} ({_root(name, spec)})"


def last_read_stats(dataset: str, language: str, split: str) -> ReadStats | None:
    """Rows read / malformed rows skipped by the last read of (dataset, language, split)."""
    return _STATS.get((canonical_dataset(dataset), language, split))


def _spec(dataset: str) -> registry.DatasetSpec:
    return registry.dataset_spec(dataset)


def _where(dataset: str, language: str, split: str) -> str:
    return f"dataset {dataset!r} (language {language!r}, split {split!r})"


def _root(dataset: str, spec: SourceSpec) -> Path:
    if spec.kind == "bundled":
        bundled = _spec(dataset).bundled
        if bundled is None:
            raise FileNotFoundError(
                f"dataset {dataset!r} has no bundled samples; set its source to a directory "
                "or 'hub' (TrainConfig.sources)")
        return SAMPLES_DIR / bundled
    if spec.kind == "hub":
        raise ValueError(f"dataset {dataset!r} is read from the hub, not from files")
    return Path(spec.path).expanduser()  # type: ignore[arg-type]


def _check_language(dataset: str, language: str, split: str) -> None:
    splits = SPLIT_LANGUAGES[dataset]
    if split not in splits:
        raise KeyError(f"dataset {dataset!r} has no split {split!r}; it has {list(splits)}")
    if language not in splits[split]:
        raise KeyError(
            f"dataset {dataset!r} has no {split!r} data in language {language!r}; "
            f"{split} languages: {list(splits[split])}"
        )


# --------------------------------------------------------------------------- local layouts


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One place a split may live in a release layout, and how to read it.

    ``read(path, on_bad_row=..., stats=..., where=...)``; with ``multi_file`` it gets the tuple
    of paths (a sharded corpus such as mC4), else the one path.
    """

    paths: tuple[Path, ...]
    layout: str
    read: Callable[..., Iterator[dict]]
    multi_file: bool = False

    def exists(self) -> bool:
        return bool(self.paths) and all(p.is_file() for p in self.paths)


def dirs(root: Path, *subdirs: str) -> list[Path]:
    """``root`` and ``root/sub`` for each sub that is a directory (first = most specific)."""
    out = [root / s for s in subdirs if (root / s).is_dir()]
    return out + [root]


def _declared_candidates(
    spec: registry.DatasetSpec, root: Path, language: str, split: str
) -> list[Candidate]:
    """The one declared file of (language, split), read with the spec's column mapping."""
    files = spec.files
    assert files is not None
    path = files.path(root, language, split)
    fields = registry.record_fields(spec)
    columns = {field: files.column(field) for field in fields}

    def read(path, **kw):
        rows = formats.read_table(
            path, files.format, columns, header=files.header, delimiter=files.delimiter, **kw
        )
        return rows

    return [Candidate((path,), f"declared {files.format}", _with_records(spec, read))]


def _with_records(spec: registry.DatasetSpec, read: Callable[..., Iterator[dict]]):
    """A reader whose rows are checked and converted to the spec's records (label, text)."""

    def read_records(path, **kw):
        return read(path, convert=functools.partial(spec_record, spec), **kw)

    return read_records


def spec_record(spec: registry.DatasetSpec, row: dict) -> dict:
    """A declared row -> a canonical record: text fields as strings (non-blank), the label
    renamed and checked against the declared names, or a regression score as a float."""
    record = dict(row)
    for _, field in spec.fields:
        value = record[field]
        if value is None or (isinstance(value, float) and value != value):
            value = ""
        record[field] = value if isinstance(value, str | list) else str(value)
    for group in (spec.text_fields, spec.pair_fields):
        texts = [record[spec.record_field(f)] for f in group]
        if group and not any(
            (t.strip() if isinstance(t, str) else any(p.strip() for p in t)) for t in texts
        ):
            raise formats.RowError(
                f"empty text in field(s) {list(group)}; expected "
                + ("a non-empty text" if len(group) == 1 else "at least one of them non-empty")
            )
    raw = record[spec.label_field]
    if spec.kind == "regression":
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise formats.RowError(
                f"field {spec.label_field!r}: {raw!r} is not a number; expected a regression score"
            ) from None
        if score != score or score in (float("inf"), float("-inf")):
            raise formats.RowError(f"field {spec.label_field!r}: {raw!r} is not a finite score")
        record[spec.label_field] = score
        return record
    record[spec.label_field] = label_name(spec, raw)
    return record


def label_name(spec: registry.DatasetSpec, raw: object, *, class_names: Sequence[str] | None = None
               ) -> str:
    """A source label value -> its declared label name (a ClassLabel id read via ``class_names``);
    outside the declared set -> a bad row naming the field and the expected names."""
    value: object = raw
    if class_names is not None and isinstance(raw, int) and 0 <= raw < len(class_names):
        value = class_names[raw]
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if spec.label_map and text in spec.label_map:
        text = spec.label_map[text]
    if text not in spec.label_names:
        expected = sorted(set(spec.label_names) | set(spec.label_map or {}))
        raise formats.RowError(
            f"field {spec.label_field!r}: label {raw!r} is not a declared label; expected one "
            f"of {expected}"
        )
    return text


def candidate_files(dataset: str, root: Path, language: str, split: str) -> list[Candidate]:
    """Every release-layout location of (dataset, language, split) under ``root``, in search order."""
    spec = _spec(dataset)
    if spec.layout is not None:
        return spec.layout(root, language, split)
    if spec.files is not None:
        return _declared_candidates(spec, root, language, split)
    raise FileNotFoundError(f"dataset {dataset!r} declares no files (only a hub id)")


def locate(dataset: str, language: str, split: str, spec: SourceSpec | None = None) -> Candidate:
    """The first existing release file for (dataset, language, split) in a local/bundled source."""
    dataset = canonical_dataset(dataset)
    spec = spec or get_source(dataset)
    root = _root(dataset, spec)
    where = _where(dataset, language, split)
    if not root.exists():
        hint = " (run `python tools/make_samples.py`)" if spec.kind == "bundled" else ""
        raise FileNotFoundError(f"{where}: source directory {root} does not exist{hint}")
    candidates = candidate_files(dataset, root, language, split)
    for c in candidates:
        if c.exists():
            return c
    looked = sorted(
        {str(p) for c in candidates for p in c.paths}
        | {
            f"{c.layout}: no shard matching c4-{language}*.json.gz"
            for c in candidates
            if not c.paths
        }
    )
    raise FileNotFoundError(
        f"{where}: no file for this split under {root} ({spec.kind} source); looked for "
        + "; ".join(looked)
    )


def _with_groups(dataset: str, records: Iterator[dict]) -> Iterator[dict]:
    """Records with the spec's integer group id: the 0-based index of the ``group_from`` value in
    order of first appearance within one read (a file), unless the reader set it already."""
    spec = _spec(dataset)
    if spec.group_field is None or spec.group_from is None:
        yield from records
        return
    ids: dict[object, int] = {}
    for record in records:
        if spec.group_field not in record:
            key = record[spec.group_from]
            record[spec.group_field] = ids.setdefault(
                tuple(key) if isinstance(key, list) else key, len(ids))
        yield record


def _iter_local(
    dataset: str, language: str, split: str, spec: SourceSpec, on_bad_row: OnBadRow, *, cache: bool
) -> Iterator[dict]:
    """Records of a local/bundled file; parsed lists are memoised (keyed on file mtime and size)."""
    c = locate(dataset, language, split, spec)
    key = (dataset, language, split, on_bad_row) + files_identity(c.paths)
    if key in _CACHE:
        yield from (dict(r) for r in _CACHE[key])
        return
    stats = ReadStats(", ".join(str(p) for p in c.paths))
    _STATS[(dataset, language, split)] = stats
    where = _where(dataset, language, split)
    records = _with_groups(dataset, c.read(
        c.paths if c.multi_file else c.paths[0], where=where, on_bad_row=on_bad_row, stats=stats
    ))
    if not cache:  # e.g. the 15 XNLI-MT train sets of XNLI_mix: too big to keep twice
        yield from records
        return
    records = list(records)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = records
    yield from (dict(r) for r in records)


# --------------------------------------------------------------------------- hub


def _hub_id(dataset: str, spec: SourceSpec) -> tuple[str, str | None]:
    hub = _spec(dataset).hub
    if hub is None:
        raise ValueError(f"dataset {dataset!r} declares no hub id; it is read from files only")
    value = spec.path or hub.repo
    if Path(value).expanduser().is_dir():
        return str(Path(value).expanduser()), None
    repo, _, revision = value.partition("@")
    return repo, revision or None


def _load_hub_dataset(
    repo: str, config: str | None, split: str, revision: str | None, streaming: bool
):
    """``datasets.load_dataset`` (imported here: only a hub source may touch the network).

    A local directory written by ``save_to_disk`` is read with ``load_from_disk`` (offline)."""
    import datasets

    local = Path(repo)
    if local.is_dir() and ((local / "dataset_dict.json").is_file()
                           or (local / "state.json").is_file()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise FileNotFoundError(
                    f"{local}: no split {split!r} in this saved dataset; it has {list(ds)}")
            ds = ds[split]
        return ds
    kwargs = {"split": split, "streaming": streaming}
    if revision:
        kwargs["revision"] = revision
    return datasets.load_dataset(repo, config, **kwargs)


def _class_names(ds, field: str) -> list[str] | None:
    features = getattr(ds, "features", None)
    feature = features.get(field) if features is not None else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def _hub_request(dataset: str, language: str, split: str) -> tuple[str | None, str]:
    """(config, split name) of a (dataset, language, split) on its hub repository."""
    return _spec(dataset).hub.request(language, split)  # type: ignore[union-attr]


def _iter_hub(
    dataset: str, language: str, split: str, spec: SourceSpec, on_bad_row: OnBadRow
) -> Iterator[dict]:
    ds_spec = _spec(dataset)
    hub = ds_spec.hub
    assert hub is not None
    repo, revision = _hub_id(dataset, spec)
    config, hub_split = hub.request(language, split)
    where = f"{_where(dataset, language, split)} from hub {repo}" + (
        f"@{revision}" if revision else ""
    )
    ds = _load_hub_dataset(repo, config, hub_split, revision, streaming=hub.streaming)
    stats = ReadStats(f"hub:{repo}/{config or ''}/{hub_split}")
    _STATS[(dataset, language, split)] = stats
    fields = registry.record_fields(ds_spec)
    column_of = {**{f: hub.columns.get(f, f) for f in fields}, **hub.columns}
    names = getattr(getattr(ds, "features", None), "keys", lambda: None)()
    if names is not None:
        missing = [f for f, c in column_of.items() if c not in names]
        if missing:
            raise DataFormatError(
                f"{where}: no column {[column_of[f] for f in missing]} for field(s) {missing}; "
                f"columns: {sorted(names)}")
    label_col = column_of.get(ds_spec.label_field)
    class_names = _class_names(ds, label_col) if label_col else None

    def records() -> Iterator[dict]:
        for i, row in enumerate(ds):
            try:
                missing = [f for f, c in column_of.items() if c not in row]
                if missing:
                    raise formats.RowError(f"no column for field(s) {missing}")
                record = {f: row[c] for f, c in column_of.items()}
                if ds_spec.kind == "classification" and hub.label_ids:
                    raw = record[ds_spec.label_field]
                    if not (isinstance(raw, int) and 0 <= raw < len(ds_spec.label_names)):
                        raise formats.RowError(
                            f"unknown label {raw!r}; expected one of {list(ds_spec.label_names)}")
                elif ds_spec.kind == "classification":
                    record[ds_spec.label_field] = label_name(
                        ds_spec, record[ds_spec.label_field], class_names=class_names)
                if hub.convert is not None:
                    record = hub.convert(record)
                elif ds_spec.kind != "span_corruption":
                    record = spec_record(ds_spec, record)
            except formats.RowError as e:
                message = f"{where}, row {i}: {e}"
                if on_bad_row == "error":
                    raise DataFormatError(message) from None
                stats.note_skip(message)
                continue
            stats.rows += 1
            yield record

    yield from _with_groups(dataset, records())


# --------------------------------------------------------------------------- public reading API


def iter_records(
    dataset: str,
    language: str,
    split: str,
    *,
    on_bad_row: OnBadRow | None = None,
    limit: int | None = None,
) -> Iterator[dict]:
    """Canonical records of (dataset, language, split) from the configured source, lazily for hub mC4."""
    dataset = canonical_dataset(dataset)
    _check_language(dataset, language, split)
    yield from _iter_source(dataset, language, split, on_bad_row=on_bad_row, limit=limit)


def _iter_source(
    dataset: str,
    language: str,
    split: str,
    *,
    on_bad_row: OnBadRow | None,
    limit: int | None,
    cache: bool = True,
) -> Iterator[dict]:
    spec = get_source(dataset)
    mode = on_bad_row or spec.on_bad_row
    if spec.kind == "hub":
        it = _iter_hub(dataset, language, split, spec, mode)
    else:
        it = _iter_local(dataset, language, split, spec, mode, cache=cache)
    yield from itertools.islice(it, limit) if limit is not None else it


def load_records(
    dataset: str, language: str, split: str, *, on_bad_row: OnBadRow | None = None
) -> list[dict]:
    """All canonical records of (dataset, language, split) from the dataset's configured source.

    ``on_bad_row`` overrides the source spec's setting for this call. Records are fresh dicts.
    """
    return list(iter_records(dataset, language, split, on_bad_row=on_bad_row))


def available_splits(dataset: str, language: str) -> tuple[str, ...]:
    """Splits of (dataset, language) in the table that the configured source can provide."""
    dataset = canonical_dataset(dataset)
    table = [s for s, langs in SPLIT_LANGUAGES[dataset].items() if language in langs]
    spec = get_source(dataset)
    if spec.kind == "hub":
        return tuple(table)
    out = []
    for split in table:
        try:
            locate(dataset, language, split, spec)
        except FileNotFoundError:
            continue
        out.append(split)
    return tuple(out)


# --------------------------------------------------------------------------- XNLI_mix


def mix_assignment(num_rows: int, num_languages: int) -> list[tuple[int, int]]:
    """XNLI_mix's (source row, language index) pairs, in output order.

    Row ``i`` of the aligned translated train sets is taken from language ``i % L`` only, so the
    L partitions are disjoint (no source example appears twice, in any language) and, after
    dropping the last ``num_rows % L`` rows, equal in size; the output order ``i = 0, 1, ...``
    interleaves the languages round-robin.
    """
    if num_languages < 1:
        raise ValueError("XNLI_mix needs at least one language")
    usable = (num_rows // num_languages) * num_languages
    return [(i, i % num_languages) for i in range(usable)]


def load_mix(
    dataset: str, languages: Sequence[str] | None = None, *, on_bad_row: OnBadRow | None = None
) -> list[dict]:
    """A dataset's mixed-language train set (its spec's ``mix_task``, e.g. XNLI_mix): disjoint
    equal partitions of line-aligned translated train sets, interleaved.

    Reads the ``train`` split of every language from the dataset's source (for XNLI: the XNLI-MT
    ``multinli.train.{lang}.tsv`` files, or ``facebook/xnli`` per-language ``train`` on the hub),
    which are line-aligned translations of one set; see :func:`mix_assignment`. Each record
    carries ``language`` and ``source_index`` (its row in the aligned sets).
    """
    dataset = canonical_dataset(dataset)
    spec = _spec(dataset)
    label = (spec.mix_task or f"{dataset}_mix").upper().replace("_MIX", "_mix")
    train_languages = spec.mix_languages or SPLIT_LANGUAGES[dataset].get("train", ())
    languages = tuple(languages if languages is not None else train_languages)
    if len(set(languages)) != len(languages):
        raise ValueError(f"{label} languages repeat: {languages}")
    unknown = [lang for lang in languages if lang not in train_languages]
    if unknown:
        raise KeyError(
            f"{label}: languages {unknown} are not {dataset} train languages {list(train_languages)}"
        )
    num = len(languages)
    if num < 1:
        raise ValueError(f"{label} needs at least one language")
    kept: list[list[dict]] = []
    counts: dict[str, int] = {}
    for index, lang in enumerate(languages):
        rows: list[dict] = []
        n = 0
        for n, record in enumerate(
            _iter_source(dataset, lang, "train", on_bad_row=on_bad_row, limit=None, cache=False), 1
        ):
            if (n - 1) % num == index:
                record["language"] = lang
                record["source_index"] = n - 1
                rows.append(record)
        counts[lang] = n
        kept.append(rows)
    if len(set(counts.values())) != 1:
        raise DataFormatError(
            f"{label} needs line-aligned translated train sets of equal length; got row counts "
            f"{counts} ({describe_source(dataset)})"
        )
    total = next(iter(counts.values()))
    return [kept[lang_index][row // num] for row, lang_index in mix_assignment(total, num)]


def load_xnli_mix(
    languages: Sequence[str] = XNLI_LANGUAGES, *, on_bad_row: OnBadRow | None = None
) -> list[dict]:
    """XNLI_mix: :func:`load_mix` of ``xnli`` (by default its 15 languages)."""
    return load_mix("xnli", languages, on_bad_row=on_bad_row)


# --------------------------------------------------------------------------- record counts

# Part of every count's identity: bump when a reading rule changes what the same files count to.
_COUNT_RULES_VERSION = 1
_COUNTS: dict[str, int] = {}
COUNTS_FILE = "record_counts.json"
CACHE_DIR_ENV = "MTL_JAX_CACHE_DIR"


def files_identity(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """``(absolute path, size, mtime_ns)`` per file: what a memo over their contents keys on."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).absolute()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def counts_file() -> Path | None:
    """Where counts persist across processes: ``$MTL_JAX_CACHE_DIR/record_counts.json``, else
    under ``$XDG_CACHE_HOME`` or ``~/.cache`` (``mtl_jax/``); ``MTL_JAX_CACHE_DIR=""`` keeps
    them in memory only."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured is not None:
        return Path(configured).expanduser() / COUNTS_FILE if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mtl_jax" / COUNTS_FILE


def cached_count(identity: Sequence[object], count: Callable[[], int]) -> int:
    """``count()``, computed once per ``identity`` (e.g. task, split, source spec and
    ``files_identity``): memoised in this process and in :func:`counts_file`, so a run over the
    full XNLI-MT (393k rows x 15 languages) does not re-read it to learn its size. A changed file
    changes the identity and is counted again; an unreadable cache file is ignored."""
    key = hashlib.sha256(
        json.dumps([_COUNT_RULES_VERSION, *identity], default=str).encode()).hexdigest()
    if key in _COUNTS:
        return _COUNTS[key]
    path = counts_file()
    stored = _read_counts(path)
    if isinstance(stored.get(key), int):
        _COUNTS[key] = stored[key]
        return stored[key]
    n = int(count())
    _COUNTS[key] = n
    if path is not None:
        _write_count(path, key, n)
    return n


def _read_counts(path: Path | None) -> dict[str, object]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable record-count cache %s (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _write_count(path: Path, key: str, n: int) -> None:
    """Add one count to the file (re-read first; written to a temporary file and renamed, so
    concurrent processes never see half a file: the last writer wins, a lost entry is recounted)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_counts(path), key: n}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not store record count in %s (%s); counting again next run", path, e)

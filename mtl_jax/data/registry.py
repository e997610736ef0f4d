"""The dataset registry: one declarative :class:`DatasetSpec` per dataset, and ``register_dataset``.

A spec owns everything the project knows about a dataset: where its files are and how rows are
read (a local release layout, declared CSV/TSV/JSON Lines/Parquet files with a column mapping, a
hub id), its splits and the languages of each split, the input fields (text-to-text names and the
classification ``text`` / ``text_pair``), its labels or that it is a regression, its metrics, a
per-example group id (for ranking metrics), the text-to-text prefix, label renaming, and which
other dataset's records it reads. The built-in datasets (:mod:`mtl_jax.data.builtin_datasets`)
are declared through the same :func:`register_dataset` a user calls.

Registering makes the dataset's tasks at once (both formats, every language: see
:mod:`mtl_jax.data.tasks`), so a dataset registered after import is usable in mixtures, runs,
``inspect`` and evaluation. This module reads no data and imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mtl_jax import metric_names

Kind = Literal["classification", "regression", "span_corruption"]
KINDS = ("classification", "regression", "span_corruption")
SPLITS = ("train", "validation", "test")
FILE_FORMATS = ("csv", "tsv", "jsonl", "parquet")


class DatasetDeclarationError(ValueError):
    """A dataset declaration that cannot work; the message names the dataset and the field."""


def _fail(name: str, field: str, message: str) -> DatasetDeclarationError:
    return DatasetDeclarationError(f"dataset {name!r}: {field}: {message}")


@dataclasses.dataclass(frozen=True, eq=False)
class FileSource:
    """Declared files of one dataset, read with a column mapping.

    ``files`` maps a split to a path pattern relative to the dataset's directory (the ``local``
    source; absolute paths are used as they are); ``{language}`` and ``{split}`` in a pattern are
    replaced. ``columns`` maps a record field (an input field, the label, the group) to the file's
    column: a header name, or a 0-based index for files without a header (``header=False``;
    ``column_names`` may name the columns instead). Fields not in ``columns`` are read from the
    column of the same name. CSV is read with quoting (Python's ``csv`` module, ``delimiter``
    default ``,``); TSV is split at tabs without quoting, as the GLUE-style releases are written.
    """

    format: str
    files: Mapping[str, str]
    columns: Mapping[str, str | int] = dataclasses.field(default_factory=dict)
    header: bool = True
    column_names: tuple[str, ...] = ()
    delimiter: str | None = None

    def column(self, field: str) -> str | int:
        col = self.columns.get(field, field)
        if isinstance(col, str) and not self.header and self.column_names:
            return self.column_names.index(col) if col in self.column_names else col
        return col

    def path(self, root: Path, language: str, split: str) -> Path:
        pattern = self.files[split].format(language=language, split=split)
        path = Path(pattern).expanduser()
        return path if path.is_absolute() else root / path


@dataclasses.dataclass(frozen=True, eq=False)
class HubSource:
    """A dataset on the Hugging Face hub (or a local ``save_to_disk`` directory).

    ``config`` and the values of ``splits`` may contain ``{language}``; ``splits`` maps our split
    names to the hub's (default: the same name). ``columns`` maps record fields to hub columns.
    ``label_ids``: the label column's integer id *is* the label (PAWS-X: its ClassLabel names are
    ``"0"``/``"1"``); otherwise a ClassLabel id is read as its name. ``convert`` (built-ins only)
    finishes a record, e.g. flattening CTKFacts evidence. ``streaming`` for corpora (mC4).
    """

    repo: str
    config: str | None = None
    splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label_ids: bool = False
    streaming: bool = False
    convert: Callable[[dict], dict] | None = None

    def request(self, language: str, split: str) -> tuple[str | None, str]:
        """(config, split name) of (language, split) on the hub."""
        config = self.config.format(language=language) if self.config else None
        hub_split = self.splits.get(split, split).format(language=language, split=split)
        return config, hub_split


Layout = Callable[[Path, str, str], list]
"""A release layout: ``(root, language, split) -> [sources.Candidate, ...]`` in search order."""


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything about one dataset (see the module docstring); built by :func:`register_dataset`.

    ``fields`` are ``(name in the text-to-text input, record field)`` pairs in input order;
    ``text_fields`` / ``pair_fields`` name which of them form the classification ``text`` and
    ``text_pair`` (several joined by one space). ``label_names`` is the ClassLabel order (the id is
    the index); ``label_map`` renames the source's label values first. ``read_from`` names another
    dataset whose records this one reads (its source settings apply). ``mix_task`` names an extra
    task per format trained on every train language at once (disjoint partitions of line-aligned
    translations, XNLI_mix). ``default_source``: ``"bundled"``, ``"hub"`` or a directory.
    """

    name: str
    splits: Mapping[str, tuple[str, ...]]
    kind: Kind = "classification"
    fields: tuple[tuple[str, str], ...] = ()
    text_fields: tuple[str, ...] = ()
    pair_fields: tuple[str, ...] = ()
    label_field: str = "label"
    label_names: tuple[str, ...] = ()
    label_map: Mapping[str, str] | None = None
    metrics: tuple[str, ...] = ()
    prefix: str | None = None
    head: str | None = None
    group_field: str | None = None  # int per-example group id (ranking metrics), e.g. "query_id"
    group_from: str | None = None  # the record field whose values define the groups
    formats: tuple[str, ...] = ("t2t", "cls")
    read_from: str | None = None
    mix_task: str | None = None
    mix_languages: tuple[str, ...] = ()  # languages of the mix task's aligned train sets
    layout: Layout | None = None  # built-in release layouts
    files: FileSource | None = None  # declared files
    hub: HubSource | None = None
    bundled: str | None = None  # folder under data/assets/samples
    default_source: str = "bundled"
    description: str = ""

    @property
    def task_head(self) -> str:
        return self.head or self.name

    @property
    def task_prefix(self) -> str:
        return self.prefix if self.prefix is not None else self.name

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({lang for langs in self.splits.values() for lang in langs}))

    def splits_of(self, language: str) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if language in self.splits.get(s, ()))

    def record_field(self, name: str) -> str:
        """The record field behind a text-to-text input name."""
        return dict(self.fields).get(name, name)


_SPECS: dict[str, DatasetSpec] = {}
_LISTENERS: list[Callable[[DatasetSpec], None]] = []
_REMOVE_LISTENERS: list[Callable[[str], None]] = []
_BUILTINS_LOADED = threading.Event()
_LOADING = threading.Lock()


def _ensure_builtins() -> None:
    if _BUILTINS_LOADED.is_set():
        return
    with _LOADING:
        if _BUILTINS_LOADED.is_set():
            return
        _BUILTINS_LOADED.set()  # before the import: the built-ins call register_dataset
        from mtl_jax.data import builtin_datasets  # noqa: F401


def on_register(callback: Callable[[DatasetSpec], None],
                on_remove: Callable[[str], None] | None = None) -> None:
    """Call ``callback(spec)`` for every dataset registered so far and from now on (tasks.py)."""
    _LISTENERS.append(callback)
    if on_remove is not None:
        _REMOVE_LISTENERS.append(on_remove)
    for spec in list(all_specs()):
        callback(spec)


def all_specs() -> list[DatasetSpec]:
    _ensure_builtins()
    return list(_SPECS.values())


def dataset_names() -> list[str]:
    return [s.name for s in all_specs()]


def dataset_spec(name: str) -> DatasetSpec:
    _ensure_builtins()
    if name not in _SPECS:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(_SPECS)}")
    return _SPECS[name]


def find_mix_task(name: str) -> DatasetSpec | None:
    """The dataset whose mixed-language task is called ``name`` (``xnli_mix``), if any."""
    for spec in all_specs():
        if spec.mix_task == name:
            return spec
    return None


def source_dataset(name: str) -> str:
    """The dataset whose source ``name`` reads (a dataset, its ``read_from``, or a mix task)."""
    _ensure_builtins()
    if name in _SPECS:
        return _SPECS[name].read_from or name
    mix = find_mix_task(name)
    if mix is not None:
        return mix.read_from or mix.name
    known = sorted(set(_SPECS) | {s.mix_task for s in _SPECS.values() if s.mix_task})
    raise KeyError(f"unknown dataset {name!r}; expected one of {known}")


def unregister_dataset(name: str) -> None:
    """Remove a dataset and its tasks (tests; re-registering a name replaces it anyway)."""
    _ensure_builtins()
    if _SPECS.pop(name, None) is not None:
        for callback in _REMOVE_LISTENERS:
            callback(name)


# --------------------------------------------------------------------------- declaring


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_spec(spec: DatasetSpec) -> None:
    """Everything about a spec that can be checked without reading data."""
    name = spec.name
    if not name or not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise DatasetDeclarationError(
            f"dataset name {name!r}: expected letters, digits and '_' (it becomes task names "
            "like NAME_t2t_en)")
    if spec.kind not in KINDS:
        raise _fail(name, "kind", f"{spec.kind!r}; expected one of {KINDS}")
    for split, langs in spec.splits.items():
        if split not in SPLITS:
            raise _fail(name, "splits", f"unknown split {split!r}; expected some of {SPLITS}")
        if not langs:
            raise _fail(name, "splits", f"split {split!r} lists no language")
    if not spec.splits:
        raise _fail(name, "splits", "no split declared")
    if spec.read_from is None and spec.layout is None and spec.files is None and spec.hub is None:
        raise _fail(name, "source", "declare files (format + files) or a hub id")
    unknown_formats = [f for f in spec.formats if f not in ("t2t", "cls")]
    if unknown_formats:
        raise _fail(name, "formats", f"{unknown_formats}; expected 't2t' and/or 'cls'")
    if spec.kind == "span_corruption":
        return
    if not spec.fields:
        raise _fail(name, "text", "no input field declared")
    names = spec.field_names
    for group, what in ((spec.text_fields, "text"), (spec.pair_fields, "text_pair")):
        missing = [f for f in group if f not in names]
        if missing:
            raise _fail(name, what, f"{missing} are not input fields {list(names)}")
    if not spec.text_fields:
        raise _fail(name, "text", "no classification text field")
    if spec.kind == "classification":
        if len(spec.label_names) < 2:
            raise _fail(name, "label_names",
                        f"{list(spec.label_names)}: a classification needs at least 2 labels "
                        "(for a score, declare regression=True)")
        if len(set(spec.label_names)) != len(spec.label_names):
            raise _fail(name, "label_names", f"{list(spec.label_names)} repeat a name")
        bad_targets = sorted({v for v in (spec.label_map or {}).values()
                              if v not in spec.label_names})
        if bad_targets:
            raise _fail(name, "label_map", f"maps to {bad_targets}, which are not in label_names "
                        f"{list(spec.label_names)}")
    elif spec.label_names:
        raise _fail(name, "label_names", "a regression has no label names")
    if not spec.metrics:
        raise _fail(name, "metrics", "no metric declared")
    for metric in spec.metrics:
        problem = metric_names.check(metric, spec.kind, grouped=spec.group_field is not None)
        if problem:
            raise _fail(name, "metrics", problem)
    if spec.files is not None:
        _check_files(spec)


def _check_files(spec: DatasetSpec) -> None:
    f = spec.files
    assert f is not None
    if f.format not in FILE_FORMATS:
        raise _fail(spec.name, "format", f"{f.format!r}; expected one of {FILE_FORMATS}")
    for split in spec.splits:
        if split not in f.files:
            raise _fail(spec.name, "files", f"no file pattern for split {split!r} "
                        f"(it has languages {list(spec.splits[split])})")
        if len(spec.splits[split]) > 1 and "{language}" not in f.files[split]:
            raise _fail(spec.name, "files", f"the {split!r} pattern {f.files[split]!r} serves "
                        f"{len(spec.splits[split])} languages: put {{language}} in it")
    extra = sorted(set(f.files) - set(spec.splits))
    if extra:
        raise _fail(spec.name, "files", f"patterns for undeclared splits {extra}")
    if not f.header and f.format in ("csv", "tsv"):
        for field in record_fields(spec):
            if not isinstance(f.column(field), int):
                raise _fail(spec.name, "columns", f"field {field!r} needs a column index (or "
                            "column_names) because the files have no header")


def record_fields(spec: DatasetSpec) -> tuple[str, ...]:
    """The record fields a row must provide: inputs, label, group source."""
    out = [field for _, field in spec.fields]
    if spec.kind != "span_corruption":
        out.append(spec.label_field)
    if spec.group_from:
        out.append(spec.group_from)
    return tuple(dict.fromkeys(out))


def register_dataset(spec: DatasetSpec | None = None, /, **declaration: Any) -> DatasetSpec:
    """Register a dataset (a :class:`DatasetSpec`, or a declaration's keywords, see
    :func:`declare`) and make its tasks; re-registering a name replaces it. Returns the spec."""
    if spec is None:
        spec = declare(**declaration)
    elif declaration:
        raise TypeError("register_dataset takes a DatasetSpec or keywords, not both")
    _ensure_builtins()
    _check_spec(spec)
    if spec.read_from is not None and spec.read_from not in _SPECS:
        raise _fail(spec.name, "read_from", f"unknown dataset {spec.read_from!r}")
    if spec.name in _SPECS:
        unregister_dataset(spec.name)
    _SPECS[spec.name] = spec
    try:
        for callback in _LISTENERS:
            callback(spec)
    except Exception:
        unregister_dataset(spec.name)
        raise
    return spec


def declare(
    name: str,
    *,
    languages: Sequence[str] | None = None,
    splits: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    format: str | None = None,  # noqa: A002 - the declaration's key
    files: Mapping[str, str] | None = None,
    data_dir: str | None = None,
    header: bool = True,
    column_names: Sequence[str] = (),
    delimiter: str | None = None,
    hub: str | None = None,
    hub_config: str | None = None,
    hub_splits: Mapping[str, str] | None = None,
    columns: Mapping[str, str | int] | None = None,
    text: str | Sequence[str] = "text",
    text_pair: str | Sequence[str] = (),
    label: str = "label",
    label_names: Sequence[str] = (),
    label_map: Mapping[str, str] | None = None,
    regression: bool = False,
    metrics: Sequence[str] | None = None,
    group: str | None = None,
    prefix: str | None = None,
    head: str | None = None,
    formats: Sequence[str] = ("t2t", "cls"),
    description: str = "",
) -> DatasetSpec:
    """A :class:`DatasetSpec` from plain values (what a gin ``TrainConfig.datasets`` entry holds).

    ``text`` / ``text_pair``: the record fields of the classification text and pair (also the
    text-to-text inputs, in that order); ``label``: the label field; ``columns``: record field ->
    file or hub column (default: the same name). ``languages`` (default ``["en"]``) applies to
    every split in ``files`` / ``hub_splits`` unless ``splits`` maps each split to its languages.
    ``regression=True``: the label is a float score (metrics default to Pearson and Spearman);
    otherwise ``label_names`` are the classes (metrics default to accuracy). ``group``: a field
    whose value groups examples for ranking metrics (``ndcg``). ``data_dir``: the directory the
    ``files`` patterns are relative to (the dataset's default ``local`` source).
    """
    text_fields, pair_fields = _tuple(text), _tuple(text_pair)
    declared = files or hub_splits or {}
    if isinstance(splits, Mapping):
        split_langs = {s: tuple(_tuple(v)) for s, v in splits.items()}
    else:
        langs = tuple(_tuple(languages)) or ("en",)
        names = _tuple(splits) or tuple(declared) or (("train", "validation") if hub else ())
        split_langs = {s: langs for s in names}
    file_source = None
    if format is not None or files is not None:
        if format is None:
            raise _fail(name, "format", f"missing; expected one of {FILE_FORMATS}")
        if not files:
            raise _fail(name, "files", "missing: a path pattern per split")
        file_source = FileSource(
            format=format, files=dict(files), columns=dict(columns or {}), header=header,
            column_names=tuple(column_names), delimiter=delimiter)
    hub_source = None
    if hub is not None:
        hub_columns = {k: v for k, v in (columns or {}).items() if isinstance(v, str)}
        hub_source = HubSource(repo=hub, config=hub_config, splits=dict(hub_splits or {}),
                               columns=hub_columns)
    if file_source is None and hub_source is None:
        raise _fail(name, "source", "declare `format` and `files` (with `data_dir`), or `hub`")
    default_source = "hub" if file_source is None else (data_dir or ".")
    kind: Kind = "regression" if regression else "classification"
    if metrics is None:
        metrics = ("pearson", "spearman") if regression else ("accuracy",)
    return DatasetSpec(
        name=name,
        splits=split_langs,
        kind=kind,
        fields=tuple((f, f) for f in (*text_fields, *pair_fields)),
        text_fields=text_fields,
        pair_fields=pair_fields,
        label_field=label,
        label_names=tuple(str(n) for n in label_names),
        label_map={str(k): str(v) for k, v in label_map.items()} if label_map else None,
        metrics=tuple(metrics),
        prefix=prefix,
        head=head,
        group_field="group_id" if group else None,
        group_from=group,
        formats=tuple(formats),
        files=file_source,
        hub=hub_source,
        default_source=default_source,
        description=description,
    )


# --------------------------------------------------------------------------- live views


class RegistryView(Mapping):
    """A read-only ``dict`` computed from the registry each time (old module-level tables)."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self) -> Iterator:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())

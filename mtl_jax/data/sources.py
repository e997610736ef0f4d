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
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from mtl_jax.data import formats
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
    return {"train": tuple(train), "validation": tuple(evaluation), "test": tuple(evaluation)}


SPLIT_LANGUAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "xnli": _eval_splits(["en"], XNLI_LANGUAGES),
    "pawsx": _eval_splits(["en"], PAWSX_LANGUAGES),
    "nc": _eval_splits(["en"], NC_LANGUAGES),
    "qadsm": _eval_splits(["en"], QADSM_LANGUAGES),
    "qam": _eval_splits(["en"], QAM_LANGUAGES),
    "wpr": _eval_splits(["en"], WPR_LANGUAGES),
    "ctkfacts_nli": _eval_splits(["cs"], ["cs"]),
    "mc4": {"train": MC4_LANGUAGES, "validation": MC4_LANGUAGES},
}
"""dataset -> split -> the languages that split exists in (the data contract's table)."""

DATASETS = tuple(SPLIT_LANGUAGES)
# Task-level names that read another dataset's source.
DATASET_ALIASES = {"ctkfacts_xnli": "ctkfacts_nli", "xnli_mix": "xnli"}

HUB_IDS: dict[str, str] = {
    "xnli": "facebook/xnli",
    "pawsx": "google-research-datasets/paws-x",
    # microsoft/xglue on the hub is a loading script whose data URL is gone; this parquet copy
    # keeps its configs and split names (train, validation.<lang>, test.<lang>).
    "nc": "hgissbkh/xglue",
    "qadsm": "hgissbkh/xglue",
    "qam": "hgissbkh/xglue",
    "wpr": "hgissbkh/xglue",
    "ctkfacts_nli": "ctu-aic/ctkfacts_nli",
    "mc4": "allenai/c4",
}
"""Default hub repositories, loadable by ``datasets`` 5.x without a loading script."""

SAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "samples"
BUNDLED_SUBDIRS = {
    "xnli": "xnli",
    "pawsx": "pawsx",
    "nc": "xglue_full_dataset",
    "qadsm": "xglue_full_dataset",
    "qam": "xglue_full_dataset",
    "wpr": "xglue_full_dataset",
    "ctkfacts_nli": "ctkfacts",
    "mc4": "mc4",
}


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
    name = DATASET_ALIASES.get(dataset, dataset)
    if name not in SPLIT_LANGUAGES:
        raise KeyError(
            f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS + tuple(DATASET_ALIASES))}"
        )
    return name


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
    return _SOURCES.get(canonical_dataset(dataset), SourceSpec())


def reset_sources() -> None:
    """Back to the bundled samples for every dataset (tests use this)."""
    _SOURCES.clear()
    _CACHE.clear()
    _STATS.clear()


def describe_source(dataset: str) -> str:
    """One line for listings, e.g. ``bundled (.../samples/xnli)`` or ``hub facebook/xnli``."""
    name = canonical_dataset(dataset)
    spec = get_source(name)
    if spec.kind == "hub":
        return f"hub {spec.path or HUB_IDS[name]}"
    return f"{spec.kind} ({_root(name, spec)})"


def last_read_stats(dataset: str, language: str, split: str) -> ReadStats | None:
    """Rows read / malformed rows skipped by the last read of (dataset, language, split)."""
    return _STATS.get((canonical_dataset(dataset), language, split))


def _where(dataset: str, language: str, split: str) -> str:
    return f"dataset {dataset!r} (language {language!r}, split {split!r})"


def _root(dataset: str, spec: SourceSpec) -> Path:
    if spec.kind == "bundled":
        return SAMPLES_DIR / BUNDLED_SUBDIRS[dataset]
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
    """One place a split may live in a release layout, and how to read it."""

    paths: tuple[Path, ...]
    layout: str
    read: Callable[..., Iterator[dict]]  # read(on_bad_row=..., stats=..., where=...)

    def exists(self) -> bool:
        return bool(self.paths) and all(p.is_file() for p in self.paths)


def _dirs(root: Path, *subdirs: str) -> list[Path]:
    """``root`` and ``root/sub`` for each sub that is a directory (first = most specific)."""
    out = [root / s for s in subdirs if (root / s).is_dir()]
    return out + [root]


_FILE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
_PAWSX_ORIGINAL_FILE = {"train": "train.tsv", "validation": "dev_2k.tsv", "test": "test_2k.tsv"}


def _xnli_candidates(root: Path, language: str, split: str) -> list[Candidate]:
    f = _FILE_SPLIT[split]
    out: list[Candidate] = []
    for d in _dirs(root, "xglue_full_dataset/XNLI", "XNLI", "xnli"):
        out.append(
            Candidate((d / f"{f}-{language}.tsv",), "XTREME TSV", formats.read_xnli_pairs_tsv)
        )
        if split == "train":
            for sub in ("", "multinli", "XNLI-MT-1.0/multinli"):
                path = d / sub / f"multinli.train.{language}.tsv"
                out.append(Candidate((path,), "XNLI-MT 1.0", formats.read_xnli_mt_train))
        else:
            out.append(
                Candidate((d / f"{language}.{f}",), "XGLUE XNLI", formats.read_xnli_pairs_tsv)
            )
            for sub in ("", "XNLI-1.0"):

                def read_1_0(path, *, language=language, **kw):
                    return formats.read_xnli_1_0(path, language, **kw)

                out.append(Candidate((d / sub / f"xnli.{f}.tsv",), "XNLI 1.0", read_1_0))
    return out


def _pawsx_candidates(root: Path, language: str, split: str) -> list[Candidate]:
    out: list[Candidate] = []
    for d in _dirs(root, "xglue_full_dataset/PAWSX", "PAWSX", "x-final", "pawsx"):
        path = d / f"{_FILE_SPLIT[split]}-{language}.tsv"
        out.append(Candidate((path,), "XTREME TSV", formats.read_pawsx_xtreme_tsv))
        path = d / language / _PAWSX_ORIGINAL_FILE[split]
        out.append(Candidate((path,), "PAWS-X / XGLUE PAWSX", formats.read_pawsx_original_tsv))
    return out


def _xglue_candidates(dataset: str, root: Path, language: str, split: str) -> list[Candidate]:
    task_dir = dataset.upper()

    def read(path, **kw):
        return formats.read_xglue_tsv(path, dataset, **kw)

    name = f"xglue.{dataset}.{language}.{_FILE_SPLIT[split]}"
    return [
        Candidate((d / name,), "XGLUE", read)
        for d in _dirs(root, f"xglue_full_dataset/{task_dir}", task_dir)
    ]


def _ctkfacts_candidates(root: Path, language: str, split: str) -> list[Candidate]:
    def read_export(path, **kw):
        return formats.read_ctkfacts_jsonl(path, split=split, **kw)

    if root.is_file():
        return [Candidate((root,), "CTKFacts raw export", read_export)]
    out = [
        Candidate((d / f"{split}.jsonl",), "CTKFacts NLI", formats.read_ctkfacts_jsonl)
        for d in _dirs(root, "data")
    ]
    exports = sorted(root.glob("export*.jsonl")) if root.is_dir() else []
    if len(exports) > 1:
        raise FileNotFoundError(
            f"{_where('ctkfacts_nli', language, split)}: {root} holds several raw exports "
            f"{[p.name for p in exports]}; point the source at one file"
        )
    out += [Candidate((p,), "CTKFacts raw export", read_export) for p in exports]
    return out


def _mc4_candidates(root: Path, language: str, split: str) -> list[Candidate]:
    suffix = "" if split == "train" else "-validation"
    out = []
    for d in _dirs(root, "multilingual"):
        shards = tuple(sorted(d.glob(f"c4-{language}{suffix}.tfrecord-*-of-*.json.gz")))
        out.append(
            Candidate(
                shards,
                "allenai/c4 multilingual",
                lambda paths, **kw: formats.read_mc4_json_gz(paths, **kw),
            )
        )
    return out


def candidate_files(dataset: str, root: Path, language: str, split: str) -> list[Candidate]:
    """Every release-layout location of (dataset, language, split) under ``root``, in search order."""
    if dataset == "xnli":
        return _xnli_candidates(root, language, split)
    if dataset == "pawsx":
        return _pawsx_candidates(root, language, split)
    if dataset in formats.XGLUE_COLUMNS:
        return _xglue_candidates(dataset, root, language, split)
    if dataset == "ctkfacts_nli":
        return _ctkfacts_candidates(root, language, split)
    if dataset == "mc4":
        return _mc4_candidates(root, language, split)
    raise KeyError(dataset)


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


def _iter_local(
    dataset: str, language: str, split: str, spec: SourceSpec, on_bad_row: OnBadRow, *, cache: bool
) -> Iterator[dict]:
    """Records of a local/bundled file; parsed lists are memoised (keyed on file mtime and size)."""
    c = locate(dataset, language, split, spec)
    key = (dataset, language, split, on_bad_row) + tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in c.paths
    )
    if key in _CACHE:
        yield from (dict(r) for r in _CACHE[key])
        return
    stats = ReadStats(", ".join(str(p) for p in c.paths))
    _STATS[(dataset, language, split)] = stats
    where = _where(dataset, language, split)
    records = c.read(
        c.paths if dataset == "mc4" else c.paths[0], where=where, on_bad_row=on_bad_row, stats=stats
    )
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
    value = spec.path or HUB_IDS[dataset]
    repo, _, revision = value.partition("@")
    return repo, revision or None


def _load_hub_dataset(
    repo: str, config: str | None, split: str, revision: str | None, streaming: bool
):
    """``datasets.load_dataset`` (imported here: only a hub source may touch the network)."""
    import datasets

    kwargs = {"split": split, "streaming": streaming}
    if revision:
        kwargs["revision"] = revision
    return datasets.load_dataset(repo, config, **kwargs)


def _class_names(ds, field: str) -> list[str] | None:
    features = getattr(ds, "features", None)
    feature = features.get(field) if features is not None else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def _hub_request(dataset: str, language: str, split: str) -> tuple[str | None, str]:
    """(config, split name) of a (dataset, language, split) on its default hub repository."""
    if dataset in ("xnli", "pawsx", "mc4"):
        return language, split
    if dataset in formats.XGLUE_COLUMNS:
        return dataset, "train" if split == "train" else f"{split}.{language}"
    return None, split  # ctkfacts_nli: one config


def _iter_hub(
    dataset: str, language: str, split: str, spec: SourceSpec, on_bad_row: OnBadRow
) -> Iterator[dict]:
    repo, revision = _hub_id(dataset, spec)
    config, hub_split = _hub_request(dataset, language, split)
    where = f"{_where(dataset, language, split)} from hub {repo}" + (
        f"@{revision}" if revision else ""
    )
    ds = _load_hub_dataset(repo, config, hub_split, revision, streaming=dataset == "mc4")
    stats = ReadStats(f"hub:{repo}/{config or ''}/{hub_split}")
    _STATS[(dataset, language, split)] = stats
    if dataset == "mc4":
        for row in ds:
            stats.rows += 1
            yield {"text": row["text"]}
        return
    label_field = formats.LABEL_FIELD[dataset]
    class_names = _class_names(ds, label_field)
    our_names = formats.LABEL_NAMES[dataset]
    query_ids: dict[str, int] = {}
    for i, row in enumerate(ds):
        raw = row.get(label_field)
        name = (
            class_names[raw]
            if class_names is not None and isinstance(raw, int) and 0 <= raw < len(class_names)
            else raw
        )
        if dataset == "pawsx":
            # The hub's PAWS-X ClassLabel is named "0"/"1"; the id is what carries meaning.
            value = raw if isinstance(raw, int) else None
            ok = value in (0, 1)
        else:
            value = str(name)
            ok = value in our_names
        if not ok:
            message = f"{where}, row {i}: unknown label {raw!r}; expected one of {list(our_names)}"
            if on_bad_row == "error":
                raise DataFormatError(message)
            stats.note_skip(message)
            continue
        record = {k: row[k] for k in _HUB_FIELDS[dataset] if k != label_field}
        record[label_field] = value
        if dataset == "ctkfacts_nli":
            record["evidence"] = formats.flatten_evidence(record["evidence"])
        if dataset == "wpr":
            record["query_id"] = query_ids.setdefault(record["query"], len(query_ids))
        stats.rows += 1
        yield record


_HUB_FIELDS = {
    "xnli": ("premise", "hypothesis", "label"),
    "pawsx": ("sentence1", "sentence2", "label"),
    **formats.XGLUE_COLUMNS,
    "ctkfacts_nli": ("id", "claim", "evidence", "label"),
}


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


def load_xnli_mix(
    languages: Sequence[str] = XNLI_LANGUAGES, *, on_bad_row: OnBadRow | None = None
) -> list[dict]:
    """XNLI_mix: disjoint equal partitions of the translated XNLI train sets, interleaved.

    Reads the ``train`` split of every language from the ``xnli`` source (local/bundled: the XNLI-MT
    ``multinli.train.{lang}.tsv`` files; hub: ``facebook/xnli`` per-language ``train``), which are
    line-aligned translations of one English set; see :func:`mix_assignment`. Each record carries
    ``language`` and ``source_index`` (its row in the aligned sets).
    """
    languages = tuple(languages)
    if len(set(languages)) != len(languages):
        raise ValueError(f"XNLI_mix languages repeat: {languages}")
    unknown = [lang for lang in languages if lang not in XNLI_LANGUAGES]
    if unknown:
        raise KeyError(
            f"XNLI_mix: languages {unknown} are not XNLI languages {list(XNLI_LANGUAGES)}"
        )
    num = len(languages)
    kept: list[list[dict]] = []
    counts: dict[str, int] = {}
    for index, lang in enumerate(languages):
        rows: list[dict] = []
        n = 0
        for n, record in enumerate(
            _iter_source("xnli", lang, "train", on_bad_row=on_bad_row, limit=None, cache=False), 1
        ):
            if (n - 1) % num == index:
                record["language"] = lang
                record["source_index"] = n - 1
                rows.append(record)
        counts[lang] = n
        kept.append(rows)
    if len(set(counts.values())) != 1:
        raise DataFormatError(
            "XNLI_mix needs line-aligned translated train sets of equal length; got row counts "
            f"{counts} ({describe_source('xnli')})"
        )
    total = next(iter(counts.values()))
    return [kept[lang_index][row // num] for row, lang_index in mix_assignment(total, num)]

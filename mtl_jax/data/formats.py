"""Readers and writers for the datasets' original release formats.

Every reader yields *canonical records* (one dict per row, field names of the data contract) and
validates as it goes: a wrong column count, a missing JSON key or an unknown label is a
:class:`DataFormatError` naming the dataset, the file, the 1-based line number and what was
expected -- or, with ``on_bad_row="skip"``, the row is dropped and counted in :class:`ReadStats`.
The bundled samples are written by the writers below in the very same formats, so the sample
files and a user's real local copy go through one code path.

Release formats (facts checked against the publishers' loaders, see README "Data sources"):

- XTREME TSV (XNLI, PAWS-X): ``{train,dev,test}-{lang}.tsv``, no header, 3 columns
  ``text1<TAB>text2<TAB>label``; XNLI labels are names, PAWS-X labels ``0``/``1``.
- XNLI-MT 1.0 (translated XNLI train sets): ``multinli/multinli.train.{lang}.tsv``, header
  ``premise<TAB>hypo<TAB>label``, label ``contradictory`` for contradiction; the 15 files are
  line-aligned translations of the English MultiNLI train set.
- XNLI 1.0: ``xnli.{dev,test}.tsv`` with a header (``language``, ``gold_label``, ``sentence1``,
  ``sentence2``, ...), all languages in one file.
- XGLUE (``xglue_full_dataset/<TASK>/``): ``xglue.{nc,qadsm,qam,wpr}.{lang}.{train,dev,test}``,
  no header; NC ``title, body, category``; QADSM ``query, ad title, ad description, Good|Bad``;
  QAM ``question, passage, 0|1``; WPR ``query, title, snippet, 0..4`` (Bad..Perfect). XGLUE's XNLI
  folder holds ``multinli.train.en.tsv`` and ``{lang}.{dev,test}`` (3 columns, no header); its
  PAWSX folder (= the original PAWS-X ``x-final`` layout) holds ``{lang}/{train,dev_2k,test_2k}.tsv``
  with header ``id, sentence1, sentence2, label``.
- CTKFacts NLI: ``{train,validation,test}.jsonl`` with ``id, label, evidence, claim`` (evidence a
  string); the raw CTKFacts export (``export_*.jsonl``) has ``evidence`` as a list of evidence
  sets, each a list of paragraph strings (flattened by :func:`flatten_evidence`).
- mC4 (allenai/c4 ``multilingual/``): ``c4-{lang}.tfrecord-NNNNN-of-NNNNN.json.gz`` and
  ``c4-{lang}-validation.tfrecord-...json.gz``, gzipped JSON lines with ``text``, ``timestamp``, ``url``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

OnBadRow = Literal["error", "skip"]
ON_BAD_ROW_CHOICES = ("error", "skip")

# ClassLabel orders (the label id of a record is its index here). See README for provenance.
XNLI_LABELS = ("entailment", "neutral", "contradiction")
PAWSX_LABELS = ("different", "same")
NC_LABELS = (
    "foodanddrink",
    "sports",
    "travel",
    "finance",
    "lifestyle",
    "news",
    "entertainment",
    "health",
    "video",
    "autos",
)
QADSM_LABELS = ("Bad", "Good")
QAM_LABELS = ("False", "True")
WPR_LABELS = ("Bad", "Fair", "Good", "Excellent", "Perfect")
CTKFACTS_LABELS = ("SUPPORTS", "NOT ENOUGH INFO", "REFUTES")

LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "xnli": XNLI_LABELS,
    "pawsx": PAWSX_LABELS,
    "nc": NC_LABELS,
    "qadsm": QADSM_LABELS,
    "qam": QAM_LABELS,
    "wpr": WPR_LABELS,
    "ctkfacts_nli": CTKFACTS_LABELS,
}

# The canonical field of each dataset that holds the label.
LABEL_FIELD = {
    "xnli": "label",
    "pawsx": "label",
    "nc": "news_category",
    "qadsm": "relevance_label",
    "qam": "label",
    "wpr": "relavance_label",
    "ctkfacts_nli": "label",
}


class DataFormatError(ValueError):
    """A file that does not follow its release format (message names file, row and expectation)."""


@dataclasses.dataclass
class ReadStats:
    """What one read saw: rows yielded, malformed rows skipped (with the first few reasons)."""

    path: str
    rows: int = 0
    skipped: int = 0
    dropped_no_evidence: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    MAX_PROBLEMS = 5

    def note_skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.problems) < self.MAX_PROBLEMS:
            self.problems.append(message)


class _RowError(Exception):
    """Internal: a malformed row; turned into DataFormatError or a skip by ``_guard``."""


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW_CHOICES}, got {on_bad_row!r}")


def _guard(
    rows: Iterable[tuple[int, Callable[[], dict | None]]],
    *,
    where: str,
    path: Path,
    on_bad_row: OnBadRow,
    stats: ReadStats,
) -> Iterator[dict]:
    """Run each row's parser; a ``_RowError`` raises (naming where/path/row) or is skipped+counted."""
    _check_on_bad_row(on_bad_row)
    for line_no, parse in rows:
        try:
            record = parse()
        except _RowError as e:
            message = f"{where}: {path}, row {line_no}: {e}"
            if on_bad_row == "error":
                raise DataFormatError(
                    message + ' (pass on_bad_row="skip" to drop such rows)'
                ) from None
            stats.note_skip(message)
            continue
        if record is None:
            continue
        stats.rows += 1
        yield record


def _row_parsers(
    lines: Iterable[tuple[int, Any]], parse: Callable[[Any], dict | None]
) -> Iterator[tuple[int, Callable[[], dict | None]]]:
    """Defer ``parse`` of each numbered line so ``_guard`` can attribute its errors to the row."""
    for line_no, raw in lines:
        yield line_no, functools.partial(parse, raw)


def _read_rows(
    lines: Iterable[tuple[int, Any]],
    parse: Callable[[Any], dict | None],
    *,
    where: str,
    path: Path,
    on_bad_row: OnBadRow,
    stats: ReadStats | None,
) -> Iterator[dict]:
    """The loop every single-file reader shares: guarded parsing, then the skip/drop log line."""
    stats = stats if stats is not None else ReadStats(str(path))
    yield from _guard(
        _row_parsers(lines, parse), where=where, path=path, on_bad_row=on_bad_row, stats=stats
    )
    _log_stats(stats, where)


def _text_lines(path: Path, opener: Callable[..., Any]) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-empty line of a (possibly gzipped) text file."""
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line


def _log_stats(stats: ReadStats, where: str) -> None:
    if stats.skipped:
        log.warning(
            "%s: skipped %d malformed row(s) of %s (kept %d); first: %s",
            where,
            stats.skipped,
            stats.path,
            stats.rows,
            stats.problems[0] if stats.problems else "",
        )
    if stats.dropped_no_evidence:
        log.info(
            "%s: dropped %d claim(s) without evidence from %s (not NLI examples)",
            where,
            stats.dropped_no_evidence,
            stats.path,
        )


def _require_file(path: Path, where: str, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: missing file {path} (expected {what})")


# --------------------------------------------------------------------------- labels


def _label_name(dataset: str, raw: str, *, aliases: dict[str, str] | None = None) -> str:
    """A raw label string -> its canonical name (unknown -> _RowError listing the expected set)."""
    value = raw.strip()
    if aliases and value in aliases:
        value = aliases[value]
    names = LABEL_NAMES[dataset]
    if value not in names:
        expected = sorted(set(names) | set(aliases or {}))
        raise _RowError(f"unknown label {raw!r}; expected one of {expected}")
    return value


def _label_from_digits(dataset: str, raw: str) -> str:
    """XGLUE/PAWS-X style numeric labels (``"0"``..) -> the name at that ClassLabel index."""
    names = LABEL_NAMES[dataset]
    value = raw.strip()
    if value.isdigit() and int(value) < len(names):
        return names[int(value)]
    raise _RowError(
        f"unknown label {raw!r}; expected an integer 0..{len(names) - 1} ({', '.join(names)})"
    )


_XNLI_ALIASES = {"contradictory": "contradiction"}


def _pawsx_label(raw: str) -> int:
    return PAWSX_LABELS.index(_label_from_digits("pawsx", raw))


# --------------------------------------------------------------------------- TSV core


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tab-split fields) for every non-empty line; no quoting (QUOTE_NONE)."""
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            yield line_no, line.split("\t")


def _fields(values: list[str], names: Sequence[str]) -> dict[str, str]:
    if len(values) != len(names):
        missing = "missing field(s)" if len(values) < len(names) else "extra field(s)"
        raise _RowError(
            f"{missing}: got {len(values)} tab-separated column(s), expected {len(names)} "
            f"({', '.join(names)})"
        )
    return dict(zip(names, values, strict=True))


def _read_header(lines: Iterator[tuple[int, list[str]]], path: Path, where: str) -> list[str]:
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataFormatError(f"{where}: {path} is empty (expected a header line)") from None
    return [h.strip() for h in header]


def _header_index(
    header: list[str], required: Sequence[str], path: Path, where: str, *, exact: bool
) -> dict[str, int]:
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required] if exact else []
    if missing or unknown:
        raise DataFormatError(
            f"{where}: {path}, row 1 (header): columns {header}; expected "
            f"{'exactly ' if exact else 'at least '}{list(required)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    return {c: header.index(c) for c in required}


# --------------------------------------------------------------------------- XNLI


def read_xnli_pairs_tsv(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """XTREME ``{split}-{lang}.tsv`` or XGLUE ``XNLI/{lang}.{dev,test}``: premise, hypothesis, label."""
    path = Path(path)
    _require_file(path, where, "premise<TAB>hypothesis<TAB>label lines")

    def parse(values: list[str]) -> dict | None:
        f = _fields(values, ("premise", "hypothesis", "label"))
        f["label"] = _label_name("xnli", f["label"], aliases=_XNLI_ALIASES)
        return f

    yield from _read_rows(
        _tsv_lines(path), parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats
    )


XNLI_MT_HEADER = ("premise", "hypo", "label")


def read_xnli_mt_train(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """XNLI-MT ``multinli.train.{lang}.tsv`` (header premise/hypo/label, ``contradictory``)."""
    path = Path(path)
    _require_file(path, where, "an XNLI-MT train file with header premise<TAB>hypo<TAB>label")
    lines = _tsv_lines(path)
    header = _read_header(lines, path, where)
    _header_index(header, XNLI_MT_HEADER, path, where, exact=True)

    def parse(values: list[str]) -> dict | None:
        f = _fields(values, header)
        return {
            "premise": f["premise"],
            "hypothesis": f["hypo"],
            "label": _label_name("xnli", f["label"], aliases=_XNLI_ALIASES),
        }

    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


def read_xnli_1_0(
    path: Path,
    language: str,
    *,
    where: str,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """XNLI 1.0 ``xnli.{dev,test}.tsv`` (all languages, header), filtered to ``language``."""
    path = Path(path)
    _require_file(path, where, "the XNLI 1.0 TSV with a header")
    lines = _tsv_lines(path)
    header = _read_header(lines, path, where)
    idx = _header_index(
        header, ("language", "gold_label", "sentence1", "sentence2"), path, where, exact=False
    )

    def parse(values: list[str]) -> dict | None:
        if len(values) != len(header):
            raise _RowError(f"got {len(values)} column(s), expected {len(header)} (the header's)")
        if values[idx["language"]] != language:
            return None
        return {
            "premise": values[idx["sentence1"]],
            "hypothesis": values[idx["sentence2"]],
            "label": _label_name("xnli", values[idx["gold_label"]], aliases=_XNLI_ALIASES),
        }

    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


# --------------------------------------------------------------------------- PAWS-X


def read_pawsx_xtreme_tsv(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """XTREME ``{split}-{lang}.tsv``: sentence1, sentence2, label (0 = different, 1 = same)."""
    path = Path(path)
    _require_file(path, where, "sentence1<TAB>sentence2<TAB>label lines")

    def parse(values: list[str]) -> dict | None:
        f = _fields(values, ("sentence1", "sentence2", "label"))
        return {
            "sentence1": f["sentence1"],
            "sentence2": f["sentence2"],
            "label": _pawsx_label(f["label"]),
        }

    yield from _read_rows(
        _tsv_lines(path), parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats
    )


PAWSX_ORIGINAL_HEADER = ("id", "sentence1", "sentence2", "label")


def read_pawsx_original_tsv(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """Original PAWS-X / XGLUE PAWSX ``{lang}/{train,dev_2k,test_2k}.tsv`` (header id/s1/s2/label)."""
    path = Path(path)
    _require_file(path, where, "a PAWS-X TSV with header id<TAB>sentence1<TAB>sentence2<TAB>label")
    lines = _tsv_lines(path)
    header = _read_header(lines, path, where)
    # The machine-translated train files call the last column "noisy_label".
    header = ["label" if h == "noisy_label" else h for h in header]
    _header_index(header, PAWSX_ORIGINAL_HEADER, path, where, exact=True)

    def parse(values: list[str]) -> dict | None:
        f = _fields(values, header)
        return {
            "sentence1": f["sentence1"],
            "sentence2": f["sentence2"],
            "label": _pawsx_label(f["label"]),
        }

    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


# --------------------------------------------------------------------------- XGLUE NC/QADSM/QAM/WPR

XGLUE_COLUMNS: dict[str, tuple[str, ...]] = {
    "nc": ("news_title", "news_body", "news_category"),
    "qadsm": ("query", "ad_title", "ad_description", "relevance_label"),
    "qam": ("question", "answer", "label"),
    "wpr": ("query", "web_page_title", "web_page_snippet", "relavance_label"),
}


def _xglue_label(dataset: str, raw: str) -> str:
    if dataset in ("qam", "wpr"):  # released as ClassLabel indices
        return _label_from_digits(dataset, raw)
    return _label_name(dataset, raw)


def read_xglue_tsv(
    path: Path,
    dataset: str,
    *,
    where: str,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """XGLUE ``xglue.{dataset}.{lang}.{split}`` for nc/qadsm/qam/wpr.

    WPR has no query id column: rows of one query share the query text, so ``query_id`` is the
    0-based index of the query text in order of first appearance within the file.
    """
    if dataset not in XGLUE_COLUMNS:
        raise ValueError(
            f"read_xglue_tsv: unknown XGLUE dataset {dataset!r}; expected {sorted(XGLUE_COLUMNS)}"
        )
    path = Path(path)
    columns = XGLUE_COLUMNS[dataset]
    _require_file(path, where, f"XGLUE {dataset.upper()} lines {'<TAB>'.join(columns)}")
    label_field = LABEL_FIELD[dataset]
    query_ids: dict[str, int] = {}

    def parse(values: list[str]) -> dict | None:
        f = _fields(values, columns)
        f[label_field] = _xglue_label(dataset, f[label_field])
        if dataset == "wpr":
            f = {"query_id": query_ids.setdefault(f["query"], len(query_ids)), **f}
        return f

    yield from _read_rows(
        _tsv_lines(path), parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats
    )


# --------------------------------------------------------------------------- CTKFacts


def flatten_evidence(evidence: object) -> list[str]:
    """CTKFacts evidence -> the list of paragraph texts used as the NLI premise.

    Accepted shapes: a string (the CTKFacts NLI release; one premise), a list of strings, or the
    raw export's list of evidence *sets*, each a list of paragraph strings. Sets are concatenated in
    order, paragraphs within a set in order, and a paragraph repeated across sets is kept only at
    its first occurrence (several annotators often cite the same paragraph). The premise string is
    ``" ".join(...)`` of the result (see :func:`evidence_text`).
    """
    if isinstance(evidence, str):
        return [evidence]
    if not isinstance(evidence, list):
        raise _RowError(
            f"evidence has type {type(evidence).__name__}; expected a string, a list of strings "
            "or a list of lists of strings"
        )
    seen: set[str] = set()
    out: list[str] = []
    for item in evidence:
        group = item if isinstance(item, list) else [item]
        for paragraph in group:
            if not isinstance(paragraph, str):
                raise _RowError(
                    f"evidence paragraph has type {type(paragraph).__name__}; expected a string"
                )
            if paragraph not in seen:
                seen.add(paragraph)
                out.append(paragraph)
    return out


def evidence_text(paragraphs: Sequence[str]) -> str:
    """The single premise string of flattened evidence: paragraphs joined by one space."""
    return " ".join(p.strip() for p in paragraphs)


CTKFACTS_KEYS = ("id", "label", "claim", "evidence")


def _split_bucket(key: str) -> str:
    """Deterministic 80/10/10 train/validation/test bucket of a string key (stable across runs)."""
    b = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if b == 0 else "validation" if b == 1 else "train"


def raw_export_split(record: dict) -> str:
    """The split a raw-export claim belongs to: a hash of the claim it was mutated from.

    Claims mutated from the same source claim share facts, so they are kept in one split
    (grouping by ``mutated_from``; by ``id`` when that is missing).
    """
    key = record.get("mutated_from")
    return _split_bucket(f"m{key}" if key is not None else f"i{record.get('id')}")


def read_ctkfacts_jsonl(
    path: Path,
    *,
    where: str,
    split: str | None = None,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """CTKFacts NLI ``{split}.jsonl`` or the raw export (then ``split`` selects by :func:`raw_export_split`).

    Claims whose evidence is empty (possible in the raw export) are not NLI examples: they are
    dropped and counted in ``stats.dropped_no_evidence`` (not an error).
    """
    path = Path(path)
    _require_file(path, where, "JSON lines with keys " + ", ".join(CTKFACTS_KEYS))
    stats = stats if stats is not None else ReadStats(str(path))  # parse counts drops in it

    def parse(line: str) -> dict | None:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _RowError(f"not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise _RowError("expected a JSON object")
        missing = [k for k in CTKFACTS_KEYS if k not in obj]
        if missing:
            raise _RowError(f"missing field(s) {missing}; expected keys {list(CTKFACTS_KEYS)}")
        label = obj["label"]
        if isinstance(label, int) and not isinstance(label, bool):
            raise _RowError(
                f"label is the integer {label}; expected a label name "
                f"{list(CTKFACTS_LABELS)} (integer ids are ambiguous across releases)"
            )
        if not isinstance(label, str):
            raise _RowError(f"label {label!r} is not a string")
        if not isinstance(obj["claim"], str):
            raise _RowError(f"claim {obj['claim']!r} is not a string")
        record = {
            "id": obj["id"],
            "claim": obj["claim"],
            "evidence": flatten_evidence(obj["evidence"]),
            "label": _label_name("ctkfacts_nli", label),
        }
        if split is not None and raw_export_split(obj) != split:
            return None
        if not any(p.strip() for p in record["evidence"]):
            stats.dropped_no_evidence += 1
            return None
        return record

    yield from _read_rows(
        _text_lines(path, open), parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats
    )


def is_ctkfacts_raw_export(path: Path) -> bool:
    """True when the first record's evidence is a list (raw export) rather than a string (NLI)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return isinstance(json.loads(line).get("evidence"), list)
                except (json.JSONDecodeError, AttributeError):
                    return False
    return False


# --------------------------------------------------------------------------- mC4


def read_mc4_json_gz(
    paths: Sequence[Path],
    *,
    where: str,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """mC4 ``c4-{lang}[-validation].tfrecord-*.json.gz`` shards: one ``{"text": ...}`` per line."""
    if not paths:
        raise FileNotFoundError(f"{where}: no mC4 shard files given")
    stats = stats if stats is not None else ReadStats(", ".join(str(p) for p in paths))
    for path in paths:
        path = Path(path)
        _require_file(path, where, "gzipped JSON lines with a 'text' field")

        def parse(line: str) -> dict:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _RowError(f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise _RowError("missing field 'text'; expected a JSON object with a string 'text'")
            return {"text": obj["text"]}

        rows = _row_parsers(_text_lines(path, gzip.open), parse)
        yield from _guard(rows, where=where, path=path, on_bad_row=on_bad_row, stats=stats)
    _log_stats(stats, where)


# --------------------------------------------------------------------------- writers (samples)


def _check_tsv_value(value: object, path: Path) -> str:
    text = str(value)
    if any(c in text for c in "\t\r\n"):
        raise ValueError(
            f"cannot write {text[:40]!r}... to {path}: TSV fields hold no tabs/newlines"
        )
    return text


def _write_tsv(
    path: Path, rows: Iterable[Sequence[object]], header: Sequence[str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if header is not None:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_check_tsv_value(v, path) for v in row) + "\n")


def write_xnli_pairs_tsv(path: Path, records: Iterable[dict]) -> None:
    """XTREME XNLI TSV (no header): premise, hypothesis, label name."""
    _write_tsv(Path(path), ((r["premise"], r["hypothesis"], r["label"]) for r in records))


def write_xnli_mt_train(path: Path, records: Iterable[dict]) -> None:
    """XNLI-MT train TSV: header premise/hypo/label; contradiction written as ``contradictory``."""
    rows = (
        (
            r["premise"],
            r["hypothesis"],
            "contradictory" if r["label"] == "contradiction" else r["label"],
        )
        for r in records
    )
    _write_tsv(Path(path), rows, header=XNLI_MT_HEADER)


def write_pawsx_xtreme_tsv(path: Path, records: Iterable[dict]) -> None:
    """XTREME PAWS-X TSV (no header): sentence1, sentence2, 0|1."""
    _write_tsv(Path(path), ((r["sentence1"], r["sentence2"], int(r["label"])) for r in records))


def write_xglue_tsv(path: Path, dataset: str, records: Iterable[dict]) -> None:
    """XGLUE ``xglue.{dataset}.{lang}.{split}`` (no header); QAM/WPR labels as ClassLabel indices."""
    columns = XGLUE_COLUMNS[dataset]
    label_field = LABEL_FIELD[dataset]
    names = LABEL_NAMES[dataset]

    def row(r: dict) -> list[object]:
        values = [r[c] for c in columns]
        if dataset in ("qam", "wpr"):
            values[columns.index(label_field)] = names.index(str(r[label_field]))
        return values

    _write_tsv(Path(path), (row(r) for r in records))


def write_ctkfacts_jsonl(path: Path, records: Iterable[dict]) -> None:
    """CTKFacts NLI release JSON lines: id, label, evidence (one string), claim."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            evidence = r["evidence"]
            obj = {
                "id": r["id"],
                "label": r["label"],
                "evidence": evidence if isinstance(evidence, str) else evidence_text(evidence),
                "claim": r["claim"],
            }
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")


def write_mc4_json_gz(path: Path, texts: Iterable[str]) -> None:
    """One mC4 shard: gzipped JSON lines (text, timestamp, url); byte-identical across runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        for i, text in enumerate(texts):
            obj = {
                "text": text,
                "timestamp": "2020-01-01T00:00:00Z",
                "url": f"https://example.invalid/{i}",
            }
            gz.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())

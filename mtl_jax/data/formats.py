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

Files are read as bytes and decoded line by line, so a line that is not UTF-8 is one bad row (with
its number) rather than a crash of the whole read. A UTF-8 BOM, CRLF line ends and blank lines are
read correctly; an empty file, a header without rows and unreadable gzip data are whole-file errors.
The full matrix of bad inputs and their outcomes is in ``docs/data_formats.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


# The text fields a row cannot do without: each group needs at least one non-empty
# (non-whitespace) field. An example with no text to classify is a broken row, not data.
REQUIRED_TEXT: dict[str, tuple[tuple[str, ...], ...]] = {
    "xnli": (("premise",), ("hypothesis",)),
    "pawsx": (("sentence1",), ("sentence2",)),
    "nc": (("news_title", "news_body"),),
    "qadsm": (("query",), ("ad_title", "ad_description")),
    "qam": (("question",), ("answer",)),
    "wpr": (("query",), ("web_page_title", "web_page_snippet")),
    "ctkfacts_nli": (("claim",),),
    "mc4": (("text",),),
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
    """A malformed row; turned into DataFormatError or a skip by ``_guard``."""


RowError = _RowError  # public name: row converters of declared datasets raise it


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


_BOM = b"\xef\xbb\xbf"


def _lines(
    path: Path, *, where: str, what: str, header: bool = False, gz: bool = False
) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every non-blank line of a (possibly gzipped) file.

    Bytes, not text, so that a line that is not UTF-8 becomes one bad row (decoded by the row's
    parser, where ``on_bad_row`` applies) instead of a UnicodeDecodeError for the whole file.
    Lines end at ``\n``, ``\r\n`` or ``\r`` (as Python's text mode splits them), a UTF-8 BOM
    before line 1 is dropped, and a line that is empty or only spaces is not a row (a line with a
    tab is: its columns are empty). Whole-file faults raise :class:`DataFormatError` whatever
    ``on_bad_row`` says: no line at all (``what`` says what was expected), a header and no rows,
    and gzip data that ends early or is corrupt.
    """
    opener: Callable[..., Any] = gzip.open if gz else open
    line_no = 0
    seen = 0
    try:
        with opener(path, "rb") as f:
            for chunk in f:
                for raw in chunk.splitlines():
                    line_no += 1
                    if line_no == 1 and raw.startswith(_BOM):
                        raw = raw[len(_BOM) :]
                    if not raw.strip(b" "):
                        continue
                    seen += 1
                    yield line_no, raw
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        if not gz:
            raise
        at = f"after row {line_no}" if line_no else "before its first row"
        raise DataFormatError(
            f"{where}: {path}, {at}: truncated or corrupt gzip data ({e}); "
            "expected a complete gzip file (an interrupted download?)"
        ) from None
    if seen == 0:
        expected = "a header line" if header else what
        raise DataFormatError(f"{where}: {path} is empty (expected {expected})")
    if header and seen == 1:
        raise DataFormatError(
            f"{where}: {path} has a header but no rows (expected {what} after the header)"
        )


def _decode(raw: bytes) -> str:
    """One line's text; bytes that are not UTF-8 are a bad row naming the offending byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _RowError(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line); "
            "expected UTF-8 text"
        ) from None


_JSON_TYPES = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _json(value: object) -> str:
    """A value as the file spells it (``null``, ``["a"]``), cut short for messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_object(raw: bytes) -> dict:
    """One JSON-lines row as a dict (bad UTF-8, bad JSON or a non-object is a bad row)."""
    try:
        obj = json.loads(_decode(raw))
    except json.JSONDecodeError as e:
        raise _RowError(f"not valid JSON ({e.msg}); expected one JSON object per line") from None
    if not isinstance(obj, dict):
        raise _RowError(f"a JSON {_json_type(obj)}; expected a JSON object")
    return obj


def _require_text(dataset: str, record: dict) -> None:
    """A bad row unless each :data:`REQUIRED_TEXT` group of ``dataset`` has some non-blank text."""
    for group in REQUIRED_TEXT[dataset]:
        for name in group:  # a plain loop: this runs once per row of every file
            if record[name].strip():
                break
        else:
            if len(group) == 1:
                raise _RowError(f"empty text in {group[0]}; expected a non-empty {group[0]}")
            raise _RowError(
                f"empty text in {' and '.join(group)}; expected at least one of them non-empty"
            )


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
        if _is_number(value):
            raise _RowError(
                f"label {raw!r} is a number; expected a label name, one of {expected} (this "
                "format names its labels; numeric ids differ between releases)"
            )
        raise _RowError(f"unknown label {raw!r}; expected one of {expected}")
    return value


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _label_from_digits(dataset: str, raw: str) -> str:
    """XGLUE/PAWS-X style numeric labels (``"0"``..) -> the name at that ClassLabel index."""
    names = LABEL_NAMES[dataset]
    value = raw.strip()
    expected = f"expected an integer 0..{len(names) - 1} ({', '.join(names)})"
    if not (value.isascii() and value.isdigit()):  # "1.0", "-1", "same", "²" are not ids
        raise _RowError(f"label {raw!r} is not an integer; {expected}")
    if int(value) >= len(names):
        raise _RowError(f"unknown label {raw!r}; {expected}")
    return names[int(value)]


_XNLI_ALIASES = {"contradictory": "contradiction"}


def _pawsx_label(raw: str) -> int:
    return PAWSX_LABELS.index(_label_from_digits("pawsx", raw))


# --------------------------------------------------------------------------- TSV core


def _tsv_fields(raw: bytes) -> list[str]:
    """A TSV line's tab-separated fields; no quoting (QUOTE_NONE), as the releases are written."""
    return _decode(raw).split("\t")


def _fields(values: list[str], names: Sequence[str]) -> dict[str, str]:
    if len(values) != len(names):
        missing = "missing field(s)" if len(values) < len(names) else "extra field(s)"
        raise _RowError(
            f"{missing}: got {len(values)} tab-separated column(s); expected {len(names)} "
            f"({', '.join(names)})"
        )
    return dict(zip(names, values, strict=True))


def _read_header(lines: Iterator[tuple[int, bytes]], path: Path, where: str) -> list[str]:
    """The header's column names (an empty file raises in :func:`_lines`; bad UTF-8 here)."""
    try:
        line_no, raw = next(lines)
    except StopIteration:  # pragma: no cover - _lines raises first
        raise DataFormatError(f"{where}: {path} is empty (expected a header line)") from None
    try:
        header = _tsv_fields(raw)
    except _RowError as e:
        raise DataFormatError(f"{where}: {path}, row {line_no} (header): {e}") from None
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
    what = "premise<TAB>hypothesis<TAB>label lines"
    _require_file(path, where, what)

    def parse(raw: bytes) -> dict | None:
        f = _fields(_tsv_fields(raw), ("premise", "hypothesis", "label"))
        f["label"] = _label_name("xnli", f["label"], aliases=_XNLI_ALIASES)
        _require_text("xnli", f)
        return f

    lines = _lines(path, where=where, what=what)
    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


XNLI_MT_HEADER = ("premise", "hypo", "label")


def read_xnli_mt_train(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """XNLI-MT ``multinli.train.{lang}.tsv`` (header premise/hypo/label, ``contradictory``)."""
    path = Path(path)
    _require_file(path, where, "an XNLI-MT train file with header premise<TAB>hypo<TAB>label")
    lines = _lines(path, where=where, what="premise<TAB>hypo<TAB>label lines", header=True)
    header = _read_header(lines, path, where)
    _header_index(header, XNLI_MT_HEADER, path, where, exact=True)

    def parse(raw: bytes) -> dict | None:
        f = _fields(_tsv_fields(raw), header)
        record = {
            "premise": f["premise"],
            "hypothesis": f["hypo"],
            "label": _label_name("xnli", f["label"], aliases=_XNLI_ALIASES),
        }
        _require_text("xnli", record)
        return record

    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


XNLI_1_0_COLUMNS = ("language", "gold_label", "sentence1", "sentence2")


def read_xnli_1_0(
    path: Path,
    language: str,
    *,
    where: str,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """XNLI 1.0 ``xnli.{dev,test}.tsv`` (all languages, header), filtered to ``language``.

    Every row must have the header's column count; label and text are checked only in rows of
    ``language`` (the others are not read). A file without a single row of ``language`` is an
    error, as it almost certainly is the wrong file.
    """
    path = Path(path)
    _require_file(path, where, "the XNLI 1.0 TSV with a header")
    lines = _lines(path, where=where, what="one row per sentence pair", header=True)
    header = _read_header(lines, path, where)
    idx = _header_index(header, XNLI_1_0_COLUMNS, path, where, exact=False)
    present: set[str] = set()

    def parse(raw: bytes) -> dict | None:
        values = _tsv_fields(raw)
        if len(values) != len(header):
            missing = "missing field(s)" if len(values) < len(header) else "extra field(s)"
            raise _RowError(
                f"{missing}: got {len(values)} column(s); expected {len(header)} (the header's)"
            )
        present.add(values[idx["language"]])
        if values[idx["language"]] != language:
            return None
        record = {
            "premise": values[idx["sentence1"]],
            "hypothesis": values[idx["sentence2"]],
            "label": _label_name("xnli", values[idx["gold_label"]], aliases=_XNLI_ALIASES),
        }
        _require_text("xnli", record)
        return record

    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)
    if language not in present:
        raise DataFormatError(
            f"{where}: {path} has no row in language {language!r}; expected some "
            f"(languages present: {sorted(present)})"
        )


# --------------------------------------------------------------------------- PAWS-X


def read_pawsx_xtreme_tsv(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """XTREME ``{split}-{lang}.tsv``: sentence1, sentence2, label (0 = different, 1 = same)."""
    path = Path(path)
    what = "sentence1<TAB>sentence2<TAB>label lines"
    _require_file(path, where, what)

    def parse(raw: bytes) -> dict | None:
        f = _fields(_tsv_fields(raw), ("sentence1", "sentence2", "label"))
        record = {
            "sentence1": f["sentence1"],
            "sentence2": f["sentence2"],
            "label": _pawsx_label(f["label"]),
        }
        _require_text("pawsx", record)
        return record

    lines = _lines(path, where=where, what=what)
    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


PAWSX_ORIGINAL_HEADER = ("id", "sentence1", "sentence2", "label")


def read_pawsx_original_tsv(
    path: Path, *, where: str, on_bad_row: OnBadRow = "error", stats: ReadStats | None = None
) -> Iterator[dict]:
    """Original PAWS-X / XGLUE PAWSX ``{lang}/{train,dev_2k,test_2k}.tsv`` (header id/s1/s2/label)."""
    path = Path(path)
    _require_file(path, where, "a PAWS-X TSV with header id<TAB>sentence1<TAB>sentence2<TAB>label")
    lines = _lines(
        path, where=where, what="id<TAB>sentence1<TAB>sentence2<TAB>label lines", header=True
    )
    header = _read_header(lines, path, where)
    # The machine-translated train files call the last column "noisy_label".
    header = ["label" if h == "noisy_label" else h for h in header]
    _header_index(header, PAWSX_ORIGINAL_HEADER, path, where, exact=True)

    def parse(raw: bytes) -> dict | None:
        f = _fields(_tsv_fields(raw), header)
        record = {
            "sentence1": f["sentence1"],
            "sentence2": f["sentence2"],
            "label": _pawsx_label(f["label"]),
        }
        _require_text("pawsx", record)
        return record

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
    what = f"XGLUE {dataset.upper()} lines {'<TAB>'.join(columns)}"
    _require_file(path, where, what)
    label_field = LABEL_FIELD[dataset]
    query_ids: dict[str, int] = {}

    def parse(raw: bytes) -> dict | None:
        f = _fields(_tsv_fields(raw), columns)
        f[label_field] = _xglue_label(dataset, f[label_field])
        _require_text(dataset, f)
        if dataset == "wpr":  # after every check: a skipped row takes no query id
            f = {"query_id": query_ids.setdefault(f["query"], len(query_ids)), **f}
        return f

    lines = _lines(path, where=where, what=what)
    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


# --------------------------------------------------------------------------- declared tables


def _csv_rows(path: Path, delimiter: str, *, where: str) -> Iterator[tuple[int, list[str] | _RowError]]:
    """(line number, fields) of a CSV file with quoting; a bad line is a ``_RowError`` value."""
    import csv

    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(
            f"{where}: {path}, row {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
            "expected UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, _RowError(f"not valid CSV ({e})")
            line = reader.line_num + 1
            continue
        if fields and any(v.strip() for v in fields):
            yield line, fields
        line = reader.line_num + 1


def _tsv_rows(path: Path, *, where: str, what: str) -> Iterator[tuple[int, list[str] | _RowError]]:
    for line_no, raw in _lines(path, where=where, what=what):
        try:
            yield line_no, _tsv_fields(raw)
        except _RowError as e:
            yield line_no, e


def _columns_error(where: str, path: Path, columns: Mapping[str, str | int], header: Sequence[str]
                   ) -> DataFormatError:
    missing = {f: c for f, c in columns.items() if isinstance(c, str) and c not in header}
    parts = [f"field {f!r} needs column {c!r}" for f, c in missing.items()]
    return DataFormatError(
        f"{where}: {path}, row 1 (header): {'; '.join(parts)}, which the file does not have; "
        f"its columns: {list(header)}")


def read_table(
    path: Path,
    fmt: str,
    columns: Mapping[str, str | int],
    *,
    where: str,
    header: bool = True,
    delimiter: str | None = None,
    convert: Callable[[dict], dict] | None = None,
    on_bad_row: OnBadRow = "error",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """Rows of a declared CSV / TSV / JSON Lines / Parquet file as ``{field: value}`` dicts.

    ``columns`` maps each field to its column: a header name, or a 0-based index (files without
    a header). A named column missing from the header (CSV/TSV) or the schema (Parquet) is a
    whole-file error naming the field and the column; in JSON Lines, where each row has its own
    keys, it is a bad row. ``convert`` checks and finishes each row (raising :data:`RowError`).
    """
    path = Path(path)
    fields = ", ".join(f"{f} <- {c!r}" for f, c in columns.items())
    what = f"a {fmt} file with columns for {fields}"
    _require_file(path, where, what)
    finish = convert or (lambda row: row)

    def pick(values: Sequence, index: Mapping[str, int]) -> dict:
        need = max(index.values(), default=-1) + 1
        if len(values) < need:
            raise _RowError(f"got {len(values)} column(s); expected at least {need} ({fields})")
        return finish({f: values[i] for f, i in index.items()})

    if fmt in ("csv", "tsv"):
        if fmt == "csv":
            rows = _csv_rows(path, delimiter or ",", where=where)
        else:
            rows = _tsv_rows(path, where=where, what=what)
        index: dict[str, int] = {}
        first = True

        def gen() -> Iterator[tuple[int, Callable[[], dict | None]]]:
            nonlocal first, index
            seen = 0
            for line_no, values in rows:
                seen += 1
                if isinstance(values, _RowError):
                    def bad(e=values):
                        raise e
                    yield line_no, bad
                    continue
                if first and header:
                    first = False
                    names = [v.strip() for v in values]
                    if any(isinstance(c, str) and c not in names for c in columns.values()):
                        raise _columns_error(where, path, columns, names)
                    index = {f: (names.index(c) if isinstance(c, str) else int(c))
                             for f, c in columns.items()}
                    continue
                if first:
                    first = False
                    index = {f: int(c) for f, c in columns.items()}
                yield line_no, functools.partial(pick, values, index)
            if seen == 0:
                raise DataFormatError(f"{where}: {path} is empty (expected {what})")
            if header and seen == 1:
                raise DataFormatError(
                    f"{where}: {path} has a header but no rows (expected rows after the header)")

        stats = stats if stats is not None else ReadStats(str(path))
        yield from _guard(gen(), where=where, path=path, on_bad_row=on_bad_row, stats=stats)
        _log_stats(stats, where)
        return
    if fmt == "jsonl":
        def parse(raw: bytes) -> dict | None:
            obj = _json_object(raw)
            missing = {f: c for f, c in columns.items() if c not in obj}
            if missing:
                raise _RowError("missing key(s) " + ", ".join(
                    f"{c!r} (field {f!r})" for f, c in missing.items()) + f"; keys: {sorted(obj)}")
            return finish({f: obj[c] for f, c in columns.items()})

        lines = _lines(path, where=where, what=what)
        yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row,
                              stats=stats)
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise DataFormatError(f"{where}: {path}: not a readable Parquet file ({e})") from None
        names = table.column_names
        if any(isinstance(c, str) and c not in names for c in columns.values()):
            raise _columns_error(where, path, columns, names)
        if table.num_rows == 0:
            raise DataFormatError(f"{where}: {path} has no rows (expected {what})")
        picked = {f: table.column(c if isinstance(c, str) else names[int(c)]).to_pylist()
                  for f, c in columns.items()}
        rows_ = ((i + 1, functools.partial(finish, {f: v[i] for f, v in picked.items()}))
                 for i in range(table.num_rows))
        stats = stats if stats is not None else ReadStats(str(path))
        yield from _guard(rows_, where=where, path=path, on_bad_row=on_bad_row, stats=stats)
        _log_stats(stats, where)
        return
    raise ValueError(f"{where}: unknown file format {fmt!r}; expected csv, tsv, jsonl or parquet")


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
    what = "JSON lines with keys " + ", ".join(CTKFACTS_KEYS)
    _require_file(path, where, what)
    stats = stats if stats is not None else ReadStats(str(path))  # parse counts drops in it

    def parse(raw: bytes) -> dict | None:
        obj = _json_object(raw)
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
            raise _RowError(
                f"label {_json(label)} is a JSON {_json_type(label)}; expected a label name (a string), "
                f"one of {list(CTKFACTS_LABELS)}"
            )
        if not isinstance(obj["claim"], str):
            raise _RowError(
                f"claim {_json(obj['claim'])} is a JSON {_json_type(obj['claim'])}; expected a string"
            )
        record = {
            "id": obj["id"],
            "claim": obj["claim"],
            "evidence": flatten_evidence(obj["evidence"]),
            "label": _label_name("ctkfacts_nli", label),
        }
        _require_text("ctkfacts_nli", record)
        if split is not None and raw_export_split(obj) != split:
            return None
        if not any(p.strip() for p in record["evidence"]):
            stats.dropped_no_evidence += 1
            return None
        return record

    lines = _lines(path, where=where, what=what)
    yield from _read_rows(lines, parse, where=where, path=path, on_bad_row=on_bad_row, stats=stats)


def is_ctkfacts_raw_export(path: Path) -> bool:
    """True when the first record's evidence is a list (raw export) rather than a string (NLI)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw.removeprefix(_BOM).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return False
                return isinstance(obj, dict) and isinstance(obj.get("evidence"), list)
    return False


# --------------------------------------------------------------------------- mC4


def _mc4_record(raw: bytes) -> dict:
    """One mC4 line -> ``{"text": ...}`` (other keys, e.g. timestamp and url, are not kept)."""
    obj = _json_object(raw)
    if "text" not in obj:
        raise _RowError("missing field(s) ['text']; expected a JSON object with a string 'text'")
    if not isinstance(obj["text"], str):
        raise _RowError(f"field 'text' is a JSON {_json_type(obj['text'])}; expected a string")
    record = {"text": obj["text"]}
    _require_text("mc4", record)
    return record


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
    what = "gzipped JSON lines with a 'text' field"
    for path in paths:
        path = Path(path)
        _require_file(path, where, what)
        rows = _row_parsers(_lines(path, where=where, what=what, gz=True), _mc4_record)
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


def write_xnli_1_0(path: Path, records: Iterable[dict]) -> None:
    """XNLI 1.0 ``xnli.{dev,test}.tsv`` (records carry ``language``); the columns the reader uses
    plus ``pairID`` (the release has more, which the reader ignores)."""
    rows = (
        (r["language"], r["label"], r["premise"], r["hypothesis"], i) for i, r in enumerate(records)
    )
    _write_tsv(Path(path), rows, header=(*XNLI_1_0_COLUMNS, "pairID"))


def write_pawsx_original_tsv(path: Path, records: Iterable[dict]) -> None:
    """Original PAWS-X ``{lang}/{split}.tsv``: header id/sentence1/sentence2/label, ids from 1."""
    rows = ((i, r["sentence1"], r["sentence2"], int(r["label"])) for i, r in enumerate(records, 1))
    _write_tsv(Path(path), rows, header=PAWSX_ORIGINAL_HEADER)


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

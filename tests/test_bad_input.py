"""The bad-input matrix: every release format x every kind of bad input -> one documented outcome.

Each case starts from a valid file written by the format's writer, corrupts it, reads it and checks
the exact outcome, one of:

- ``read``: the records equal the clean file's (a BOM, CRLF, a trailing blank line, ...);
- ``row``: a bad row. ``on_bad_row="error"`` raises :class:`DataFormatError` naming the dataset,
  the file, the 1-based row and the expectation; ``"skip"`` reads the other rows, counts each bad
  row in :class:`ReadStats` and logs a warning;
- ``file``: a whole-file fault (empty file, truncated gzip, bad header): ``DataFormatError`` in both
  modes, never a raw UnicodeDecodeError / EOFError / BadGzipFile;
- ``n/a``: the case cannot occur in that format (the reason is in the table).

The table in docs/data_formats.md is rendered from this matrix and checked against it, so the docs
cannot drift from what the readers do. (The ``BAD_FILES`` tests in test_sources.py check the wiring
through ``sources``: the dataset's ``where``, the spec's ``on_bad_row`` and ``last_read_stats``.)
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtl_jax.data import formats
from mtl_jax.data.formats import DataFormatError, ReadStats

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data_formats.md"

READ, ROW, FILE, NA = "read", "row", "file", "n/a"

# --------------------------------------------------------------------------- the formats

Reader = Callable[..., Iterator[dict]]  # reader(path, where=, on_bad_row=, stats=)


@dataclasses.dataclass(frozen=True)
class Fmt:
    """One release format: how to write a clean file, read it, and where its fields are.

    ``rows`` go to the writer; ``expected`` is what the reader gives for them. Data rows 1 and 2
    are the ones the row cases corrupt; ``expected[i]`` is the record of data row ``i``.
    TSV formats address fields by column index, JSON formats by key.
    """

    name: str
    filename: str
    kind: str  # "tsv" | "jsonl" | "jsonl.gz"
    write: Callable[[Path, list[dict]], None]
    read: Reader
    rows: list[dict]
    expected: list[dict]
    header: bool = False
    missing: Any = -1  # the column index / key a "missing column" row lacks
    text: tuple[tuple[Any, ...], ...] = ()  # variants: the fields blanked for "empty text"
    label: Any = None  # label column index / key (None: no label)
    unknown_label: Any = None
    wrong_labels: tuple[tuple[Any, str], ...] = ()  # (value, message fragment)
    wrong_text: tuple[tuple[Any, str], ...] = ()  # mC4: a text of the wrong type


def _tsv(name: str, read: Reader, write: Callable, rows: list[dict], **kw: Any) -> Fmt:
    return Fmt(name=name, kind="tsv", read=read, write=write, rows=rows, **kw)


XNLI_ROWS = [
    {"premise": "Žluťoučký kůň", "hypothesis": "世界", "label": "entailment"},
    {"premise": "p1", "hypothesis": "h1", "label": "neutral"},
    {"premise": "p2", "hypothesis": "h2", "label": "contradiction"},
]
PAWSX_ROWS = [
    {"sentence1": "Ça va", "sentence2": "我很好", "label": 1},
    {"sentence1": "s1", "sentence2": "t1", "label": 0},
    {"sentence1": "s2", "sentence2": "t2", "label": 1},
]
XNLI_NUMBER = (("1", "is a number"), ("0.0", "is a number"))
DIGITS_WRONG = (("1.0", "is not an integer"), ("-1", "is not an integer"))


def _xglue(dataset: str) -> tuple[list[dict], list[dict]]:
    cols = formats.XGLUE_COLUMNS[dataset]
    label_field = formats.LABEL_FIELD[dataset]
    names = formats.LABEL_NAMES[dataset]
    rows = []
    for i in range(3):
        r = {c: f"{c} {i} – ü" for c in cols}
        r[label_field] = names[i % len(names)]
        rows.append(r)
    if dataset == "wpr":  # rows 0 and 1 share a query, so skipping rows 1 and 2 keeps the ids
        rows[1]["query"] = rows[0]["query"]
        expected = [{"query_id": q, **r} for q, r in zip((0, 0, 1), rows, strict=True)]
        return rows, expected
    return rows, [dict(r) for r in rows]


def _xglue_fmt(dataset: str, **kw: Any) -> Fmt:
    rows, expected = _xglue(dataset)
    return _tsv(
        f"xglue_{dataset}",
        lambda p, **k: formats.read_xglue_tsv(p, dataset, **k),
        lambda p, rs: formats.write_xglue_tsv(p, dataset, rs),
        rows,
        expected=expected,
        filename=f"xglue.{dataset}.de.dev",
        label=len(formats.XGLUE_COLUMNS[dataset]) - 1,
        **kw,
    )


CTK_ROWS = [
    {"id": 1, "claim": "Praha je hlavní město.", "evidence": "Praha…", "label": "SUPPORTS"},
    {"id": 2, "claim": "c1", "evidence": "e1", "label": "REFUTES"},
    {"id": 3, "claim": "c2", "evidence": "e2", "label": "NOT ENOUGH INFO"},
]
CTK_WRONG = (
    (1, "is the integer 1"),
    (None, "is a JSON null"),
    (["SUPPORTS"], "is a JSON array"),
    (True, "is a JSON boolean"),
)


def _write_ctkfacts_export(path: Path, rows: list[dict]) -> None:
    """A raw CTKFacts export: evidence as a list of evidence sets, and keys the reader ignores."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            obj = {**r, "evidence": [[r["evidence"]], [r["evidence"]]], "verifiable": "VERIFIABLE"}
            f.write(json.dumps({**obj, "mutated_from": None}, ensure_ascii=False) + "\n")


FORMATS: list[Fmt] = [
    _tsv(
        "xnli_xtreme",
        formats.read_xnli_pairs_tsv,
        formats.write_xnli_pairs_tsv,
        XNLI_ROWS,
        expected=XNLI_ROWS,
        filename="dev-de.tsv",
        text=((0,), (1,)),
        label=2,
        unknown_label="maybe",
        wrong_labels=XNLI_NUMBER,
    ),
    _tsv(
        "xnli_mt",
        formats.read_xnli_mt_train,
        formats.write_xnli_mt_train,
        XNLI_ROWS,
        expected=XNLI_ROWS,
        filename="multinli.train.de.tsv",
        header=True,
        text=((0,), (1,)),
        label=2,
        unknown_label="maybe",
        wrong_labels=XNLI_NUMBER,
    ),
    _tsv(
        "xnli_1_0",
        lambda p, **k: formats.read_xnli_1_0(p, "de", **k),
        formats.write_xnli_1_0,
        [{**r, "language": "de"} for r in XNLI_ROWS] + [{**XNLI_ROWS[0], "language": "fr"}],
        expected=XNLI_ROWS,
        filename="xnli.dev.tsv",
        header=True,
        text=((2,), (3,)),
        label=1,
        unknown_label="maybe",
        wrong_labels=XNLI_NUMBER,
    ),
    _tsv(
        "pawsx_xtreme",
        formats.read_pawsx_xtreme_tsv,
        formats.write_pawsx_xtreme_tsv,
        PAWSX_ROWS,
        expected=PAWSX_ROWS,
        filename="dev-de.tsv",
        text=((0,), (1,)),
        label=2,
        unknown_label="2",
        wrong_labels=DIGITS_WRONG + (("same", "is not an integer"),),
    ),
    _tsv(
        "pawsx_original",
        formats.read_pawsx_original_tsv,
        formats.write_pawsx_original_tsv,
        PAWSX_ROWS,
        expected=PAWSX_ROWS,
        filename="dev_2k.tsv",
        header=True,
        text=((1,), (2,), (1, 2)),
        label=3,
        unknown_label="2",
        wrong_labels=DIGITS_WRONG,
    ),
    _xglue_fmt("nc", text=((0, 1),), unknown_label="weather", wrong_labels=(("3", "is a number"),)),
    _xglue_fmt(
        "qadsm", text=((0,), (1, 2)), unknown_label="Okay", wrong_labels=(("1", "is a number"),)
    ),
    _xglue_fmt("qam", text=((0,), (1,)), unknown_label="2", wrong_labels=DIGITS_WRONG),
    _xglue_fmt(
        "wpr",
        text=((0,), (1, 2)),
        unknown_label="5",
        wrong_labels=DIGITS_WRONG + (("Perfect", "is not an integer"),),
    ),
    CTK_NLI := Fmt(
        name="ctkfacts_nli",
        filename="train.jsonl",
        kind="jsonl",
        write=formats.write_ctkfacts_jsonl,
        read=formats.read_ctkfacts_jsonl,
        rows=CTK_ROWS,
        expected=[{**r, "evidence": [r["evidence"]]} for r in CTK_ROWS],
        missing="claim",
        text=(("claim",),),
        label="label",
        unknown_label="MAYBE",
        wrong_labels=CTK_WRONG,
    ),
    dataclasses.replace(CTK_NLI, name="ctkfacts_export", filename="export_08-30-2021.jsonl",
                        write=_write_ctkfacts_export),
    Fmt(
        name="mc4",
        filename="c4-cs-validation.tfrecord-00000-of-00001.json.gz",
        kind="jsonl.gz",
        write=lambda p, rs: formats.write_mc4_json_gz(p, [r["text"] for r in rs]),
        read=lambda p, **k: formats.read_mc4_json_gz([p], **k),
        rows=[{"text": "Dobrý den, světe."}, {"text": "t1"}, {"text": "t2"}],
        expected=[{"text": "Dobrý den, světe."}, {"text": "t1"}, {"text": "t2"}],
        missing="text",
        text=(("text",),),
        wrong_text=((42, "is a JSON number"), (None, "is a JSON null"), (["t"], "is a JSON array")),
    ),
]
FMT = {f.name: f for f in FORMATS}

# --------------------------------------------------------------------------- the cases

# (case, title in the docs, extra) -- the issue's eleven cases, then further ones.
CASES = [
    ("missing_column", "missing column", False),
    ("extra_column", "extra column", False),
    ("empty_text", "empty text", False),
    ("unknown_label", "unknown label", False),
    ("wrong_type_label", "label of the wrong type", False),
    ("invalid_utf8", "invalid UTF-8", False),
    ("bom", "UTF-8 BOM", False),
    ("crlf", "CRLF line ends", False),
    ("trailing_blank_line", "blank line at the end", False),
    ("truncated_gzip", "truncated gzip", False),
    ("empty_file", "empty file", False),
    ("cr_line_ends", "CR-only line ends", True),
    ("blank_line_inside", "blank line between rows", True),
    ("header_only", "header but no rows", True),
    ("header_missing_column", "header lacks a column", True),
    ("header_invalid_utf8", "header not UTF-8", True),
    ("not_gzip", "not gzip at all", True),
    ("no_row_in_language", "no row in the language", True),
]
CASE_TITLE = {c: t for c, t, _ in CASES}


def outcome(fmt: Fmt, case: str) -> tuple[str, str]:
    """(kind, message fragment or n/a reason) of ``case`` in ``fmt``: the matrix itself."""
    tsv, gz = fmt.kind == "tsv", fmt.kind == "jsonl.gz"
    if case in ("bom", "crlf", "trailing_blank_line", "cr_line_ends", "blank_line_inside"):
        return READ, ""
    if case == "missing_column":
        return ROW, "missing field(s)"
    if case == "extra_column":
        return (ROW, "extra field(s)") if tsv else (READ, "other keys are ignored")
    if case == "empty_text":
        return ROW, "empty text in"
    if case == "unknown_label":
        return (ROW, "unknown label") if fmt.label is not None else (NA, "no label")
    if case == "wrong_type_label":
        return ROW, "(see variants)"
    if case == "invalid_utf8":
        return ROW, "not valid UTF-8"
    if case in ("truncated_gzip", "not_gzip"):
        return (FILE, "truncated or corrupt gzip data") if gz else (NA, "not compressed")
    if case == "empty_file":
        return FILE, "is empty (expected a header line)" if fmt.header else "is empty (expected"
    if case == "header_only":
        return (FILE, "has a header but no rows") if fmt.header else (NA, "no header")
    if case == "header_missing_column":
        return (FILE, "(header): columns") if fmt.header else (NA, "no header")
    if case == "header_invalid_utf8":
        return (FILE, "(header): not valid UTF-8") if fmt.header else (NA, "no header")
    if case == "no_row_in_language":
        if fmt.name == "xnli_1_0":
            return FILE, "has no row in language 'de'"
        return NA, "one language per file"
    raise KeyError(case)


def variants(fmt: Fmt, case: str) -> list[tuple[str, Any, str]]:
    """(variant id, argument, message fragment) of a case: several wrong types, blanked fields."""
    if case == "wrong_type_label":
        pairs = fmt.wrong_labels or fmt.wrong_text
        return [(json.dumps(v), v, frag) for v, frag in pairs]
    if case == "empty_text":
        blank = "" if fmt.kind == "tsv" else " "
        return [("+".join(map(str, cols)), (cols, blank), "empty text in") for cols in fmt.text]
    if case == "trailing_blank_line":
        return [("empty", b"\n", ""), ("spaces", b"   \n", "")]
    return [("", None, outcome(fmt, case)[1])]


# --------------------------------------------------------------------------- building files

WHERE = "dataset {!r} (bad-input matrix)"


def _where(fmt: Fmt) -> str:
    return WHERE.format(fmt.name)


def _clean_lines(fmt: Fmt, tmp_path: Path) -> list[bytes]:
    """The clean file's lines (decompressed), split at ``\\n`` (the writers' line end)."""
    path = tmp_path / "clean" / fmt.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.write(path, fmt.rows)
    data = path.read_bytes()
    if fmt.kind == "jsonl.gz":
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _mutate_row(fmt: Fmt, case: str, arg: Any, line: bytes) -> bytes:
    """One data row with the fault of ``case`` (``arg``: the variant's value)."""
    if case == "invalid_utf8":
        return line[:1] + b"\xff" + line[1:]
    if fmt.kind == "tsv":
        fields = line.decode("utf-8").split("\t")
        if case == "missing_column":
            del fields[fmt.missing]
        elif case == "extra_column":
            fields.append("extra")
        elif case == "empty_text":
            cols, blank = arg
            for c in cols:
                fields[c] = blank
        elif case == "unknown_label":
            fields[fmt.label] = fmt.unknown_label
        elif case == "wrong_type_label":
            fields[fmt.label] = arg
        else:
            raise KeyError(case)
        return "\t".join(fields).encode("utf-8")
    obj = json.loads(line)
    if case == "missing_column":
        del obj[fmt.missing]
    elif case == "extra_column":
        obj["extra_key"] = ["x"]
    elif case == "empty_text":
        keys, blank = arg
        for k in keys:
            obj[k] = blank
    elif case == "unknown_label":
        obj[fmt.label] = fmt.unknown_label
    elif case == "wrong_type_label":
        obj[fmt.label if fmt.label is not None else "text"] = arg
    else:
        raise KeyError(case)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _assemble(fmt: Fmt, lines: list[bytes], end: bytes = b"\n") -> bytes:
    data = b"".join(line + end for line in lines)
    return gzip.compress(data, mtime=0) if fmt.kind == "jsonl.gz" else data


def make_file(
    fmt: Fmt, case: str, arg: Any, tmp_path: Path, bad_rows: tuple[int, ...] = (1,)
) -> Path:
    """A file of ``fmt`` with the fault of ``case``; row cases corrupt the data rows ``bad_rows``."""
    lines = _clean_lines(fmt, tmp_path)
    first = 1 if fmt.header else 0  # index of data row 0 in ``lines``
    kind = outcome(fmt, case)[0]
    if kind == ROW or case == "extra_column":
        for i in bad_rows:
            lines[first + i] = _mutate_row(fmt, case, arg, lines[first + i])
        data = _assemble(fmt, lines)
    elif case == "bom":
        data = _assemble(fmt, [b"\xef\xbb\xbf" + lines[0], *lines[1:]])
    elif case == "crlf":
        data = _assemble(fmt, lines, b"\r\n")
    elif case == "cr_line_ends":
        data = _assemble(fmt, lines, b"\r")
    elif case == "trailing_blank_line":
        data = _assemble(fmt, lines)
        data = (
            gzip.compress(gzip.decompress(data) + arg, mtime=0)
            if fmt.kind == "jsonl.gz"
            else data + arg
        )
    elif case == "blank_line_inside":
        data = _assemble(fmt, [*lines[: first + 1], b"", *lines[first + 1 :]])
    elif case == "truncated_gzip":
        whole = _assemble(fmt, lines)
        data = whole[: len(whole) // 2]
    elif case == "not_gzip":
        data = b"".join(line + b"\n" for line in lines)
    elif case == "empty_file":
        data = b""
    elif case == "header_only":
        data = _assemble(fmt, lines[:1])
    elif case == "header_missing_column":
        header = lines[0].split(b"\t")
        data = _assemble(fmt, [b"\t".join(header[:1] + header[2:]), *lines[1:]])
    elif case == "header_invalid_utf8":
        data = _assemble(fmt, [lines[0][:1] + b"\xff" + lines[0][1:], *lines[1:]])
    elif case == "no_row_in_language":  # keep only the last row (French)
        data = _assemble(fmt, [lines[0], lines[-1]])
    else:
        raise KeyError(case)
    path = tmp_path / "bad" / fmt.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _row_number(fmt: Fmt, data_row: int) -> int:
    """The 1-based line number of data row ``data_row`` (the header is line 1)."""
    return data_row + 1 + (1 if fmt.header else 0)


def _params(kinds: tuple[str, ...]) -> list:
    out = []
    for fmt in FORMATS:
        for case, _, _ in CASES:
            if outcome(fmt, case)[0] not in kinds:
                continue
            for vid, arg, frag in variants(fmt, case):
                out.append(
                    pytest.param(
                        fmt.name, case, arg, frag, id="-".join(filter(None, (fmt.name, case, vid)))
                    )
                )
    return out


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name,case,arg,frag", _params((READ,)))
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_read_cases_give_the_clean_records(
    tmp_path: Path, name: str, case: str, arg: Any, frag: str, mode: str
):
    fmt = FMT[name]
    path = make_file(fmt, case, arg, tmp_path)
    stats = ReadStats(str(path))
    records = list(fmt.read(path, where=_where(fmt), on_bad_row=mode, stats=stats))
    assert records == fmt.expected  # a BOM is not in the first field, nor breaks a header match
    assert stats.rows == len(fmt.expected) and stats.skipped == 0


@pytest.mark.parametrize("name,case,arg,frag", _params((ROW,)))
def test_bad_row_raises_naming_dataset_file_row_and_expectation(
    tmp_path: Path, name: str, case: str, arg: Any, frag: str
):
    fmt = FMT[name]
    path = make_file(fmt, case, arg, tmp_path)
    with pytest.raises(DataFormatError) as e:
        list(fmt.read(path, where=_where(fmt)))
    msg = str(e.value)
    assert msg.startswith(f"{_where(fmt)}: {path}, row {_row_number(fmt, 1)}: "), msg
    assert frag in msg and "; expected " in msg, msg
    assert msg.endswith('(pass on_bad_row="skip" to drop such rows)')


@pytest.mark.parametrize("name,case,arg,frag", _params((ROW,)))
def test_bad_rows_skipped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, case: str, arg: Any, frag: str
):
    fmt = FMT[name]
    path = make_file(fmt, case, arg, tmp_path, bad_rows=(1, 2))
    stats = ReadStats(str(path))
    with caplog.at_level(logging.WARNING, logger="mtl_jax.data.formats"):
        records = list(fmt.read(path, where=_where(fmt), on_bad_row="skip", stats=stats))
    assert records == fmt.expected[:1] + fmt.expected[3:]
    assert (stats.rows, stats.skipped) == (len(fmt.expected) - 2, 2)
    rows = [_row_number(fmt, 1), _row_number(fmt, 2)]
    assert [p.split(": ", 2)[1] for p in stats.problems] == [f"{path}, row {n}" for n in rows]
    assert all(frag in p for p in stats.problems)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"skipped 2 malformed row(s) of {path}" in m and f"row {rows[0]}:" in m for m in warnings
    ), warnings


@pytest.mark.parametrize("name,case,arg,frag", _params((FILE,)))
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_whole_file_faults_raise_even_when_skipping(
    tmp_path: Path, name: str, case: str, arg: Any, frag: str, mode: str
):
    fmt = FMT[name]
    path = make_file(fmt, case, arg, tmp_path)
    with pytest.raises(DataFormatError) as e:
        list(fmt.read(path, where=_where(fmt), on_bad_row=mode))
    msg = str(e.value)
    assert msg.startswith(f"{_where(fmt)}: {path}"), msg
    assert frag in msg and "expected" in msg, msg


def test_invalid_utf8_message_points_at_the_byte(tmp_path: Path):
    fmt = FMT["xnli_xtreme"]
    path = make_file(fmt, "invalid_utf8", None, tmp_path)
    with pytest.raises(DataFormatError, match=r"row 2: not valid UTF-8 \(byte 0xff at byte 2"):
        list(fmt.read(path, where=_where(fmt)))


def test_truncated_gzip_yields_the_rows_before_the_cut_then_raises(tmp_path: Path):
    """Streaming: rows that decompressed before the cut are yielded, then the file fails."""
    path = tmp_path / "c4-cs.tfrecord-00000-of-00001.json.gz"
    formats.write_mc4_json_gz(path, [f"text number {i} " * 20 for i in range(2000)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    got: list[dict] = []
    with pytest.raises(DataFormatError, match=r", after row \d+: truncated or corrupt gzip"):
        got.extend(formats.read_mc4_json_gz([path], where="mc4", on_bad_row="skip"))
    assert 0 < len(got) < 2000


def test_empty_evidence_is_dropped_and_counted_not_an_error(tmp_path: Path, caplog):
    path = tmp_path / "train.jsonl"
    rows = [dict(CTK_ROWS[0]), {**CTK_ROWS[1], "evidence": " "}]
    formats.write_ctkfacts_jsonl(path, rows)
    stats = ReadStats(str(path))
    with caplog.at_level(logging.INFO, logger="mtl_jax.data.formats"):
        records = list(formats.read_ctkfacts_jsonl(path, where="ctk", stats=stats))
    assert [r["id"] for r in records] == [1]
    assert (stats.rows, stats.skipped, stats.dropped_no_evidence) == (1, 0, 1)
    assert any("dropped 1 claim(s) without evidence" in r.getMessage() for r in caplog.records)


def test_every_case_of_the_issue_is_decided_for_every_format():
    issue_cases = [c for c, _, extra in CASES if not extra]
    assert len(issue_cases) == 11
    for fmt in FORMATS:
        for case, _, _ in CASES:
            kind, why = outcome(fmt, case)
            assert kind in (READ, ROW, FILE, NA) and (kind != NA or why)
            if kind == ROW:
                assert variants(fmt, case), (fmt.name, case)


# --------------------------------------------------------------------------- docs


def render_matrix(extra: bool) -> str:
    """The markdown table of the matrix (``extra``: the further cases) as the docs show it."""
    cases = [(c, t) for c, t, e in CASES if e == extra]
    lines = [
        "| format | " + " | ".join(t for _, t in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for fmt in FORMATS:
        cells = []
        for case, _ in cases:
            kind, why = outcome(fmt, case)
            cells.append(f"n/a ({why})" if kind == NA else kind)
        lines.append(f"| `{fmt.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_list_the_matrix_and_its_outcomes():
    text = DOCS.read_text(encoding="utf-8")
    for extra in (False, True):
        assert render_matrix(extra) in text, (
            f"docs/data_formats.md is out of date; paste:\n{render_matrix(extra)}"
        )

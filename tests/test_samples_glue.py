"""The bundled GLUE and CS224N samples have the release layouts (read here with the csv module
and pandas, independently of the project's readers and of the generator's code).

Layout facts restated here from the public descriptions: GLUE's TSVs as ``download_glue_data.py``
leaves them (CoLA train/dev without a header, label-free test files, MRPC's byte-order mark, MNLI's
five files, fields never quoted), and the CS224N minBERT ``data/*.csv`` files (tab-separated,
pandas index column, ``id`` + text + label columns, Quora labels as ``0.0``/``1.0``).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "mtl_jax" / "data" / "assets" / "samples"
GLUE = SAMPLES / "glue"
CS224N = SAMPLES / "cs224n"

MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
             "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
             "sentence2"]
# task folder -> (train/dev header or None, test header, label column, label set)
GLUE_LAYOUT = {
    "CoLA": (None, ["index", "sentence"], 1, {"0", "1"}),
    "SST-2": (["sentence", "label"], ["index", "sentence"], "label", {"0", "1"}),
    "MRPC": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], "Quality", {"0", "1"}),
    "QQP": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["id", "question1", "question2"], "is_duplicate", {"0", "1"}),
    "STS-B": (["index", "genre", "filename", "year", "old_index", "source1", "source2",
               "sentence1", "sentence2", "score"],
              ["index", "genre", "filename", "year", "old_index", "source1", "source2",
               "sentence1", "sentence2"], "score", None),
    "QNLI": (["index", "question", "sentence", "label"], ["index", "question", "sentence"],
             "label", {"entailment", "not_entailment"}),
    "RTE": (["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"],
            "label", {"entailment", "not_entailment"}),
    "WNLI": (["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"],
             "label", {"0", "1"}),
}
NLI3 = {"entailment", "neutral", "contradiction"}
MATCHED = {"fiction", "government", "slate", "telephone", "travel"}
MISMATCHED = {"facetoface", "letters", "nineeleven", "oup", "verbatim"}


def _tsv(path: Path) -> list[list[str]]:
    """GLUE readers split on tabs with quoting off (csv.QUOTE_NONE)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _dict_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CS224N loaders' parse: csv.DictReader with a tab delimiter (CSV quoting on)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


# --------------------------------------------------------------------------------------- GLUE


def test_glue_folders_hold_the_release_files():
    expected = {folder: {"train.tsv", "dev.tsv", "test.tsv"} for folder in GLUE_LAYOUT}
    expected["MNLI"] = {"train.tsv", "dev_matched.tsv", "dev_mismatched.tsv",
                        "test_matched.tsv", "test_mismatched.tsv"}
    found = {d.name: {f.name for f in d.iterdir()} for d in GLUE.iterdir()}
    assert found == expected


@pytest.mark.parametrize("folder", sorted(GLUE_LAYOUT))
def test_glue_train_and_dev_layout(folder):
    header, _, label_col, labels = GLUE_LAYOUT[folder]
    for split in ("train", "dev"):
        rows = _tsv(GLUE / folder / f"{split}.tsv")
        if header is None:  # CoLA: no header; source, label, original mark, sentence
            body = rows
            assert rows[0][1] in {"0", "1"}, rows[0]
            assert all(len(r) == 4 for r in body)
            assert all(r[2] == ("" if r[1] == "1" else "*") for r in body)
            assert all(re.fullmatch(r"[a-z]+\d+", r[0]) for r in body)
            values = [r[1] for r in body]
        else:
            got = [rows[0][0].removeprefix("\ufeff"), *rows[0][1:]]
            assert got == header
            body = rows[1:]
            assert all(len(r) == len(header) for r in body), Counter(map(len, body))
            values = [r[header.index(label_col)] for r in body]
        assert 20 <= len(body) <= 60
        if labels is None:  # STS-B: similarity scores written with three decimals
            assert all(re.fullmatch(r"\d\.\d{3}", v) and 0 <= float(v) <= 5 for v in values)
            assert max(map(float, values)) >= 4 and min(map(float, values)) <= 1
        else:
            assert set(values) == labels, f"{folder}/{split}: {Counter(values)}"
        # No empty field (CoLA's original-judgment column is empty for acceptable sentences).
        assert all(v.strip() for r in body for i, v in enumerate(r) if header or i != 2)


@pytest.mark.parametrize("folder", sorted(GLUE_LAYOUT))
def test_glue_test_files_are_label_free_with_an_index(folder):
    train_header, header, label_col, _ = GLUE_LAYOUT[folder]
    rows = _tsv(GLUE / folder / "test.tsv")
    assert rows[0] == header
    assert all(len(r) == len(header) for r in rows[1:])
    assert [int(r[0]) for r in rows[1:]] == list(range(len(rows) - 1))
    assert 3 <= len(rows) - 1 <= 20
    if train_header is not None:
        assert label_col not in header


def test_mrpc_train_and_dev_keep_the_source_byte_order_mark():
    for split in ("train", "dev"):
        assert (GLUE / "MRPC" / f"{split}.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    assert (GLUE / "MRPC" / "test.tsv").read_bytes().startswith(b"index\t")


def _tree_leaves(parse: str) -> list[str]:
    return re.findall(r"\(\S+ ([^()\s]+)\)", parse)


@pytest.mark.parametrize("name", ["train", "dev_matched", "dev_mismatched", "test_matched",
                                  "test_mismatched"])
def test_mnli_files(name):
    rows = _tsv(GLUE / "MNLI" / f"{name}.tsv")
    kind = name.split("_")[0]
    header = MNLI_HEAD + {"train": ["label1", "gold_label"],
                          "dev": [f"label{i}" for i in range(1, 6)] + ["gold_label"],
                          "test": []}[kind]
    assert rows[0] == header
    body = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    genres = {r["genre"] for r in body}
    assert genres <= (MISMATCHED if name.endswith("mismatched") else MATCHED), genres
    for r in body:
        for side in ("sentence1", "sentence2"):
            binary = r[f"{side}_binary_parse"]
            assert binary.count("(") == binary.count(")")
            tokens = binary.replace("(", " ").replace(")", " ").split()
            assert tokens == _tree_leaves(r[f"{side}_parse"])
            # The parse tokens spell the sentence (punctuation split off).
            assert "".join(tokens) == r[side].replace(" ", "")
    if kind == "test":
        assert all(r["pairID"] == r["promptID"] for r in body)
        return
    gold = [r["gold_label"] for r in body]
    assert set(gold) == NLI3, Counter(gold)
    for r in body:
        assert r["pairID"] == r["promptID"] + r["label1"][0]
        if kind == "dev":
            votes = Counter(r[f"label{i}"] for i in range(1, 6))
            assert votes.most_common(1)[0] == (r["gold_label"], max(votes.values()))
            assert votes[r["gold_label"]] >= 3


def test_glue_fields_may_start_with_a_double_quote():
    """Some fields open with '"' (as in the real files); a CSV-quoting reader alters them (drops
    the quotes, or swallows tabs up to the next quote), which is why GLUE readers use
    QUOTE_NONE."""
    path = GLUE / "QQP" / "train.tsv"
    rows = _tsv(path)
    assert any(v.startswith('"') for r in rows[1:] for v in r)
    with open(path, encoding="utf-8", newline="") as f:
        quoting = list(csv.reader(f, delimiter="\t"))
    assert quoting != rows


@pytest.mark.parametrize("folder", sorted(GLUE_LAYOUT))
def test_glue_files_read_with_pandas(folder):
    header = GLUE_LAYOUT[folder][0]
    for split in ("train", "dev", "test"):
        path = GLUE / folder / f"{split}.tsv"
        has_header = header is not None or split == "test"
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False,
                            header=0 if has_header else None, encoding="utf-8-sig")
        rows = _tsv(path)
        assert len(frame) == len(rows) - has_header
        assert frame.shape[1] == len(rows[0])


def test_sst2_labels_follow_the_review_adjectives():
    """Independent of the generator: the label is the polarity of the adjectives."""
    positive = {"charming", "enjoyable", "solid", "likeable", "warm", "pleasant", "brilliant",
                "wonderful", "superb", "dazzling", "remarkable", "magnificent"}
    negative = {"unbearable", "awful", "painful", "dreadful", "unwatchable", "miserable", "dull",
                "clumsy", "tedious", "flat", "forgettable", "messy"}
    for split in ("train", "dev"):
        for sentence, label in _tsv(GLUE / "SST-2" / f"{split}.tsv")[1:]:
            assert sentence.endswith(" ") and sentence == sentence.lower()
            words = set(sentence.split())
            assert bool(words & positive) == (label == "1"), sentence
            assert bool(words & negative) == (label == "0"), sentence


def test_mrpc_paraphrases_reorder_the_same_words():
    for split in ("train", "dev"):
        for label, id1, id2, s1, s2 in _tsv(GLUE / "MRPC" / f"{split}.tsv")[1:]:
            assert id1.isdigit() and id2.isdigit() and id1 != id2
            same = Counter(re.findall(r"\w+", s1.lower())) == Counter(
                re.findall(r"\w+", s2.lower()))
            assert same == (label == "1"), (s1, s2)


# ------------------------------------------------------------------------------------- CS224N

CS224N_FILES = {
    "ids-sst": (["", "id", "sentence", "sentiment"], "sentiment", {"0", "1", "2", "3", "4"}),
    "quora": (["", "id", "sentence1", "sentence2", "is_duplicate"], "is_duplicate",
              {"0.0", "1.0"}),
    "sts": (["", "id", "sentence1", "sentence2", "similarity"], "similarity", None),
}


def test_cs224n_files_present():
    expected = {f"{p}-{s}.csv" for p in CS224N_FILES for s in ("train", "dev", "test-student")}
    assert {p.name for p in CS224N.iterdir()} == expected


@pytest.mark.parametrize("prefix", sorted(CS224N_FILES))
@pytest.mark.parametrize("split", ["train", "dev"])
def test_cs224n_labelled_files(prefix, split):
    header, label_col, labels = CS224N_FILES[prefix]
    path = CS224N / f"{prefix}-{split}.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "\t".join(header)
    fields, rows = _dict_rows(path)
    assert fields == header
    assert all(None not in r and all(v is not None for v in r.values()) for r in rows)
    assert all(re.fullmatch(r"[0-9a-f]{25}", r["id"]) for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r[""].isdigit() for r in rows) and len({r[""] for r in rows}) == len(rows)
    values = [r[label_col] for r in rows]
    if labels is None:
        scores = [float(v) for v in values]
        assert all(0.0 <= s <= 5.0 for s in scores)
        assert max(scores) >= 4 and min(scores) <= 1
        # Some scores lie off T5's 0.2 grid, as in the real files.
        assert any(abs(s * 5 - round(s * 5)) > 1e-6 for s in scores)
    else:
        assert set(values) == labels, Counter(values)
        if prefix == "quora":  # the course's loader: int(float(record['is_duplicate']))
            assert {int(float(v)) for v in values} == {0, 1}
    frame = pd.read_csv(path, sep="\t", index_col=0, keep_default_na=False)
    assert list(frame.columns) == header[1:] and len(frame) == len(rows)


@pytest.mark.parametrize("prefix", sorted(CS224N_FILES))
def test_cs224n_test_student_files_are_label_free(prefix):
    header, label_col, _ = CS224N_FILES[prefix]
    fields, rows = _dict_rows(CS224N / f"{prefix}-test-student.csv")
    assert label_col not in fields
    assert "id" in fields and all(re.fullmatch(r"[0-9a-f]{25}", r["id"]) for r in rows)
    text_cols = [c for c in header[2:] if c != label_col]
    assert all(r[c].strip() for r in rows for c in text_cols)
    if prefix == "ids-sst":  # as shipped: an extra column, header "0", "", "id", "sentence"
        assert fields == ["0", "", "id", "sentence"]
        assert [int(r["0"]) for r in rows] == list(range(1, len(rows) + 1))
        assert [float(r[""]) for r in rows] == [float(i) for i in range(len(rows))]
    else:
        assert fields == header[:-1]
    assert 3 <= len(rows) <= 20


def test_cs224n_quoted_fields_round_trip():
    """pandas-style CSV quoting: a question holding '"' is quoted in the file, plain after
    parsing, and a no-quoting split would see the quote characters."""
    _, rows = _dict_rows(CS224N / "quora-train.csv")
    quoted = [r for r in rows if '"' in r["sentence1"] + r["sentence2"]]
    assert quoted
    raw = (CS224N / "quora-train.csv").read_text(encoding="utf-8")
    assert '""' in raw


def test_cs224n_sst_sentiment_follows_the_adjective_grade():
    grades = {
        "0": {"unbearable", "awful", "painful", "dreadful", "unwatchable", "miserable"},
        "1": {"dull", "clumsy", "tedious", "flat", "forgettable", "messy"},
        "2": {"ordinary", "familiar", "modest", "uneven", "predictable", "plain"},
        "3": {"charming", "enjoyable", "solid", "likeable", "warm", "pleasant"},
        "4": {"brilliant", "wonderful", "superb", "dazzling", "remarkable", "magnificent"},
    }
    for split in ("train", "dev"):
        _, rows = _dict_rows(CS224N / f"ids-sst-{split}.csv")
        for r in rows:
            assert r["sentence"].startswith(" ")  # as in the course's files
            words = set(r["sentence"].lower().split())
            hit = {g for g, adjectives in grades.items() if words & adjectives}
            assert hit == {r["sentiment"]}, r

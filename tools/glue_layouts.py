"""Write GLUE and CS224N sample rows in the files' release layouts (used by make_samples.py).

GLUE: the folders ``download_glue_data.py`` leaves (``CoLA/ SST-2/ MRPC/ QQP/ STS-B/ MNLI/ QNLI/
RTE/ WNLI/``), tab-separated with no quoting at all (the benchmark's readers use
``csv.QUOTE_NONE``), a header on every file except CoLA's train/dev, labelled train/dev files and
label-free test files with an ``index`` (QQP: ``id``) column. MRPC's train/dev header keeps the
UTF-8 byte-order mark of Microsoft's source file, which the download script copies through.

CS224N (the minBERT default final project's ``data/``): pandas ``to_csv(sep="\\t")`` output, so
a leading unnamed index column, CSV quoting of fields holding a double quote, labels as pandas
writes them (SST sentiment ints, Quora ``is_duplicate`` floats ``0.0``/``1.0``, STS similarity
floats), and the SST student test file's extra column (header ``0<TAB><TAB>id<TAB>sentence``,
rows ``N<TAB>float<TAB>id<TAB>sentence``) reproduced as the course ships it.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

GLUE_DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
             "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
MRPC_BOM = "\ufeff"

GLUE_HEADERS: dict[str, dict[str, tuple[str, ...] | None]] = {
    # task -> file kind -> header (None: no header line)
    "cola": {"train": None, "test": ("index", "sentence")},
    "sst2": {"train": ("sentence", "label"), "test": ("index", "sentence")},
    "mrpc": {"train": ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
             "test": ("index", "#1 ID", "#2 ID", "#1 String", "#2 String")},
    "qqp": {"train": ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            "test": ("id", "question1", "question2")},
    "stsb": {"train": ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                       "sentence1", "sentence2", "score"),
             "test": ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                      "sentence1", "sentence2")},
    "mnli": {"train": ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                       "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                       "sentence1", "sentence2", "label1", "gold_label"),
             "dev": ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                     "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5",
                     "gold_label"),
             "test": ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                      "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                      "sentence1", "sentence2")},
    "qnli": {"train": ("index", "question", "sentence", "label"),
             "test": ("index", "question", "sentence")},
    "rte": {"train": ("index", "sentence1", "sentence2", "label"),
            "test": ("index", "sentence1", "sentence2")},
    "wnli": {"train": ("index", "sentence1", "sentence2", "label"),
             "test": ("index", "sentence1", "sentence2")},
}
"""Headers per task: ``train`` also stands for dev (except MNLI, whose dev files have five
annotator labels)."""

CS224N_HEADERS: dict[str, tuple[str, ...]] = {
    "sst": ("", "id", "sentence", "sentiment"),
    "sst-test": ("0", "", "id", "sentence"),
    "quora": ("", "id", "sentence1", "sentence2", "is_duplicate"),
    "quora-test": ("", "id", "sentence1", "sentence2"),
    "sts": ("", "id", "sentence1", "sentence2", "similarity"),
    "sts-test": ("", "id", "sentence1", "sentence2"),
}


def _glue_value(value: object, path: Path) -> str:
    text = str(value)
    if any(c in text for c in "\t\r\n"):
        raise ValueError(f"cannot write {text[:40]!r} to {path}: GLUE TSV fields hold no "
                         "tabs or line breaks")
    return text


def write_glue_tsv(path: Path, header: Sequence[str] | None, rows: Iterable[Sequence[object]],
                   *, bom: bool = False) -> None:
    """Tab-joined lines, no quoting (a field may start with a double quote, as in GLUE)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if header is not None:
            f.write((MRPC_BOM if bom else "") + "\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_glue_value(v, path) for v in row) + "\n")


def write_pandas_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """What ``DataFrame.to_csv(path, sep="\\t")`` writes: minimal CSV quoting, ``\\n`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _hex_id(rng: random.Random) -> str:
    """A 25-hex-digit row id like the CS224N files' ``id`` column."""
    return f"{rng.getrandbits(100):025x}"


# --------------------------------------------------------------------------------------------
# MNLI parse columns (synthetic but well-formed trees over the sentence's tokens)


def _tokens(sentence: str) -> list[str]:
    out = []
    for word in sentence.replace(",", " ,").replace('"', ' " ').split():
        if word.endswith(".") and len(word) > 1:
            out += [word[:-1], "."]
        else:
            out.append(word)
    return out


def _binary_parse(tokens: list[str]) -> str:
    """Right-branching binary bracketing: ``( a ( b ( c d ) ) )``."""
    if len(tokens) == 1:
        return tokens[0]
    if len(tokens) == 2:
        return f"( {tokens[0]} {tokens[1]} )"
    return f"( {tokens[0]} {_binary_parse(tokens[1:])} )"


def _parse(tokens: list[str], pos: dict[str, str]) -> str:
    leaves = " ".join(f"({pos.get(t, 'NN')} {t})" for t in tokens)
    return f"(ROOT (S {leaves}))"


def _mnli_parses(s1: str, s2: str, pos: dict[str, str]) -> list[str]:
    t1, t2 = _tokens(s1), _tokens(s2)
    return [_binary_parse(t1), _binary_parse(t2), _parse(t1, pos), _parse(t2, pos)]


# --------------------------------------------------------------------------------------------
# GLUE


RecordsFn = Callable[..., list[dict]]


def write_glue(root: Path, records: RecordsFn, rows: dict[str, int], seed: Callable[..., int],
               pos: dict[str, str]) -> None:
    """All nine GLUE task folders under ``root``; ``records(task, split, n, seed, matched=)``
    makes the rows, ``rows`` maps train/dev/test to row counts, ``seed(*parts)`` seeds a file.
    """
    for task, folder in GLUE_DIRS.items():
        if task == "mnli":
            _write_mnli(root / folder, records, rows, seed, pos)
            continue
        for split in ("train", "dev", "test"):
            recs = records(task, split, rows[split], seed("glue", task, split))
            rng = random.Random(seed("glue-ids", task, split))
            kind = "test" if split == "test" else "train"
            header = GLUE_HEADERS[task][kind]
            path = root / folder / f"{split}.tsv"
            write_glue_tsv(path, header, _glue_rows(task, kind, recs, rng),
                           bom=(task == "mrpc" and kind == "train"))


def _glue_rows(task: str, kind: str, recs: list[dict], rng: random.Random) -> list[list]:
    test = kind == "test"
    out: list[list] = []
    if task == "cola":
        for i, r in enumerate(recs):
            out.append([i, r["sentence"]] if test else
                       [r["source"], r["label"], "" if r["label"] == 1 else "*", r["sentence"]])
    elif task == "sst2":
        for i, r in enumerate(recs):
            out.append([i, r["sentence"]] if test else [r["sentence"], r["label"]])
    elif task == "mrpc":
        for i, r in enumerate(recs):
            id1, id2 = rng.sample(range(100_000, 4_000_000), 2)
            pair = [id1, id2, r["sentence1"], r["sentence2"]]
            out.append([i, *pair] if test else [r["label"], *pair])
    elif task == "qqp":
        qids: dict[str, int] = {}
        ids = rng.sample(range(400_000), len(recs))
        for i, r in enumerate(recs):
            if test:
                out.append([i, r["question1"], r["question2"]])
                continue
            q1 = qids.setdefault(r["question1"], len(qids) + 1)
            q2 = qids.setdefault(r["question2"], len(qids) + 1)
            out.append([ids[i], q1, q2, r["question1"], r["question2"], r["label"]])
    elif task == "stsb":
        for i, r in enumerate(recs):
            row = [i, r["genre"], r["filename"], r["year"], f"{i + 1:04d}", "none", "none",
                   r["sentence1"], r["sentence2"]]
            out.append(row if test else [*row, f"{r['score']:.3f}"])
    elif task == "qnli":
        for i, r in enumerate(recs):
            row = [i, r["question"], r["sentence"]]
            out.append(row if test else [*row, r["label"]])
    else:  # rte, wnli
        for i, r in enumerate(recs):
            row = [i, r["sentence1"], r["sentence2"]]
            out.append(row if test else [*row, r["label"]])
    return out


_MNLI_FILES = (  # file, header kind, matched genres?
    ("train", "train", True),
    ("dev_matched", "dev", True),
    ("dev_mismatched", "dev", False),
    ("test_matched", "test", True),
    ("test_mismatched", "test", False),
)
_LETTER = {"entailment": "e", "neutral": "n", "contradiction": "c"}


def _write_mnli(folder: Path, records: RecordsFn, rows: dict[str, int],
                seed: Callable[..., int], pos: dict[str, str]) -> None:
    for name, kind, matched in _MNLI_FILES:
        recs = records("mnli", name, rows[kind], seed("glue", "mnli", name), matched=matched)
        rng = random.Random(seed("glue-ids", "mnli", name))
        prompts = rng.sample(range(1, 150_000), len(recs))
        out = []
        for i, (r, prompt) in enumerate(zip(recs, prompts, strict=True)):
            # Train/dev pair ids end in the letter of the label the hypothesis was written for;
            # test ids here are the prompt id alone (no label hint in a label-free file).
            pair_id = f"{prompt}{_LETTER[r['label']]}" if kind != "test" else str(prompt)
            row = [i, prompt, pair_id, r["genre"],
                   *_mnli_parses(r["premise"], r["hypothesis"], pos),
                   r["premise"], r["hypothesis"]]
            if kind == "train":
                row += [r["label"], r["label"]]
            elif kind == "dev":
                row += [*_annotators(r["label"], rng), r["label"]]
            out.append(row)
        write_glue_tsv(folder / f"{name}.tsv", GLUE_HEADERS["mnli"][kind], out)


def _annotators(gold: str, rng: random.Random) -> list[str]:
    """Five annotator labels whose majority (3 or more) is the gold label."""
    agree = rng.randint(3, 5)
    others = [lab for lab in _LETTER if lab != gold]
    labels = [gold] * agree + [rng.choice(others) for _ in range(5 - agree)]
    return [labels[0], *rng.sample(labels[1:], 4)]  # label1 is the writer's own label


# --------------------------------------------------------------------------------------------
# CS224N


def write_cs224n(root: Path, records: RecordsFn, rows: dict[str, dict[str, int]],
                 seed: Callable[..., int]) -> None:
    """The nine CS224N files under ``root``; ``rows`` maps sst/quora/sts to per-split counts."""
    for prefix, task, label_field, fmt in (
        ("ids-sst", "cs224n_sst", "sentiment", str),
        ("quora", "cs224n_quora", "is_duplicate", lambda y: repr(float(y))),
        ("sts", "cs224n_sts", "similarity", lambda y: repr(float(y))),
    ):
        short = prefix.removeprefix("ids-")
        for split in ("train", "dev", "test-student"):
            recs = records(task, split, rows[short][split], seed("cs224n", task, split))
            rng = random.Random(seed("cs224n-ids", task, split))
            texts = [[r["sentence"]] if "sentence" in r else [r["sentence1"], r["sentence2"]]
                     for r in recs]
            # SST keeps pandas' fresh 0..n-1 index; the Quora/STS files keep the index of the
            # shuffled source frame (distinct, unordered ints).
            index = list(range(len(recs))) if short == "sst" else \
                rng.sample(range(1, 405_000 if short == "quora" else 8_700), len(recs))
            out = []
            for i, r, text in zip(index, recs, texts, strict=True):
                ident = _hex_id(rng)
                if split != "test-student":
                    out.append([i, ident, *text, fmt(r[label_field])])
                elif short == "sst":
                    out.append([i + 1, repr(float(i)), ident, *text])
                else:
                    out.append([i, ident, *text])
            key = short if split != "test-student" else f"{short}-test"
            write_pandas_tsv(root / f"{prefix}-{split}.csv", CS224N_HEADERS[key], out)

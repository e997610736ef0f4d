"""Sources and release-format readers, checked against independent parses of the real files."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path

import pytest

from mtl_jax.data import formats, sources
from mtl_jax.data.formats import DataFormatError

XNLI_LANGS = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
PAWSX_LANGS = "de en es fr ja ko zh".split()


@pytest.fixture(autouse=True)
def _fresh_sources():
    sources.reset_sources()
    yield
    sources.reset_sources()


def _csv_rows(path: Path) -> list[list[str]]:
    """Independent TSV parse (csv module, no quoting) as XTREME writes these files."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# --------------------------------------------------------------------------- real local copies


@pytest.mark.parametrize("lang", XNLI_LANGS)
def test_local_xnli_xtreme_dev_sets(shared_data: Path, lang: str):
    sources.set_source("xnli", sources.SourceSpec("local", str(shared_data / "xnli")))
    records = sources.load_records("xnli", lang, "validation")
    rows = _csv_rows(shared_data / "xnli" / f"dev-{lang}.tsv")
    assert len(records) == len(rows) == 2490
    assert [(r["premise"], r["hypothesis"], r["label"]) for r in records] == [
        tuple(r) for r in rows
    ]
    assert {r["label"] for r in records} == {"entailment", "neutral", "contradiction"}
    assert sources.last_read_stats("xnli", lang, "validation").rows == 2490


@pytest.mark.parametrize("lang", PAWSX_LANGS)
def test_local_pawsx_xtreme_dev_sets(shared_data: Path, lang: str):
    sources.set_source("pawsx", str(shared_data / "pawsx"))  # a plain path means "local"
    records = sources.load_records("pawsx", lang, "validation")
    rows = _csv_rows(shared_data / "pawsx" / f"dev-{lang}.tsv")
    assert len(records) == len(rows) == 2000
    assert [(r["sentence1"], r["sentence2"], r["label"]) for r in records] == [
        (a, b, int(c)) for a, b, c in rows
    ]
    assert {r["label"] for r in records} == {0, 1}


def test_local_xnli_only_offers_the_splits_present(shared_data: Path):
    sources.set_source("xnli", str(shared_data / "xnli"))
    assert sources.available_splits("xnli", "de") == ("validation",)
    with pytest.raises(FileNotFoundError) as e:
        sources.load_records("xnli", "en", "test")
    msg = str(e.value)
    assert "'xnli'" in msg and "'test'" in msg and str(shared_data / "xnli" / "test-en.tsv") in msg


def _raw_export(shared_data: Path) -> list[dict]:
    path = shared_data / "ctkfacts" / "export_08-30-2021.jsonl"
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def test_ctkfacts_raw_export_nli_format(shared_data: Path):
    raw = _raw_export(shared_data)
    sources.set_source("ctkfacts_nli", str(shared_data / "ctkfacts"))
    by_split = {s: sources.load_records("ctkfacts_nli", "cs", s) for s in sources.SPLITS}
    ids = {s: [r["id"] for r in recs] for s, recs in by_split.items()}
    # Splits are disjoint and together hold every claim that has evidence.
    all_ids = [i for s in ids.values() for i in s]
    with_evidence = [r for r in raw if any(p for group in r["evidence"] for p in group)]
    assert len(all_ids) == len(set(all_ids)) == len(with_evidence)
    assert set(all_ids) == {r["id"] for r in with_evidence}
    assert len(raw) - len(with_evidence) == sum(
        sources.last_read_stats("ctkfacts_nli", "cs", s).dropped_no_evidence for s in sources.SPLITS
    )
    # Roughly 80/10/10 and claims mutated from one source claim never straddle splits.
    n = len(all_ids)
    assert 0.7 < len(ids["train"]) / n < 0.9 and 0.05 < len(ids["test"]) / n < 0.15
    split_of = {i: s for s, lst in ids.items() for i in lst}
    groups: dict[int, set[str]] = {}
    for r in with_evidence:
        groups.setdefault(r["mutated_from"], set()).add(split_of[r["id"]])
    assert all(len(s) == 1 for s in groups.values())
    # Labels and claims as in the file; evidence flattened per the documented rule.
    raw_by_id = {r["id"]: r for r in raw}
    for recs in by_split.values():
        for rec in recs:
            src = raw_by_id[rec["id"]]
            assert rec["label"] == src["label"] and rec["claim"] == src["claim"]
            paragraphs = [p for group in src["evidence"] for p in group]
            assert set(rec["evidence"]) == set(paragraphs)  # nothing lost, nothing invented
            assert len(rec["evidence"]) == len(set(rec["evidence"]))  # no repeats
            firsts = [p for i, p in enumerate(paragraphs) if p not in paragraphs[:i]]
            assert rec["evidence"] == firsts  # order of first occurrence
    assert {r["label"] for recs in by_split.values() for r in recs} == set(formats.CTKFACTS_LABELS)


def test_ctkfacts_source_takes_the_export_file_itself(shared_data: Path):
    path = shared_data / "ctkfacts" / "export_08-30-2021.jsonl"
    sources.set_source("ctkfacts_xnli", str(path))  # the alias sets ctkfacts_nli's source
    assert sources.get_source("ctkfacts_nli").path == str(path)
    assert len(sources.load_records("ctkfacts_nli", "cs", "validation")) > 100


def test_flatten_evidence_rule():
    raw = [["a", "b"], ["b", "c"], ["a"], []]
    assert formats.flatten_evidence(raw) == ["a", "b", "c"]
    assert formats.flatten_evidence("one premise") == ["one premise"]
    assert formats.evidence_text(["Prvni odstavec. ", "Druhy."]) == "Prvni odstavec. Druhy."


# --------------------------------------------------------------------------- XNLI_mix


def _write_aligned_xnli_mt(root: Path, n_rows: int, langs=XNLI_LANGS) -> None:
    labels = formats.XNLI_LABELS
    for lang in langs:
        records = [
            {"premise": f"{lang}-p{i}", "hypothesis": f"{lang}-h{i}", "label": labels[i % 3]}
            for i in range(n_rows)
        ]
        formats.write_xnli_mt_train(root / "multinli" / f"multinli.train.{lang}.tsv", records)


def test_xnli_mix_partitions_are_disjoint_equal_and_interleaved(tmp_path: Path):
    _write_aligned_xnli_mt(tmp_path, 47)  # 47 = 3 * 15 + 2: the last 2 rows are dropped
    sources.set_source("xnli", str(tmp_path))
    mix = sources.load_xnli_mix()
    assert len(mix) == 45
    by_lang: dict[str, list[int]] = {}
    for k, rec in enumerate(mix):
        lang = rec["language"]
        assert lang == XNLI_LANGS[k % 15]  # round-robin interleaving
        assert rec["source_index"] == k
        # The row really comes from that language's file, same line.
        assert rec["premise"] == f"{lang}-p{k}" and rec["hypothesis"] == f"{lang}-h{k}"
        assert rec["label"] == formats.XNLI_LABELS[k % 3]
        by_lang.setdefault(lang, []).append(rec["source_index"])
    assert set(by_lang) == set(XNLI_LANGS)
    assert {len(v) for v in by_lang.values()} == {3}
    all_rows = [i for v in by_lang.values() for i in v]
    assert len(all_rows) == len(set(all_rows))  # no source example in two languages


def test_xnli_mix_rejects_unaligned_train_sets(tmp_path: Path):
    _write_aligned_xnli_mt(tmp_path, 30)
    formats.write_xnli_mt_train(
        tmp_path / "multinli" / "multinli.train.sw.tsv",
        [{"premise": "p", "hypothesis": "h", "label": "neutral"}] * 29,
    )
    sources.set_source("xnli", str(tmp_path))
    with pytest.raises(DataFormatError, match="line-aligned"):
        sources.load_xnli_mix()


def test_mix_assignment_counts():
    pairs = sources.mix_assignment(392702, 15)  # the XNLI-MT train size
    assert len(pairs) == 392700
    sizes = [0] * 15
    for _, lang in pairs:
        sizes[lang] += 1
    assert set(sizes) == {26180}


def test_bundled_xnli_mix_has_every_language():
    mix = sources.load_xnli_mix()
    counts = {lang: 0 for lang in XNLI_LANGS}
    for rec in mix:
        counts[rec["language"]] += 1
    assert len(set(counts.values())) == 1 and min(counts.values()) > 0
    assert len({r["source_index"] for r in mix}) == len(mix)


# --------------------------------------------------------------------------- malformed rows
# Through ``sources``: the dataset's ``where``, the spec's ``on_bad_row`` and ``last_read_stats``
# reach every dataset's reader. Every format x every kind of bad input: tests/test_bad_input.py.


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


BAD_FILES = {
    # dataset, language, split, relative path, content, bad line numbers, good rows
    "xnli-missing-field": (
        "xnli", "de", "validation", "dev-de.tsv",
        "p1\th1\tentailment\np2\th2\np3\th3\tneutral\n", [2], 2,
    ),
    "xnli-unknown-label": (
        "xnli", "de", "validation", "dev-de.tsv",
        "p1\th1\tentailment\np2\th2\tmaybe\np3\th3\tcontradictory\n", [2], 2,
    ),
    "pawsx-unknown-label": (
        "pawsx", "fr", "test", "test-fr.tsv", "a\tb\t1\nc\td\t2\ne\tf\t0\n", [2], 2,
    ),
    "nc-unknown-category": (
        "nc", "de", "validation", "NC/xglue.nc.de.dev",
        "t1\tb1\tsports\nt2\tb2\tweather\nt3\tb3\tautos\n", [2], 2,
    ),
    "wpr-grade-out-of-range": (
        "wpr", "zh", "test", "WPR/xglue.wpr.zh.test",
        "q\tt\ts\t4\nq\tt2\ts2\t7\nq2\tt\ts\t0\n", [2], 2,
    ),
    "qadsm-missing-field": (
        "qadsm", "fr", "validation", "QADSM/xglue.qadsm.fr.dev",
        "q\tt\td\tGood\nq\tt\tBad\n", [2], 1,
    ),
    "ctkfacts-missing-claim": (
        "ctkfacts_nli", "cs", "train", "train.jsonl",
        '{"id": 1, "label": "SUPPORTS", "claim": "c", "evidence": "e"}\n'
        '{"id": 2, "label": "REFUTES", "evidence": "e"}\n'
        '{"id": 3, "label": "MAYBE", "claim": "c", "evidence": "e"}\n',
        [2, 3], 1,
    ),
    "mc4-missing-text": (
        "mc4", "cs", "validation", "c4-cs-validation.tfrecord-00000-of-00001.json.gz",
        None, [2], 2,
    ),
}  # fmt: skip


def _make_bad_source(tmp_path: Path, case: str):
    dataset, lang, split, rel, content, bad_lines, good = BAD_FILES[case]
    path = tmp_path / rel
    if dataset == "mc4":
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [{"text": "a"}, {"url": "x"}, {"text": "b"}]
        path.write_bytes(gzip.compress("".join(json.dumps(o) + "\n" for o in lines).encode()))
    else:
        _write(path, content)
    sources.set_source(dataset, str(tmp_path))
    return dataset, lang, split, path, bad_lines, good


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_rows_raise_naming_file_and_row(tmp_path: Path, case: str):
    dataset, lang, split, path, bad_lines, _ = _make_bad_source(tmp_path, case)
    with pytest.raises(DataFormatError) as e:
        sources.load_records(dataset, lang, split)
    msg = str(e.value)
    assert str(path) in msg and f"row {bad_lines[0]}:" in msg and repr(dataset) in msg
    assert "expected" in msg


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_rows_skipped_and_counted(tmp_path: Path, case: str, caplog):
    dataset, lang, split, path, bad_lines, good = _make_bad_source(tmp_path, case)
    sources.set_source(dataset, sources.SourceSpec("local", str(tmp_path), on_bad_row="skip"))
    with caplog.at_level(logging.WARNING, logger="mtl_jax.data.formats"):
        records = sources.load_records(dataset, lang, split)
    assert len(records) == good
    stats = sources.last_read_stats(dataset, lang, split)
    assert stats.skipped == len(bad_lines) and stats.rows == good
    assert all(f"row {n}:" in p for n, p in zip(bad_lines, stats.problems, strict=True))
    assert any(f"skipped {len(bad_lines)} malformed row" in r.getMessage() for r in caplog.records)


def test_on_bad_row_per_call_override(tmp_path: Path):
    dataset, lang, split, *_ = _make_bad_source(tmp_path, "xnli-unknown-label")
    assert len(sources.load_records(dataset, lang, split, on_bad_row="skip")) == 2
    with pytest.raises(DataFormatError):
        sources.load_records(dataset, lang, split)


def test_unknown_header_column_is_an_error(tmp_path: Path):
    _write(
        tmp_path / "multinli" / "multinli.train.en.tsv",
        "premise\thypothesis\tlabel\np\th\tneutral\n",
    )
    sources.set_source("xnli", str(tmp_path))
    with pytest.raises(DataFormatError) as e:
        sources.load_records("xnli", "en", "train")
    assert "unknown ['hypothesis']" in str(e.value) and "row 1 (header)" in str(e.value)


def test_missing_directory_and_bad_spec_are_clear(tmp_path: Path):
    sources.set_source("nc", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.load_records("nc", "de", "validation")
    with pytest.raises(ValueError, match="on_bad_row"):
        sources.SourceSpec("local", "x", on_bad_row="ignore")
    with pytest.raises(KeyError, match="unknown dataset"):
        sources.set_source("glue", "bundled")
    with pytest.raises(KeyError, match="train languages"):
        sources.load_records("nc", "de", "train")


# --------------------------------------------------------------------------- release layouts


def test_xglue_release_tree_and_original_layouts(tmp_path: Path):
    """A full ``xglue_full_dataset`` tree (XNLI, PAWSX, NC, QAM, WPR folders) and XNLI 1.0."""
    root = tmp_path / "xglue_full_dataset"
    _write(root / "XNLI" / "de.dev", "p\th\tneutral\n")
    _write(root / "XNLI" / "multinli.train.en.tsv", "premise\thypo\tlabel\np\th\tcontradictory\n")
    _write(root / "PAWSX" / "de" / "dev_2k.tsv", "id\tsentence1\tsentence2\tlabel\n7\ta\tb\t1\n")
    _write(root / "QAM" / "xglue.qam.fr.dev", "q\ta\t0\nq\tb\t1\n")
    _write(root / "WPR" / "xglue.wpr.en.train", "q1\tt\ts\t3\nq2\tt\ts\t0\nq1\tu\tv\t1\n")
    for dataset in ("xnli", "pawsx", "qam", "wpr"):
        sources.set_source(dataset, str(tmp_path))  # the folder above xglue_full_dataset works
    assert sources.load_records("xnli", "de", "validation")[0]["label"] == "neutral"
    assert sources.load_records("xnli", "en", "train")[0]["label"] == "contradiction"
    assert sources.load_records("pawsx", "de", "validation") == [
        {"sentence1": "a", "sentence2": "b", "label": 1}
    ]
    assert [r["label"] for r in sources.load_records("qam", "fr", "validation")] == [
        "False",
        "True",
    ]
    wpr = sources.load_records("wpr", "en", "train")
    assert [(r["query_id"], r["relavance_label"]) for r in wpr] == [
        (0, "Excellent"),
        (1, "Bad"),
        (0, "Fair"),
    ]
    # XNLI 1.0: one file, all languages, header.
    header = "language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tpromptID\tpairID"
    _write(tmp_path / "x10" / "XNLI-1.0" / "xnli.test.tsv",
           header + "\nde\tneutral\t.\t.\t.\t.\tP\tH\t1\t1\nfr\tentailment\t.\t.\t.\t.\tPf\tHf\t1\t1\n")  # fmt: skip
    sources.set_source("xnli", str(tmp_path / "x10"))
    assert sources.load_records("xnli", "fr", "test") == [
        {"premise": "Pf", "hypothesis": "Hf", "label": "entailment"}
    ]


WRITER_CASES = {
    "xnli": ([{"premise": "Žluťoučký kůň", "hypothesis": "世界", "label": "contradiction"}],
             formats.write_xnli_pairs_tsv, formats.read_xnli_pairs_tsv),
    "xnli_mt": ([{"premise": "a", "hypothesis": "b", "label": "contradiction"}],
                formats.write_xnli_mt_train, formats.read_xnli_mt_train),
    "pawsx": ([{"sentence1": "a", "sentence2": "b", "label": 1}],
              formats.write_pawsx_xtreme_tsv, formats.read_pawsx_xtreme_tsv),
    "ctkfacts": ([{"id": 3, "claim": "c", "evidence": ["e1", "e2"], "label": "NOT ENOUGH INFO"}],
                 formats.write_ctkfacts_jsonl, formats.read_ctkfacts_jsonl),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_writers_round_trip(tmp_path: Path, case: str):
    records, write, read = WRITER_CASES[case]
    write(tmp_path / "f", records)
    back = list(read(tmp_path / "f", where=case))
    if case == "ctkfacts":  # the NLI release stores the flattened evidence as one string
        records = [{**records[0], "evidence": ["e1 e2"]}]
    assert back == records


@pytest.mark.parametrize("dataset", ["nc", "qadsm", "qam", "wpr"])
def test_xglue_writer_round_trip(tmp_path: Path, dataset: str):
    cols = formats.XGLUE_COLUMNS[dataset]
    label_field = formats.LABEL_FIELD[dataset]
    records = []
    for i, label in enumerate(formats.LABEL_NAMES[dataset]):
        rec = {c: f"{c}{i % 2}" for c in cols}
        rec[label_field] = label
        if dataset == "wpr":
            rec = {"query_id": i % 2, **rec}
        records.append(rec)
    formats.write_xglue_tsv(tmp_path / "f", dataset, records)
    assert list(formats.read_xglue_tsv(tmp_path / "f", dataset, where=dataset)) == records


def test_mc4_writer_is_byte_deterministic(tmp_path: Path):
    formats.write_mc4_json_gz(tmp_path / "a.json.gz", ["один", "two"])
    formats.write_mc4_json_gz(tmp_path / "b.json.gz", ["один", "two"])
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
    got = list(formats.read_mc4_json_gz([tmp_path / "a.json.gz"], where="mc4"))
    assert got == [{"text": "один"}, {"text": "two"}]


# --------------------------------------------------------------------------- bundled samples


def test_bundled_samples_cover_the_table():
    from mtl_jax.data import registry

    for dataset, table in sources.SPLIT_LANGUAGES.items():
        spec = registry.dataset_spec(dataset)
        label_field = None if spec.kind == "span_corruption" else spec.label_field
        for split, langs in table.items():
            for lang in langs:
                records = sources.load_records(dataset, lang, split)
                assert records, (dataset, lang, split)
                if label_field is None:
                    assert all(r["text"].strip() for r in records)
                    continue
                if spec.kind == "regression":
                    assert all(isinstance(r[label_field], float) for r in records)
                    continue
                labels = {r[label_field] for r in records}
                names = spec.label_names
                assert labels <= (set(range(len(names))) if dataset == "pawsx" else set(names))
                if split == "train":  # every class is learnable from the samples
                    assert len(labels) == len(names), (dataset, lang, labels)


# --------------------------------------------------------------------------- hub (no network)


class _FakeHub:
    """Stands in for ``datasets.load_dataset``: records the call, returns a real in-memory Dataset."""

    def __init__(self, columns: dict, features=None, iterable: bool = False):
        self.columns, self.features, self.iterable = columns, features, iterable
        self.calls: list[tuple] = []

    def __call__(self, repo, config=None, **kwargs):
        import datasets

        self.calls.append((repo, config, kwargs))
        ds = datasets.Dataset.from_dict(self.columns, features=self.features)
        return ds.to_iterable_dataset() if self.iterable else ds


def _class_label_features(text_cols, label_col, names):
    import datasets

    feats = {c: datasets.Value("string") for c in text_cols}
    feats[label_col] = datasets.ClassLabel(names=list(names))
    return datasets.Features(feats)


def test_hub_xnli_calls_the_published_id(monkeypatch):
    import datasets

    fake = _FakeHub(
        {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0]},
        _class_label_features(["premise", "hypothesis"], "label", formats.XNLI_LABELS),
    )
    monkeypatch.setattr(datasets, "load_dataset", fake)
    sources.set_source("xnli", "hub")
    got = sources.load_records("xnli", "de", "validation")
    assert fake.calls == [("facebook/xnli", "de", {"split": "validation", "streaming": False})]
    assert [r["label"] for r in got] == ["contradiction", "entailment"]


def test_hub_xglue_split_names_and_wpr_query_ids(monkeypatch):
    import datasets

    cols = formats.XGLUE_COLUMNS["wpr"]
    fake = _FakeHub(
        {cols[0]: ["a", "b", "a"], cols[1]: ["t"] * 3, cols[2]: ["s"] * 3, cols[3]: [4, 0, 2]},
        _class_label_features(cols[:3], cols[3], formats.WPR_LABELS),
    )
    monkeypatch.setattr(datasets, "load_dataset", fake)
    sources.set_source("wpr", "hub:someone/xglue-copy@refs/convert/parquet")
    got = sources.load_records("wpr", "de", "validation")
    assert fake.calls == [
        ("someone/xglue-copy", "wpr",
         {"split": "validation.de", "streaming": False, "revision": "refs/convert/parquet"})
    ]  # fmt: skip
    assert [(r["query_id"], r["relavance_label"]) for r in got] == [
        (0, "Perfect"),
        (1, "Bad"),
        (0, "Good"),
    ]
    sources.set_source("wpr", "hub")
    sources.load_records("wpr", "en", "train")
    assert fake.calls[-1][:2] == ("hgissbkh/xglue", "wpr") and fake.calls[-1][2]["split"] == "train"


def test_hub_ctkfacts_maps_its_label_order_by_name(monkeypatch):
    """The hub's ClassLabel order (REFUTES, NOT ENOUGH INFO, SUPPORTS) differs from ours."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("int32"),
            "label": datasets.ClassLabel(names=["REFUTES", "NOT ENOUGH INFO", "SUPPORTS"]),
            "evidence": datasets.Value("string"),
            "claim": datasets.Value("string"),
        }
    )
    fake = _FakeHub(
        {"id": [1, 2], "label": [0, 2], "evidence": ["e", "f"], "claim": ["c", "d"]}, features
    )
    monkeypatch.setattr(datasets, "load_dataset", fake)
    sources.set_source("ctkfacts_nli", "hub")
    got = sources.load_records("ctkfacts_nli", "cs", "test")
    assert fake.calls[0][:2] == ("ctu-aic/ctkfacts_nli", None)
    assert [(r["label"], r["evidence"]) for r in got] == [("REFUTES", ["e"]), ("SUPPORTS", ["f"])]


def test_hub_mc4_streams_allenai_c4(monkeypatch):
    import datasets

    fake = _FakeHub({"text": ["d1", "d2", "d3"], "url": ["u"] * 3}, iterable=True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    sources.set_source("mc4", "hub")
    got = list(sources.iter_records("mc4", "cs", "validation", limit=2))
    assert got == [{"text": "d1"}, {"text": "d2"}]
    assert fake.calls == [("allenai/c4", "cs", {"split": "validation", "streaming": True})]


def test_non_hub_sources_never_import_a_loader(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise AssertionError("the network path was taken")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    for dataset in sources.DATASETS:
        lang = sources.SPLIT_LANGUAGES[dataset]["validation"][0]
        assert sources.load_records(dataset, lang, "validation")


def test_bundled_samples_are_regenerated_identically_and_small():
    """tools/make_samples.py is deterministic and the committed files are its current output."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "make_samples.py"
    spec = importlib.util.spec_from_file_location("make_samples", path)
    make_samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_samples)
    assert make_samples.main(["--check"]) == 0
    total = sum(p.stat().st_size for p in sources.SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 5.5 * 1024 * 1024  # 5 MiB multilingual + GLUE/CS224N

"""GLUE and CS224N through the registry: records equal an independent csv read of the bundled
release-layout samples; hub requests use nyu-mll/glue's configs and split names; the mixtures
and GLUE's binary F1 (against scikit-learn)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mtl_jax.data import mixtures, sources, tasks

GLUE = sources.SAMPLES_DIR / "glue"
CS224N = sources.SAMPLES_DIR / "cs224n"

# dataset -> (folder, dev file, our field -> column, label column, label of each raw value)
GLUE_CASES = {
    "glue_sst2": ("SST-2", "dev.tsv", {"sentence": "sentence"}, "label",
                  {"0": "negative", "1": "positive"}),
    "glue_mrpc": ("MRPC", "dev.tsv", {"sentence1": "#1 String", "sentence2": "#2 String"},
                  "Quality", {"0": "not_equivalent", "1": "equivalent"}),
    "glue_qqp": ("QQP", "dev.tsv", {"question1": "question1", "question2": "question2"},
                 "is_duplicate", {"0": "not_duplicate", "1": "duplicate"}),
    "glue_stsb": ("STS-B", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"},
                  "score", float),
    "glue_mnli": ("MNLI", "dev_matched.tsv", {"premise": "sentence1", "hypothesis": "sentence2"},
                  "gold_label", str),
    "glue_mnli_mm": ("MNLI", "dev_mismatched.tsv",
                     {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label", str),
    "glue_qnli": ("QNLI", "dev.tsv", {"question": "question", "sentence": "sentence"}, "label",
                  str),
    "glue_rte": ("RTE", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
                 str),
    "glue_wnli": ("WNLI", "dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"},
                  "label", {"0": "not_entailment", "1": "entailment"}),
}  # fmt: skip


def _tsv(path: Path, header: bool = True) -> list:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    if not header:
        return rows
    return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def _convert(value: str, how) -> object:
    return how[value] if isinstance(how, dict) else how(value)


@pytest.mark.parametrize("dataset", sorted(GLUE_CASES))
def test_glue_records_match_an_independent_read(dataset):
    folder, dev, fields, label_col, how = GLUE_CASES[dataset]
    for split, name in (("train", "train.tsv"), ("validation", dev)):
        if split not in tasks.task_info(f"{dataset}_cls_en").splits:
            continue
        expected = [{**{f: r[c] for f, c in fields.items()}, "label": _convert(r[label_col], how)}
                    for r in _tsv(GLUE / folder / name)]
        assert sources.load_records(dataset, "en", split) == expected, (dataset, split)


def test_glue_cola_has_no_header_and_reads_by_column_index():
    rows = _tsv(GLUE / "CoLA" / "train.tsv", header=False)
    names = {"0": "unacceptable", "1": "acceptable"}
    assert sources.load_records("glue_cola", "en", "train") == [
        {"sentence": r[3], "label": names[r[1]]} for r in rows]


@pytest.mark.parametrize("dataset, stem, fields, label, how", [
    ("cs224n_sst", "ids-sst", ("sentence",), "sentiment",
     {str(i): n for i, n in enumerate(
         ["very negative", "negative", "neutral", "positive", "very positive"])}),
    ("cs224n_quora", "quora", ("sentence1", "sentence2"), "is_duplicate",
     {"0.0": "not_duplicate", "1.0": "duplicate"}),
    ("cs224n_sts", "sts", ("sentence1", "sentence2"), "similarity", float),
])  # fmt: skip
def test_cs224n_records_match_the_course_loader(dataset, stem, fields, label, how):
    for split, suffix in (("train", "train"), ("validation", "dev")):
        with open(CS224N / f"{stem}-{suffix}.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))  # as load_multitask_data reads them
        expected = [{**{k: r[k] for k in fields}, label: _convert(r[label], how)} for r in rows]
        assert sources.load_records(dataset, "en", split) == expected


def test_glue_hub_requests_use_nyu_mll_glue_configs(monkeypatch):
    import datasets

    calls = []

    def fake(repo, config=None, **kwargs):
        calls.append((repo, config, kwargs["split"]))
        feats = datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32")})
        return datasets.Dataset.from_dict(
            {"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]}, features=feats)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    try:
        sources.set_source("glue_mnli_mm", "hub")
        got = sources.load_records("glue_mnli_mm", "en", "validation")
    finally:
        sources.reset_sources()
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert got == [{"premise": "p", "hypothesis": "h", "label": "contradiction"}]


def test_glue_and_cs224n_mixtures():
    for fmt in ("t2t", "cls"):
        glue = mixtures.mixture_spec(f"glue_{fmt}")
        assert len(glue.tasks) == 9 and f"glue_mnli_mm_{fmt}_en" in glue.evaluation_tasks
        assert f"glue_mnli_mm_{fmt}_en" not in glue.tasks
        cs = mixtures.mixture_spec(f"cs224n_{fmt}")
        assert cs.tasks == tuple(f"cs224n_{d}_{fmt}_en" for d in ("sst", "quora", "sts"))
    assert tasks.task_info("glue_mnli_mm_cls_en").head == "glue_mnli"
    assert tasks.task_info("glue_stsb_cls_en").kind == "regression"
    assert tasks.task_info("cs224n_sts_t2t_en").metrics == ("pearson", "spearman")
    assert tasks.task_info("glue_cola_cls_en").metrics[0] == "mcc"
    assert tasks.task_info("glue_mrpc_cls_en").metrics == ("f1", "accuracy")


def test_binary_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    from mtl_jax.evaluation import metrics

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert metrics.f1(y, p) == pytest.approx(f1_score(y, p))
    assert metrics.compute_metrics(["f1"], [0, 0], [0, 0])["f1"] == 0.0

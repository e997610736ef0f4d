"""The dataset registry: declared datasets (CSV/TSV/JSONL/Parquet/hub), tasks made at registration,
regression data in both formats, declared mixtures, and bad declarations stopping early.

Expected values are computed here from the hand-written files (csv/json modules), not by the
code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mtl_jax import features as F
from mtl_jax import metric_names
from mtl_jax.data import declarations, mixtures, registry, sources, tasks
from mtl_jax.data.converters import ClassificationConverter
from mtl_jax.data.formats import DataFormatError

ROWS = [  # (review, stars)
    ("A wonderful, moving film.", "pos"),
    ("Dull and far too long.", "neg"),
    ("I would watch it again.", "pos"),
    ("The plot makes no sense.", "neg"),
]
LABELS = ["negative", "positive"]
LABEL_MAP = {"neg": "negative", "pos": "positive"}


pytestmark = pytest.mark.usefixtures("clean_registry")


def _write_csv(path: Path, header, rows, delimiter=",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def _reviews(tmp_path: Path, **overrides) -> dict:
    _write_csv(tmp_path / "train.csv", ["id", "Review Text", "Stars"],
               [(i, t, s) for i, (t, s) in enumerate(ROWS)])
    _write_csv(tmp_path / "dev.csv", ["id", "Review Text", "Stars"],
               [(i, t, s) for i, (t, s) in enumerate(ROWS[:2])])
    decl = dict(
        name="reviews", format="csv", data_dir=str(tmp_path),
        files={"train": "train.csv", "validation": "dev.csv"},
        columns={"review": "Review Text", "stars": "Stars"}, text="review", label="stars",
        label_names=LABELS, label_map=LABEL_MAP, metrics=["accuracy", "macro_f1"],
    )  # fmt: skip
    decl.update(overrides)
    return decl


def _expected_ids(rows):
    return [LABELS.index(LABEL_MAP[s]) for _, s in rows]


def test_metric_names_match_the_evaluation_registry():
    from mtl_jax.evaluation import metrics

    assert set(metric_names.ALL) == set(metrics.METRICS)
    assert set(metric_names.RANKING) == set(metrics.RANKING_METRICS)


def test_builtin_datasets_are_specs_of_the_registry():
    names = registry.dataset_names()
    for name in ("xnli", "pawsx", "nc", "qadsm", "qam", "wpr", "ctkfacts_nli", "ctkfacts_xnli",
                 "mc4"):
        assert name in names
    assert tasks.task_info("wpr_cls_de").group_field == "query_id"
    assert tasks.task_info("xnli_t2t_de").group_field is None
    assert tasks.task_info("ctkfacts_xnli_cls_cs").head == "xnli"


def test_csv_dataset_registered_after_import_makes_tasks_in_both_formats(tmp_path):
    spec = registry.register_dataset(**_reviews(tmp_path))
    assert spec.default_source == str(tmp_path)
    t2t, cls = tasks.task_info("reviews_t2t_en"), tasks.task_info("reviews_cls_en")
    assert t2t.splits == cls.splits == ("train", "validation")
    assert cls.label_names == tuple(LABELS) and cls.metrics == ("accuracy", "macro_f1")
    ex = tasks.source_examples("reviews_cls_en", "train")
    assert [e["review"] for e in ex] == [t for t, _ in ROWS]
    assert [e["label"] for e in ex] == _expected_ids(ROWS)
    assert all(e["task"] == "reviews" and e["language"] == "en" for e in ex)
    # The seqio tasks exist and preprocess: t2t target = label name, cls label = id.
    got = list(mixtures.task_examples("reviews_t2t_en", "validation"))
    assert [g["inputs_pretokenized"].decode() for g in got] == [
        f"reviews: review: {t}" for t, _ in ROWS[:2]]
    assert [g["targets_pretokenized"].decode() for g in got] == [
        LABEL_MAP[s] for _, s in ROWS[:2]]
    got = list(mixtures.task_examples("reviews_cls_en", "validation"))
    assert [int(g["label"]) for g in got] == _expected_ids(ROWS[:2])
    # Re-registering replaces (here: another label order).
    registry.register_dataset(**_reviews(tmp_path, label_names=LABELS[::-1]))
    assert tasks.task_info("reviews_cls_en").label_names == tuple(LABELS[::-1])


def test_tsv_without_header_by_column_index_and_languages(tmp_path):
    for lang in ("en", "de"):
        for split in ("train", "dev"):
            _write_csv(tmp_path / f"{split}.{lang}.tsv", None,
                       [(s, t, "x") for t, s in ROWS], delimiter="\t")
    registry.register_dataset(
        name="rev_tsv", format="tsv", header=False, data_dir=str(tmp_path),
        splits={"train": ["en"], "validation": ["en", "de"]},
        files={"train": "train.{language}.tsv", "validation": "dev.{language}.tsv"},
        columns={"text": 1, "label": 0}, label_names=LABELS, label_map=LABEL_MAP)
    assert tasks.task_info("rev_tsv_cls_de").splits == ("validation",)
    assert tasks.task_info("rev_tsv_cls_en").splits == ("train", "validation")
    ex = tasks.source_examples("rev_tsv_cls_de", "validation")
    assert [(e["text"], e["label"]) for e in ex] == list(zip(
        [t for t, _ in ROWS], _expected_ids(ROWS), strict=True))


def test_jsonl_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": t, "a": f"answer {i}", "y": int(s == "pos")} for i, (t, s) in enumerate(ROWS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    for fmt in ("jsonl", "parquet"):
        registry.register_dataset(
            name=f"qa_{fmt}", format=fmt, data_dir=str(tmp_path), files={"train": f"train.{fmt}"},
            columns={"question": "q", "answer": "a", "label": "y"}, text="question",
            text_pair="answer", label_names=["no", "yes"], label_map={"0": "no", "1": "yes"})
        ex = tasks.source_examples(f"qa_{fmt}_cls_en", "train")
        assert [(e["question"], e["answer"], e["label"]) for e in ex] == [
            (r["q"], r["a"], r["y"]) for r in rows], fmt
        got = list(mixtures.task_examples(f"qa_{fmt}_t2t_en", "train", limit=1))
        assert got[0]["inputs_pretokenized"].decode() == (
            f"qa_{fmt}: question: {rows[0]['q']} answer: {rows[0]['a']}")


def test_hub_dataset_from_a_local_saved_dataset(tmp_path):
    import datasets

    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "sentiment": datasets.ClassLabel(names=["neg", "pos"])})
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(
            {"sentence": [t for t, _ in ROWS], "sentiment": [int(s == "pos") for _, s in ROWS]},
            features=feats),
        "validation": datasets.Dataset.from_dict(
            {"sentence": ["ok"], "sentiment": [1]}, features=feats),
    })
    data.save_to_disk(str(tmp_path / "saved"))
    registry.register_dataset(
        name="hubrev", hub=str(tmp_path / "saved"), columns={"text": "sentence",
                                                            "label": "sentiment"},
        label_names=LABELS, label_map=LABEL_MAP)
    assert sources.get_source("hubrev").kind == "hub"
    ex = tasks.source_examples("hubrev_cls_en", "train")
    assert [(e["text"], e["label"]) for e in ex] == list(zip(
        [t for t, _ in ROWS], _expected_ids(ROWS), strict=True))
    assert [e["label"] for e in tasks.source_examples("hubrev_cls_en", "validation")] == [1]


def test_regression_dataset_in_both_formats(tmp_path):
    scores = [0.0, 1.3, 2.5, 4.91, 3.1]
    _write_csv(tmp_path / "train.csv", ["s1", "s2", "similarity"],
               [(f"a {i}", f"b {i}", s) for i, s in enumerate(scores)])
    registry.register_dataset(
        name="sts_like", format="csv", data_dir=str(tmp_path), files={"train": "train.csv"},
        text="s1", text_pair="s2", label="similarity", regression=True)
    info = tasks.task_info("sts_like_cls_en")
    assert info.kind == "regression" and info.label_names == ()
    assert info.metrics == ("pearson", "spearman")
    # t2t: the score on T5's 0.2 grid as the target text (round(x * 5) / 5, one decimal).
    got = list(mixtures.task_examples("sts_like_t2t_en", "train"))
    assert [g["targets_pretokenized"].decode() for g in got] == [
        f"{round(s * 5) / 5:.1f}" for s in scores]
    # cls: the float score reaches the batch feature the regression head's loss reads.
    examples = list(mixtures.task_examples("sts_like_cls_en", "train"))
    conv = ClassificationConverter(("sts_like", "other"), regression=True)
    batch = conv.convert(examples, {"inputs": 16}, batch_size=8)
    np.testing.assert_allclose(batch[F.REGRESSION_TARGETS][:5], np.float32(scores))
    assert not batch[F.REGRESSION_TARGETS][5:].any()
    assert batch[F.REGRESSION_TARGETS].dtype == np.float32
    # A run's layout gives the regression head one output (num_labels 1: MSE).
    from mtl_jax.experiment import task_layout
    from mtl_jax.run_config import TrainConfig

    mixtures.declare_mixture("sts_mix", ["sts_like_cls_en", "pawsx_cls_en"], "equal")
    layout = task_layout(TrainConfig(family="xlmr", mixture="sts_mix"))
    assert dict(zip(layout.heads, layout.head_labels, strict=True)) == {"sts_like": 1, "pawsx": 2}


def test_declared_mixture_of_own_and_builtin_tasks(tmp_path):
    registry.register_dataset(**_reviews(tmp_path))
    name = mixtures.declare_mixture("mine", ["demo_cls", "reviews_cls_en"], "equal")
    spec = mixtures.mixture_spec(name)
    assert spec.tasks == (*mixtures.mixture_spec("demo_cls").tasks, "reviews_cls_en")
    assert "reviews_cls_en" in spec.evaluation_tasks
    assert set(mixtures.mixture_spec("demo_cls").evaluation_tasks) <= set(spec.evaluation_tasks)
    info = mixtures.mixture_info(name)
    assert info.sizes["reviews_cls_en"] == len(ROWS)
    with pytest.raises(KeyError, match="'nope_cls_en' is neither a task nor a mixture"):
        mixtures.declare_mixture("bad", ["nope_cls_en"])


def test_python_module_declaration(tmp_path, monkeypatch):
    decl = _reviews(tmp_path)
    (tmp_path / "my_datasets.py").write_text(
        "from mtl_jax.data.registry import register_dataset\n"
        f"register_dataset(**{decl!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    declarations.apply(["my_datasets"])
    assert tasks.task_info("reviews_t2t_en").dataset == "reviews"


# --------------------------------------------------------------------------- bad declarations


def test_missing_column_names_dataset_file_and_field(tmp_path):
    registry.register_dataset(**_reviews(tmp_path, columns={"review": "Review", "stars": "Stars"}))
    with pytest.raises(DataFormatError) as e:
        sources.load_records("reviews", "en", "train")
    msg = str(e.value)
    assert "dataset 'reviews'" in msg and str(tmp_path / "train.csv") in msg
    assert "field 'review'" in msg and "'Review'" in msg


def test_jsonl_missing_key_names_row_and_field(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"label": "y"}\n')
    registry.register_dataset(name="js", format="jsonl", data_dir=str(tmp_path),
                              files={"train": "train.jsonl"}, label_names=["x", "y"])
    with pytest.raises(DataFormatError, match=r"dataset 'js'.*train.jsonl, row 2: missing key"
                                              r"\(s\) 'text' \(field 'text'\)"):
        sources.load_records("js", "en", "train")


def test_label_outside_declared_set_names_file_row_and_field(tmp_path):
    registry.register_dataset(**_reviews(tmp_path, label_map={"neg": "negative"}))
    with pytest.raises(DataFormatError) as e:
        sources.load_records("reviews", "en", "train")
    msg = str(e.value)
    assert "dataset 'reviews'" in msg and f"{tmp_path / 'train.csv'}, row 2" in msg
    assert "field 'stars'" in msg and "'pos'" in msg


def test_language_without_files_names_dataset_language_and_file(tmp_path):
    registry.register_dataset(**_reviews(
        tmp_path, splits={"train": ["en"], "validation": ["en", "de"]},
        files={"train": "train.csv", "validation": "dev{language}.csv"}))
    (tmp_path / "deven.csv").write_text((tmp_path / "dev.csv").read_text())
    assert len(sources.load_records("reviews", "en", "validation")) == 2
    with pytest.raises(FileNotFoundError) as e:
        sources.load_records("reviews", "de", "validation")
    msg = str(e.value)
    assert "dataset 'reviews' (language 'de', split 'validation')" in msg
    assert str(tmp_path / "devde.csv") in msg


@pytest.mark.parametrize("change, field, words", [
    ({"metrics": ["accuracy", "f1_score"]}, "metrics", "unknown metric 'f1_score'"),
    ({"metrics": ["pearson"]}, "metrics", "regression metric"),
    ({"metrics": ["ndcg"]}, "metrics", "group"),
    ({"label_names": ["only"]}, "label_names", "at least 2"),
    ({"label_map": {"pos": "great"}}, "label_map", "'great'"),
    ({"text_pair": "nothere", "text": "review"}, None, None),
    ({"files": {"train": "train.csv"}, "splits": {"train": ["en"], "validation": ["en"]}},
     "files", "no file pattern for split 'validation'"),
    ({"format": "xlsx"}, "format", "'xlsx'"),
])  # fmt: skip
def test_bad_declarations_name_dataset_and_field(tmp_path, change, field, words):
    decl = _reviews(tmp_path, **change)
    if field is None:  # a pair field that the file lacks: found when reading, naming the field
        registry.register_dataset(**decl)
        with pytest.raises(DataFormatError, match="field 'nothere' needs column 'nothere'"):
            sources.load_records("reviews", "en", "train")
        return
    with pytest.raises(registry.DatasetDeclarationError) as e:
        registry.register_dataset(**decl)
    assert f"dataset 'reviews': {field}:" in str(e.value) and words in str(e.value)
    assert "reviews" not in registry.dataset_names()
    with pytest.raises(KeyError):
        tasks.task_info("reviews_cls_en")


def test_declaration_entries_are_named(tmp_path):
    with pytest.raises(declarations.DeclarationError, match=r"datasets\[0\] \('reviews'\): "
                                                            r"unknown key\(s\) \['colums'\]"):
        declarations.apply(datasets=[{**_reviews(tmp_path), "colums": {}}])
    with pytest.raises(declarations.DeclarationError, match="cannot import 'no_such_module_x'"):
        declarations.apply(["no_such_module_x"])


def test_regression_scores_reach_the_xlmr_head_mse(tmp_path):
    """Declared scores -> cls batch -> the 1-output head's squared error, against NumPy."""
    from flax import nnx

    from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
    from mtl_jax.training.objectives import ClassificationObjective

    scores = [0.5, 4.0, 2.25, 3.0]
    _write_csv(tmp_path / "train.csv", ["a", "b", "y"],
               [(f"first {i}", f"second {i}", s) for i, s in enumerate(scores)])
    registry.register_dataset(name="sts_tiny", format="csv", data_dir=str(tmp_path),
                              files={"train": "train.csv"}, text="a", text_pair="b", label="y",
                              regression=True)
    examples = list(mixtures.task_examples("sts_tiny_cls_en", "train"))
    conv = ClassificationConverter(("sts_tiny", "pawsx"), regression=True)
    batch = conv.convert(examples, {"inputs": 24}, batch_size=6)
    cfg = XLMRConfig(vocab_size=tasks.get_vocabulary("cls").vocab_size, hidden_size=16,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     task_num_labels=(1, 2))
    model = XLMRMultiTask(cfg, rngs=nnx.Rngs(0))
    objective = ClassificationObjective(num_tasks=2, num_labels=(1, 2))
    outputs = objective.outputs(model, batch, deterministic=True, rngs=None)
    terms = objective.terms_from(outputs, batch)
    predicted = np.asarray(outputs["regression"])[:4]
    expected = np.sum((predicted - np.float32(scores)) ** 2)
    assert float(terms.numerator) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms.denominator) == 4.0  # the two empty rows weigh nothing

"""The acceptance scenario: a user's CSV dataset, declared once in a gin file, mixed with a
built-in task, trained with the demo XLM-R (tiny), and reported in the task x language table."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from mtl_jax import inspect as inspect_cli
from mtl_jax import predict as predict_cli
from mtl_jax import train as train_cli

pytestmark = pytest.mark.usefixtures("clean_registry", "fast_compiles")

TINY_XLMR = [
    "XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=1",
    "XLMRConfig.num_attention_heads=2", "XLMRConfig.intermediate_size=64",
    "TrainConfig.num_steps=4", "TrainConfig.eval_every=4", "TrainConfig.batch_size=8",
    "TrainConfig.eval_batch_size=16", "TrainConfig.max_eval_examples=16",
    "TrainConfig.sequence_length={'inputs': 32}", "TrainConfig.progress=False",
    "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 0.001}",
]  # fmt: skip

POSITIVE = ["A wonderful film.", "Great acting.", "I loved it.", "Moving and funny."]
NEGATIVE = ["Dull and long.", "The plot is a mess.", "I walked out.", "Badly acted."]


def _write(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "Review Text", "Stars"])
        w.writerows((i, t, s) for i, (t, s) in enumerate(rows))


def _dataset(tmp_path: Path, dev_rows=None) -> Path:
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    _write(tmp_path / "train.csv", rows * 2)
    _write(tmp_path / "dev.csv", dev_rows or rows)
    gin = tmp_path / "reviews.gin"
    gin.write_text(f"""
TrainConfig.datasets = [{{
    'name': 'reviews',
    'format': 'csv',
    'data_dir': '{tmp_path}',
    'files': {{'train': 'train.csv', 'validation': 'dev.csv'}},
    'columns': {{'review': 'Review Text', 'stars': 'Stars'}},
    'text': 'review',
    'label': 'stars',
    'label_names': ['negative', 'positive'],
    'label_map': {{'neg': 'negative', 'pos': 'positive'}},
    'metrics': ['accuracy', 'macro_f1'],
}}]
TrainConfig.mixtures = [{{
    'name': 'reviews_demo',
    'tasks': ['reviews_cls_en', 'pawsx_cls_en'],
    'rule': 'equal',
}}]
TrainConfig.mixture = 'reviews_demo'
""")
    return gin


def _args(gin: Path, model_dir: Path) -> list[str]:
    params = [*TINY_XLMR, f"TrainConfig.model_dir={model_dir}"]
    return ["--gin_file=demo_xlmr.gin", f"--gin_file={gin}",
            *[f"--gin_param={p}" for p in params]]


def test_own_csv_dataset_trains_with_a_builtin_task_and_is_reported(tmp_path, capsys):
    gin = _dataset(tmp_path)
    run = tmp_path / "run"
    assert train_cli.main(_args(gin, run)) == 0
    report = json.loads((run / "results.json").read_text())
    assert "reviews" in report["tasks"] and "pawsx" in report["tasks"]
    assert set(report["metrics"]["reviews"]["en"]) == {"accuracy", "macro_f1"}
    assert 0.0 <= report["scores"]["reviews"]["en"] <= 1.0
    assert "reviews" in (run / "results.md").read_text()
    # inspect sees the same declaration from the gin file.
    capsys.readouterr()
    assert inspect_cli.main(["--gin_file", str(gin), "reviews_demo", "--json", "-n", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["task"] for m in report["members"]] == ["reviews_cls_en", "pawsx_cls_en"]
    # ... and predicts labels for a new file in the user's own column names.
    new = tmp_path / "new.csv"
    _write(new, [("What a film.", ""), ("Too long.", ""), ("Loved the music.", "")])
    out = tmp_path / "preds.jsonl"
    assert predict_cli.main([f"--checkpoint={run}", "--task=reviews", f"--input={new}",
                             "--columns=review=Review Text", f"--output={out}",
                             "--no-progress"]) == 0
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["index"] for p in preds] == [0, 1, 2]
    for p in preds:
        assert set(p["scores"]) == {"negative", "positive"}
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["prediction"] == max(p["scores"], key=p["scores"].get)


def test_bad_label_in_evaluation_file_stops_before_training(tmp_path, capsys):
    gin = _dataset(tmp_path, dev_rows=[("fine", "pos"), ("meh", "neutral")])
    run = tmp_path / "run"
    assert train_cli.main(_args(gin, run)) == 2
    err = capsys.readouterr().err
    assert "dataset 'reviews'" in err and f"{tmp_path / 'dev.csv'}, row 3" in err
    assert "field 'stars'" in err and "'neutral'" in err
    assert not run.exists()  # nothing of the run was written


def test_unknown_metric_in_gin_declaration_is_a_config_error(tmp_path, capsys):
    gin = _dataset(tmp_path)
    gin.write_text(gin.read_text().replace("'macro_f1'", "'f1_score'"))
    run = tmp_path / "run"
    assert train_cli.main(_args(gin, run)) == 2
    err = capsys.readouterr().err
    assert "TrainConfig.datasets[0] ('reviews')" in err and "metrics" in err
    assert "'f1_score'" in err
    assert not run.exists()


DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def _blocks(lang: str = "") -> list[str]:
    text, out = DOC.read_text(), []
    parts = re.split(r"^```", text, flags=re.M)
    for i in range(1, len(parts), 2):
        head, _, body = parts[i].partition("\n")
        if head.strip() == lang:
            out.append(body)
    return out


def test_docs_gin_and_python_examples_declare_what_they_say(tmp_path, capsys, monkeypatch):
    """docs/datasets.md's declarations, run as written (only the data directories moved)."""
    data = tmp_path / "reviews"
    data.mkdir()
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    _write(data / "train.csv", rows)
    _write(data / "dev.csv", rows)
    block = next(b for b in _blocks("bash") if "cat > my_reviews.gin" in b)
    gin_text = re.search(r"cat > my_reviews.gin <<GIN\n(.*?)\nGIN\n", block, re.S).group(1)
    gin = tmp_path / "my_reviews.gin"
    gin.write_text(gin_text.replace("$PWD/reviews", str(data)))
    assert inspect_cli.main(["--gin_file", str(gin), "reviews_t2t_en", "--json", "-n", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["members"][0]["examples"][0]["targets"] == "positive"
    from mtl_jax.data import mixtures, sources

    assert [r["stars"] for r in sources.load_records("reviews", "en", "validation")] == [
        {"pos": "positive", "neg": "negative"}[s] for _, s in rows]
    assert mixtures.mixture_spec("reviews_demo").tasks == ("reviews_cls_en", "pawsx_cls_en")

    sts = tmp_path / "sts"
    sts.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (sts / name).write_text("sentence1\tsentence2\tscore\na b\tc d\t3.2\ne f\tg h\t0.4\n")
    pkg = tmp_path / "pkg" / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "datasets.py").write_text(_blocks("python")[0].replace("/data/sts", str(sts)))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    assert inspect_cli.main(["--dataset_module", "my_pkg.datasets", "sts_mine_cls_en", "--json",
                             "-n", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["members"][0]["examples"][0]["score"] == pytest.approx(3.2)
    assert "sts_and_demo" in mixtures.mixture_names()
    assert [r["score"] for r in sources.load_records("sts_mine", "en", "train")] == [3.2, 0.4]

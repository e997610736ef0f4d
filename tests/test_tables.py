"""Task x language report: averages recomputed independently, layout, files, atomic writes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics

import numpy as np
import pytest

from mtl_jax.evaluation import plots as P
from mtl_jax.evaluation import tables as T

# XNLI-like task with many languages, PAWS-X with a subset, a one-language task, and a ranking task.
LANGS = {
    "xnli": ["en", "de", "fr", "ar", "zh", "bg"],
    "pawsx": ["en", "de", "fr", "zh"],
    "ctkfacts": ["cs"],
    "wpr": ["en", "de", "fr"],
}
PRIMARY = {"xnli": "accuracy", "pawsx": "accuracy", "ctkfacts": "macro_f1", "wpr": "ndcg"}


def _results(seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
    rng = np.random.default_rng(seed)
    out = {}
    for task, langs in LANGS.items():
        for lang in langs:
            out[(task, lang)] = {
                PRIMARY[task]: float(rng.random()),
                "extra_metric": float(rng.random()),
            }
    return out


@pytest.fixture
def table():
    return T.build_report(_results(), PRIMARY, extra={"step": 1200, "split": "validation"})


def test_layout_order_and_missing_cells(table):
    assert table.tasks == ("xnli", "pawsx", "ctkfacts", "wpr")  # order of the primary mapping
    assert table.languages == ("ar", "bg", "cs", "de", "en", "fr", "zh")  # sorted codes
    assert table.header == ["language", "xnli", "pawsx", "ctkfacts", "wpr", "AVG"]
    assert table.row_names[-1] == "AVG"
    for task in table.tasks:
        for lang in table.languages:
            assert (table.score(task, lang) is None) == (lang not in LANGS[task])


def test_averages_recomputed_independently(table):
    res = _results()
    cells = {key: m[PRIMARY[key[0]]] for key, m in res.items()}
    for task, langs in LANGS.items():
        assert table.task_average(task) == pytest.approx(
            statistics.mean(cells[(task, lang)] for lang in langs), abs=1e-15
        )
    all_langs = {lang for langs in LANGS.values() for lang in langs}
    for lang in all_langs:
        mine = [cells[(t, lang)] for t in LANGS if lang in LANGS[t]]
        assert table.language_average(lang) == pytest.approx(statistics.mean(mine), abs=1e-15)
    assert table.overall == pytest.approx(statistics.mean(cells.values()), abs=1e-15)
    task_avgs = [statistics.mean(cells[(t, lang)] for lang in LANGS[t]) for t in LANGS]
    assert table.mean_of_task_averages == pytest.approx(statistics.mean(task_avgs), abs=1e-15)
    # The two averages differ here (tasks have different language counts): the docs say which is which.
    assert abs(table.overall - table.mean_of_task_averages) > 1e-6


def _table_lines(text: str) -> list[str]:
    """The table part of the text rendering: everything before the caption."""
    lines = text.splitlines()
    return lines[: next(i for i, ln in enumerate(lines) if ln.startswith("Scores x100"))]


def _parse_text_rows(text: str) -> list[list[str]]:
    return [ln.split() for ln in _table_lines(text) if not set(ln) <= {"-", " "}]


def test_text_rendering_values_and_dashes(table):
    text = T.format_text(table)
    rows = _parse_text_rows(text)
    assert rows[0] == table.header
    by_lang = {r[0]: r[1:] for r in rows[1:]}
    assert list(by_lang) == [*table.languages, "AVG"]
    res = _results()
    for lang in table.languages:
        for j, task in enumerate(table.tasks):
            shown = by_lang[lang][j]
            if lang in LANGS[task]:
                assert shown == f"{100 * res[(task, lang)][PRIMARY[task]]:.1f}"
            else:
                assert shown == "-"
    assert by_lang["AVG"][-1] == f"{100 * table.overall:.1f}"
    # Aligned: every value column ends at the same character position on every table line.
    rows_only = [ln for ln in _table_lines(text) if ln[0] != "-"]
    ends = {tuple(m.end() for m in re.finditer(r"\S+", ln))[1:] for ln in rows_only}
    assert len(ends) == 1


def test_markdown_is_a_valid_table(table):
    md = T.format_markdown(table)
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(rows) == 2 + len(table.languages) + 1
    counts = {ln.count("|") for ln in rows}
    assert counts == {len(table.header) + 1}  # same column count on every row
    separator = rows[1].strip("|").split("|")
    assert all(re.fullmatch(r":?-{3,}:?", c.strip()) for c in separator)
    assert [c.strip() for c in rows[0].strip("|").split("|")] == table.header
    assert "**AVG**" in rows[-1]


def test_csv_round_trip(table, tmp_path):
    paths = T.save_report(table, tmp_path / "new_dir", "report")
    with open(paths["csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == table.header
    res = _results()
    for row in rows[1:-1]:
        lang = row[0]
        for task, value in zip(table.tasks, row[1:-1], strict=True):
            if lang in LANGS[task]:
                assert float(value) == res[(task, lang)][PRIMARY[task]]  # exact: full precision
            else:
                assert value == "-"
        assert float(row[-1]) == table.language_average(lang)
    assert rows[-1][0] == "AVG"
    assert float(rows[-1][-1]) == table.overall


def test_json_round_trip_keeps_all_metrics(table, tmp_path):
    paths = T.save_report(table, tmp_path, "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.json", "report.md"]
    data = json.loads(paths["json"].read_text())
    res = _results()
    for (task, lang), metrics in res.items():
        assert data["metrics"][task][lang] == metrics
        assert data["scores"][task][lang] == metrics[PRIMARY[task]]
    assert "bg" not in data["scores"]["pawsx"]
    assert data["overall"] == table.overall
    assert data["extra"] == {"step": 1200, "split": "validation"}
    back = T.load_report(paths["json"])
    assert back == table


def test_nan_scores_propagate_and_json_stays_strict(tmp_path):
    res = {("sts", "en"): {"pearson": float("nan")}, ("sts", "de"): {"pearson": 0.5}}
    table = T.build_report(res, {"sts": "pearson"})
    assert math.isnan(table.task_average("sts")) and math.isnan(table.overall)
    assert table.language_average("de") == 0.5
    assert "nan" in T.format_text(table)
    text = T.format_json(table)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = T.load_report(T.save_report(table, tmp_path, "r")["json"])
    assert math.isnan(back.score("sts", "en")) and back.score("sts", "de") == 0.5


def test_save_is_atomic_old_report_survives_a_failed_write(table, tmp_path, monkeypatch):
    T.save_report(table, tmp_path, "report")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = T.build_report(_results(seed=1), PRIMARY)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        T.save_report(other, tmp_path, "report")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # untouched, and no temporary file left behind


def test_write_atomic_replaces_content(tmp_path):
    target = tmp_path / "x.txt"
    T.write_atomic(target, "old")
    T.write_atomic(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_bad_input_errors_name_the_cell():
    with pytest.raises(ValueError, match="task 'nc' has results but no primary metric"):
        T.build_report({("nc", "en"): {"accuracy": 1.0}}, {"xnli": "accuracy"})
    with pytest.raises(ValueError, match=r"\('xnli', 'de'\) lacks its primary metric 'accuracy'"):
        T.build_report({("xnli", "de"): {"macro_f1": 1.0}}, {"xnli": "accuracy"})
    with pytest.raises(ValueError, match="not a \\(task, language\\) pair"):
        T.build_report({"xnli": {"accuracy": 1.0}}, {"xnli": "accuracy"})
    with pytest.raises(ValueError, match="no results"):
        T.build_report({}, {"xnli": "accuracy"})
    with pytest.raises(ValueError, match="reserved"):
        T.build_report({("xnli", "AVG"): {"accuracy": 1.0}}, {"xnli": "accuracy"})


def test_tasks_without_results_are_left_out():
    table = T.build_report(
        {("xnli", "en"): {"accuracy": 0.25}}, {"nc": "accuracy", "xnli": "accuracy"}
    )
    assert table.tasks == ("xnli",)
    rows = list(csv.reader(io.StringIO(T.format_csv(table))))
    assert rows == [["language", "xnli", "AVG"], ["en", "0.25", "0.25"], ["AVG", "0.25", "0.25"]]


# --------------------------------------------------------------------------- records and plots


def _synthetic_records() -> list[dict]:
    """Eval records as the trainer appends them, with train records and a re-evaluated step."""
    rng = np.random.default_rng(5)
    records = []
    for step in range(200, 2001, 200):
        records.append({"step": step, "kind": "train", "metric": "loss", "value": 1.0 / step})
        for task, langs in LANGS.items():
            for lang in langs:
                value = min(1.0, 0.3 + step / 4000 + 0.05 * rng.random())
                records.append(P.eval_record(step, task, lang, PRIMARY[task], value))
                records.append(P.eval_record(step, task, lang, "extra_metric", 0.5))
    return records


def test_records_file_round_trip_and_truncated_last_line(tmp_path):
    records = _synthetic_records()
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + '{"step": 2200, "kind": "ev')  # crash mid-append
    assert P.read_records(path) == records
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a JSON record"):
        P.read_records(path)


def test_eval_results_feed_the_report():
    records = _synthetic_records()
    records.append(P.eval_record(2000, "xnli", "de", "accuracy", 0.99))  # re-evaluated: last wins
    step, results = P.eval_results(records)
    assert step == 2000
    assert set(results) == {(t, lang) for t, langs in LANGS.items() for lang in langs}
    assert results[("xnli", "de")] == {"accuracy": 0.99, "extra_metric": 0.5}
    table = T.build_report(results, PRIMARY, extra={"step": step})
    assert table.score("xnli", "de") == 0.99
    step, results = P.eval_results(records, step=400)
    expected = {
        (r["task"], r["language"]): r["value"]
        for r in records
        if r["kind"] == "eval" and r["step"] == 400 and r["metric"] == PRIMARY[r["task"]]
    }
    assert {key: m[PRIMARY[key[0]]] for key, m in results.items()} == expected
    with pytest.raises(ValueError, match="no 'validation' evaluation at step 300"):
        P.eval_results(records, step=300)
    with pytest.raises(ValueError, match="no 'eval' records for split 'test'"):
        P.eval_results(records, split="test")
    with pytest.raises(ValueError, match="lacks \\['value'\\]"):
        P.eval_results(
            [
                {
                    "step": 1,
                    "kind": "eval",
                    "split": "validation",
                    "task": "x",
                    "language": "en",
                    "metric": "accuracy",
                }
            ]
        )


@pytest.mark.parametrize("lines", ["both", "average", "languages"])
def test_validation_curves_png(tmp_path, lines):
    from matplotlib import image

    out = P.plot_validation_curves(
        _synthetic_records(), tmp_path / "curves.png", primary_metrics=PRIMARY, lines=lines
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    pixels = image.imread(out)  # an independent decoder (Pillow) reads it back
    # 4 tasks -> 2 rows x 3 columns of 5.2 x 3.8 inches at 100 dpi.
    assert pixels.shape[:2] == (760, 1560)
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_plot_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no 'eval' records"):
        P.plot_validation_curves([{"step": 1, "kind": "train"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="task 'xnli': no eval records of its primary metric 'f1'"):
        P.plot_validation_curves(
            _synthetic_records(), tmp_path / "x.png", primary_metrics={"xnli": "f1"}
        )
    with pytest.raises(ValueError, match="lines must be one of"):
        P.plot_validation_curves(_synthetic_records(), tmp_path / "x.png", lines="all")

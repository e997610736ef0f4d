"""``python -m mtl_jax.evaluate`` and ``python -m mtl_jax.predict`` on tiny trained runs.

One tiny XLM-R run on the XGLUE mixture and one tiny mT5 run on CTKFacts are trained once per
module through the real train CLI (in process). The files evaluated and predicted are hand-made
in tmp_path in the release layouts (XGLUE TSV without header, CTKFacts NLI JSON lines), with
labels known to the test, so scores are checked against scikit-learn on the test's own labels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from mtl_jax import evaluate as evaluate_cli
from mtl_jax import predict as predict_cli
from mtl_jax import train as train_cli
from mtl_jax.data import formats

pytestmark = pytest.mark.usefixtures("fast_compiles")

TINY_XLMR = ["TrainConfig.mixture=xglue_cls", "XLMRConfig.hidden_size=32",
             "XLMRConfig.num_hidden_layers=1", "XLMRConfig.intermediate_size=64",
             "TrainConfig.sequence_length={'inputs': 32}"]
TINY_T5 = ["TrainConfig.mixture=ctkfacts_t2t", "T5Config.d_model=32", "T5Config.d_kv=8",
           "T5Config.d_ff=64", "T5Config.num_heads=4", "T5Config.num_layers=1",
           "T5Config.num_decoder_layers=1"]
COMMON = ["TrainConfig.num_steps=2", "TrainConfig.eval_every=2", "TrainConfig.batch_size=8",
          "TrainConfig.eval_batch_size=8", "TrainConfig.max_eval_examples=8",
          "TrainConfig.progress=False", "TrainConfig.async_checkpoints=False",
          "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 1e-3}"]


def _train(run: Path, gin_file: str, params: list[str]) -> Path:
    args = [f"--gin_file={gin_file}",
            *[f"--gin_param={p}" for p in [*params, *COMMON, f"TrainConfig.model_dir={run}"]]]
    assert train_cli.main(args) == 0
    return run


@pytest.fixture(scope="module")
def xlmr_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("xlmr") / "run", "demo_xlmr.gin", TINY_XLMR)


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("t5") / "run", "demo_mt5.gin", TINY_T5)


# --------------------------------------------------------------------------- hand-made files

NC_ROWS = [(f"Schlagzeile {i} über Sport und Wetter", f"Der Text der Nachricht {i} ist kurz.",
            formats.NC_LABELS[i % len(formats.NC_LABELS)]) for i in range(7)]
QADSM_ROWS = [(f"suche {i}", f"Angebot {i}", f"Beschreibung {i}", ("Bad", "Good")[i % 2])
              for i in range(5)]
QAM_ROWS = [(f"Was ist {i}?", f"Eine Antwort auf {i}.", str(i % 2)) for i in range(6)]


def _german_dev_only(root: Path) -> Path:
    """XGLUE layout (``NC/xglue.nc.de.dev`` ...: tab-separated, no header), German dev only."""
    for dataset, rows in (("nc", NC_ROWS), ("qadsm", QADSM_ROWS), ("qam", QAM_ROWS)):
        path = root / dataset.upper() / f"xglue.{dataset}.de.dev"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _report(path: Path) -> dict[tuple[str, str], float]:
    report = json.loads(path.read_text())
    return {(task, lang): v for task, row in report["scores"].items() for lang, v in row.items()}


def _predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- evaluate


def test_evaluate_cli_reproduces_the_training_evaluation(xlmr_run, tmp_path):
    logged = {(r["task"], r["language"]): r["value"]
              for r in map(json.loads, (xlmr_run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "eval" and r["step"] == 2 and r["metric"] in ("accuracy", "ndcg")}
    assert evaluate_cli.main([f"--checkpoint={xlmr_run}", f"--output_dir={tmp_path}"]) == 0
    reloaded = _report(tmp_path / "eval_validation_step2.json")
    assert len(logged) == 40 and reloaded == pytest.approx(logged, abs=1e-9)


def test_evaluate_needs_only_the_evaluated_files_and_filters(xlmr_run, tmp_path, capsys):
    data = _german_dev_only(tmp_path / "xglue")
    sources = f"TrainConfig.sources={{'nc': '{data}', 'qadsm': '{data}', 'qam': '{data}'}}"
    code = evaluate_cli.main([f"--checkpoint={xlmr_run}", f"--gin_param={sources}",
                              "--tasks=nc,qadsm", "--tasks=qam", "--languages=de",
                              f"--output_dir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    scores = _report(tmp_path / "eval_validation_step2.json")
    assert set(scores) == {("nc", "de"), ("qadsm", "de"), ("qam", "de")}
    # The same rows through predict: the report's accuracy is sklearn's on the predictions.
    for dataset, rows, fields in (("nc", NC_ROWS, ("news_title", "news_body")),
                                  ("qam", QAM_ROWS, ("question", "answer"))):
        path = tmp_path / f"{dataset}.jsonl"
        path.write_text("".join(json.dumps(dict(zip(fields, r, strict=False))) + "\n" for r in rows))
        out = tmp_path / f"{dataset}.preds.jsonl"
        assert predict_cli.main([f"--checkpoint={xlmr_run}", f"--task={dataset}", "--language=de",
                                 f"--input={path}", f"--output={out}", "--no-progress"]) == 0
        names = formats.LABEL_NAMES[dataset]
        gold = [r[-1] if dataset != "qam" else names[int(r[-1])] for r in rows]
        preds = [p["prediction"] for p in _predictions(out)]
        assert scores[(dataset, "de")] == pytest.approx(accuracy_score(gold, preds))


def test_evaluate_test_split_and_unknown_filters(xlmr_run, tmp_path, capsys):
    assert evaluate_cli.main([f"--checkpoint={xlmr_run}", "--split=test", "--tasks=xnli",
                              "--languages=de,fr", f"--output_dir={tmp_path}"]) == 0
    assert set(_report(tmp_path / "eval_test_step2.json")) == {("xnli", "de"), ("xnli", "fr")}
    assert evaluate_cli.main([f"--checkpoint={xlmr_run}", "--tasks=glue_sst2"]) == 2
    assert "--tasks glue_sst2" in capsys.readouterr().err
    assert evaluate_cli.main([f"--checkpoint={xlmr_run}", "--step=7"]) == 2
    assert "step 7 is not in" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict (XLM-R)


def _write_table(path: Path, rows: list[dict], delimiter: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def _evaluator_outputs(run: Path, task: str, sources: dict[str, str], greedy: bool = False):
    """The Evaluator's own outputs for a task's validation rows, in process."""
    from mtl_jax import experiment, gin_config
    from mtl_jax.data import tasks
    from mtl_jax.training.checkpoints import RunCheckpoint

    with RunCheckpoint(run) as checkpoint:
        params = [f"TrainConfig.sources={sources!r}"]
        if greedy:
            params.append("TrainConfig.eval_mode='greedy'")
        cfg = gin_config.checkpoint_train_config(checkpoint, [], params)
        exp = experiment.build(cfg, training=False)
        weights, rest = exp.restore_params(checkpoint)
    info = tasks.task_info(task)
    return exp.evaluator("validation", [info]).outputs(weights, rest, info)


def test_predict_xlmr_matches_the_evaluator_on_jsonl_csv_and_tsv(xlmr_run, tmp_path):
    data = _german_dev_only(tmp_path / "xglue")
    expected = _evaluator_outputs(xlmr_run, "nc_cls_de", {"nc": str(data)})
    rows = [{"title": t, "news_body": b} for t, b, _ in NC_ROWS]
    inputs = {"jsonl": tmp_path / "in.jsonl", "csv": tmp_path / "in.csv", "tsv": tmp_path / "in.tsv"}
    inputs["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_table(inputs["csv"], rows, ",")
    _write_table(inputs["tsv"], rows, "\t")
    names = formats.NC_LABELS
    probs = np.exp(expected.scores) / np.exp(expected.scores).sum(-1, keepdims=True)
    for fmt, path in inputs.items():
        out = tmp_path / f"out_{fmt}.jsonl"
        assert predict_cli.main([f"--checkpoint={xlmr_run}", "--task=nc_cls_de",
                                 "--columns=news_title=title", f"--input={path}",
                                 f"--output={out}", "--batch_size=3", "--no-progress"]) == 0
        preds = _predictions(out)
        assert [p["index"] for p in preds] == list(range(len(rows)))
        assert [p["prediction"] for p in preds] == [names[k] for k in expected.predicted], fmt
        got = np.array([[p["scores"][n] for n in names] for p in preds])
        np.testing.assert_allclose(got, probs, rtol=1e-5, atol=1e-7, err_msg=fmt)


def test_predict_names_the_missing_column_and_the_file(xlmr_run, tmp_path, capsys):
    path = tmp_path / "short.csv"
    _write_table(path, [{"news_title": "Titel", "text": "Inhalt"}], ",")
    assert predict_cli.main([f"--checkpoint={xlmr_run}", "--task=nc", "--language=de",
                             f"--input={path}", f"--output={tmp_path / 'o.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert "'news_body'" in err and str(path) in err and "row 1" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert predict_cli.main([f"--checkpoint={xlmr_run}", "--task=nc", f"--input={path}",
                             f"--output={tmp_path / 'o.jsonl'}"]) == 2
    assert "--language" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict (mT5)

CTK = [{"id": i, "label": formats.CTKFACTS_LABELS[i % 3], "claim": f"Tvrzení číslo {i}.",
        "evidence": [f"Důkaz {i} o městě.", "Druhý odstavec."]} for i in range(6)]


def test_predict_mt5_rank_and_greedy_match_the_evaluator(t5_run, tmp_path):
    root = tmp_path / "ctkfacts"
    root.mkdir()
    with (root / "validation.jsonl").open("w", encoding="utf-8") as f:
        for r in CTK:  # the CTKFacts NLI release: evidence as one string
            f.write(json.dumps({**r, "evidence": " ".join(r["evidence"])}, ensure_ascii=False) + "\n")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"evidence": " ".join(r["evidence"]), "claim": r["claim"]},
                                       ensure_ascii=False) + "\n" for r in CTK))
    sources = {"ctkfacts_nli": str(root)}
    names = formats.CTKFACTS_LABELS

    rank = _evaluator_outputs(t5_run, "ctkfacts_nli_t2t_cs", sources)
    out = tmp_path / "rank.jsonl"
    assert predict_cli.main([f"--checkpoint={t5_run}", "--task=ctkfacts_nli", f"--input={path}",
                             f"--output={out}", "--no-progress"]) == 0
    preds = _predictions(out)
    assert [p["prediction"] for p in preds] == [names[k] for k in rank.predicted]
    np.testing.assert_allclose([[p["scores"][n] for n in names] for p in preds], rank.scores,
                               rtol=1e-5, atol=1e-5)

    greedy = _evaluator_outputs(t5_run, "ctkfacts_nli_t2t_cs", sources, greedy=True)
    out = tmp_path / "greedy.jsonl"
    assert predict_cli.main([f"--checkpoint={t5_run}", "--task=ctkfacts_nli_t2t_cs", "--greedy",
                             f"--input={path}", f"--output={out}", "--no-progress"]) == 0
    preds = _predictions(out)
    assert [p["text"] for p in preds] == greedy.texts
    assert [p["prediction"] for p in preds] == [t if t in names else None for t in greedy.texts]


# --------------------------------------------------------------------------- convert's tokenizer


@pytest.mark.parametrize("family", ["xlmr", "t5"])
def test_jax_to_hf_export_ships_the_runs_tokenizer(family, xlmr_run, t5_run, tmp_path):
    import os

    import transformers

    from mtl_jax.convert import main as convert_main
    from mtl_jax.data import vocab as vocab_lib

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = xlmr_run if family == "xlmr" else t5_run
    dst = tmp_path / "export"
    assert convert_main(["jax-to-hf", str(run), str(dst)]) == 0
    ours = (vocab_lib.load_vocabulary("xlmr", vocab_lib.DEMO_XLMR_SPM) if family == "xlmr"
            else vocab_lib.load_vocabulary("mt5", vocab_lib.DEMO_T5_SPM))
    text = "Praha je hlavní město. The cat sat on the mat."
    ids = list(ours.encode(text))
    want = [0, *ids, 2] if family == "xlmr" else [*ids, 1]  # <s> a </s> / a </s>
    spm = "sentencepiece.bpe.model" if family == "xlmr" else "spiece.model"
    dirs = [dst] + ([dst / "encoder", *[p for p in dst.iterdir() if (p / "config.json").is_file()]]
                    if family == "xlmr" else [])
    for d in dirs:
        assert (d / spm).is_file() and (d / "tokenizer_config.json").is_file(), d
        tokenizer = transformers.AutoTokenizer.from_pretrained(d)
        assert tokenizer(text)["input_ids"] == want, d
        assert len(tokenizer) == ours.vocab_size


def test_vocabulary_file_of_a_pretrained_run_is_the_checkpoints(tmp_path):
    from mtl_jax.experiment import vocabulary_file
    from mtl_jax.run_config import TrainConfig

    assert vocabulary_file(TrainConfig(family="t5", pretrained=str(tmp_path))) == tmp_path / "spiece.model"
    assert (vocabulary_file(TrainConfig(family="xlmr", pretrained=str(tmp_path)))
            == tmp_path / "sentencepiece.bpe.model")
    assert vocabulary_file(TrainConfig(family="xlmr", vocabulary=str(tmp_path / "v.model"),
                                       pretrained=str(tmp_path))) == tmp_path / "v.model"

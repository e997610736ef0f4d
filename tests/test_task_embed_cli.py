"""``python -m mtl_jax.task_embed`` on a tiny XLM-R run trained once (in process) on the demo
mixture: embeddings written per task, the ranking written and consistent with the library, and
clear errors for a missing run, an unknown task and a task the run has no head for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtl_jax import task_embed
from mtl_jax import train as train_cli
from mtl_jax.evaluation import task_ranking as tr

pytestmark = pytest.mark.usefixtures("fast_compiles")

TINY = ["XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=1",
        "XLMRConfig.intermediate_size=64", "TrainConfig.sequence_length={'inputs': 32}",
        "TrainConfig.num_steps=2", "TrainConfig.eval_every=2", "TrainConfig.batch_size=8",
        "TrainConfig.eval_batch_size=8", "TrainConfig.max_eval_examples=8",
        "TrainConfig.progress=False", "TrainConfig.async_checkpoints=False",
        "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 1e-3}",
        "TrainConfig.mixtures=({'name': 'taskemb_three', 'tasks': ['pawsx_cls_en', "
        "'ctkfacts_nli_cls_cs', 'qam_cls_en']},)", "TrainConfig.mixture='taskemb_three'"]
TASKS = ("pawsx_cls_en", "ctkfacts_nli_cls_cs", "qam_cls_en")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("xlmr") / "run"
    args = ["--gin_file=demo_xlmr.gin",
            *[f"--gin_param={p}" for p in [*TINY, f"TrainConfig.model_dir={run}"]]]
    assert train_cli.main(args) == 0
    return run


@pytest.mark.slow  # training the run costs ~40 s on 2 loaded cores
def test_taskemb_textemb_and_rank(run, tmp_path, capsys):
    common = ["--max_examples", "12", "--batch_size", "8", "--no-progress"]
    runs = [f"--run={t}={run}" for t in TASKS]
    assert task_embed.main(["taskemb", *runs, "--output", str(tmp_path / "task"), *common]) == 0
    assert task_embed.main(["textemb", "--checkpoint", str(run), "--tasks", ",".join(TASKS),
                            "--output", str(tmp_path / "text"), *common]) == 0
    task_set, text_set = tr.load_embeddings(tmp_path / "task"), tr.load_embeddings(tmp_path / "text")
    assert sorted(task_set.tasks) == sorted(text_set.tasks) == ["ctkfacts_nli", "pawsx", "qam"]
    assert task_set.manifest["tasks"]["qam"]["examples"] == 12
    vectors = task_set.vectors["qam"]
    assert {"cls", "layers/0/attention", "layers/0/output"} <= set(vectors)
    assert not any("heads" in k or "word_embeddings" in k or "pooler" in k for k in vectors)
    assert all(np.all(v >= 0) and np.any(v > 0) for v in vectors.values())  # squares, not all 0
    assert text_set.vectors["qam"]["text"].shape == (32,)
    capsys.readouterr()
    out = tmp_path / "report"
    assert task_embed.main(["rank", "--embeddings", str(tmp_path / "task"), "--embeddings",
                            str(tmp_path / "text"), "--target", "ctkfacts_nli",
                            "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    want = tr.rank_sources("ctkfacts_nli", [task_set, text_set])
    assert f"best source for ctkfacts_nli: {want.best}" in printed
    data = json.loads((out / "ranking.json").read_text())
    assert [s["source"] for s in data[0]["sources"]] == want.sources
    assert (out / "ranking.png").is_file() and "| rank | source |" in (out / "ranking.md").read_text()


def test_errors_name_the_run_and_the_task(tmp_path, capsys):
    out = ["--output", str(tmp_path / "e"), "--no-progress"]
    assert task_embed.main(["taskemb", f"--run=qam_cls_en={tmp_path / 'missing'}", *out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert task_embed.main(["taskemb", f"--run=qam_xx={tmp_path}", *out]) == 2
    assert "unknown task 'qam_xx'" in capsys.readouterr().err
    assert task_embed.main(["taskemb", "--run=qam_cls_en", *out]) == 2
    assert "TASK=RUN_DIR" in capsys.readouterr().err
    assert task_embed.main(["taskemb", f"--run=qam_cls_en={tmp_path}", *out]) == 2
    assert "is not a training run" in capsys.readouterr().err
    assert task_embed.main(["textemb", "--checkpoint", str(tmp_path / "nope"), *out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert task_embed.main(["rank", "--embeddings", str(tmp_path / "none")]) == 2
    assert "not a task-embedding folder" in capsys.readouterr().err


@pytest.mark.slow
def test_task_without_a_head_in_the_run(run, tmp_path, capsys):
    args = ["taskemb", f"--run=glue_rte_cls_en={run}", "--output", str(tmp_path / "e")]
    assert task_embed.main(args) == 2
    assert "has no head for task 'glue_rte_cls_en'" in capsys.readouterr().err

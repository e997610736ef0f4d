"""GLUE and CS224N mixtures end to end on their bundled samples: a tiny XLM-R on ``glue_cls``
(STS-B as a 1-output regression head) and a tiny mT5 on ``cs224n_t2t`` (STS as 0.2-grid target
text), each trained a few steps, evaluated, and reported per dataset.
"""

from __future__ import annotations

import json
import math

import pytest

from mtl_jax import train as train_cli

pytestmark = pytest.mark.usefixtures("fast_compiles")

COMMON = [
    "TrainConfig.num_steps=2", "TrainConfig.eval_every=2", "TrainConfig.batch_size=8",
    "TrainConfig.eval_batch_size=16", "TrainConfig.max_eval_examples=8",
    "TrainConfig.progress=False", "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 0.001}",
]  # fmt: skip
TINY = {
    "demo_xlmr.gin": ["XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=1",
                      "XLMRConfig.num_attention_heads=2", "XLMRConfig.intermediate_size=64",
                      "TrainConfig.sequence_length={'inputs': 48}"],
    "demo_mt5.gin": ["T5Config.d_model=32", "T5Config.num_layers=1",
                     "T5Config.num_decoder_layers=1", "T5Config.d_ff=64", "T5Config.num_heads=2",
                     "T5Config.d_kv=8", "TrainConfig.sequence_length={'inputs': 64, 'targets': 12}"],
}  # fmt: skip


def _run(tmp_path, gin: str, mixture: str) -> dict:
    run = tmp_path / mixture
    params = [*COMMON, *TINY[gin], f"TrainConfig.mixture={mixture}", f"TrainConfig.model_dir={run}"]
    assert train_cli.main([f"--gin_file={gin}", *[f"--gin_param={p}" for p in params]]) == 0
    return json.loads((run / "results.json").read_text())


def test_glue_cls_runs_end_to_end(tmp_path):
    report = _run(tmp_path, "demo_xlmr.gin", "glue_cls")
    expected = {"glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli",
                "glue_mnli_mm", "glue_qnli", "glue_rte", "glue_wnli"}
    assert set(report["tasks"]) == expected
    assert report["primary_metrics"]["glue_cola"] == "mcc"
    assert report["primary_metrics"]["glue_stsb"] == "pearson"
    assert set(report["metrics"]["glue_mrpc"]["en"]) == {"f1", "accuracy"}
    stsb = report["metrics"]["glue_stsb"]["en"]  # a trained 1-output head varies: finite
    assert set(stsb) == {"pearson", "spearman"} and math.isfinite(stsb["pearson"])


def test_cs224n_t2t_runs_end_to_end(tmp_path):
    report = _run(tmp_path, "demo_mt5.gin", "cs224n_t2t")
    assert set(report["tasks"]) == {"cs224n_sst", "cs224n_quora", "cs224n_sts"}
    assert set(report["metrics"]["cs224n_sts"]["en"]) == {"pearson", "spearman"}
    assert set(report["metrics"]["cs224n_quora"]["en"]) == {"accuracy", "f1"}

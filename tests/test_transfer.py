"""Chaining runs (TrainConfig.init_from, docs/transfer.md): a new run starts from another run's
parameters only, on its own mesh and mixture; XLM-R heads are matched by name or mapped; LoRA
starts at the source's function; training by epochs; the final test-split evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from mtl_jax import configurables, experiment, gin_config, transfer
from mtl_jax import evaluate as evaluate_cli
from mtl_jax import train as train_cli
from mtl_jax.training.checkpoints import RunCheckpoint
from mtl_jax.training.train_state import merge_model

pytestmark = pytest.mark.usefixtures("fast_compiles")

TINY_XLMR = [
    "XLMRConfig.hidden_size=32", "XLMRConfig.num_hidden_layers=1",
    "XLMRConfig.num_attention_heads=2", "XLMRConfig.intermediate_size=64",
    "TrainConfig.num_steps=2", "TrainConfig.eval_every=2", "TrainConfig.batch_size=8",
    "TrainConfig.eval_batch_size=16", "TrainConfig.max_eval_examples=8",
    "TrainConfig.sequence_length={'inputs': 32}", "TrainConfig.progress=False",
    "TrainConfig.async_checkpoints=False",
    "TrainConfig.optimizer={'name': 'adamw', 'learning_rate': 0.01}",
]  # fmt: skip
SOURCE_TASKS = ["xnli_cls_en", "pawsx_cls_en", "ctkfacts_nli_cls_cs"]
SOURCE_MIXTURE = [
    f"TrainConfig.mixtures=[{{'name': 'chain_src', 'tasks': {SOURCE_TASKS!r}, "
    f"'evaluation_tasks': {SOURCE_TASKS!r}}}]",
    "TrainConfig.mixture=chain_src",
]
BUNDLED_CTK = Path(__file__).resolve().parents[1] / "mtl_jax/data/assets/samples/ctkfacts"


def _argv(model_dir: Path, *params: str) -> list[str]:
    return ["--gin_file=demo_xlmr.gin",
            *[f"--gin_param={p}" for p in (*TINY_XLMR, f"TrainConfig.model_dir={model_dir}",
                                            *params)]]


def _cfg(model_dir: Path, *params: str):
    gin_config.parse(["demo_xlmr.gin"], [*TINY_XLMR, f"TrainConfig.model_dir={model_dir}", *params])
    return configurables.train_config()


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A tiny XLM-R trained 2 steps on XNLI + PAWS-X + CTKFacts (heads xnli, pawsx, ctkfacts_nli)."""
    run = tmp_path_factory.mktemp("chain") / "source"
    assert train_cli.main(_argv(run, *SOURCE_MIXTURE)) == 0
    return run


def _flat(tree) -> dict[str, np.ndarray]:
    host = jax.device_get(tree)
    return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(host).items()}


def _source_params(run: Path, step: int | str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The source checkpoint's parameters read as NumPy (no mesh, no model), and its record."""
    with RunCheckpoint(run, step) as ck:
        record = ck.model_record
        cfg = gin_config.checkpoint_train_config(ck, [], [])
        exp = experiment.build(cfg, training=False)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              exp.abstract_state.params)
        params = ck.restore({"params": target})["params"]
    return _flat(params), record


def test_parse_spec():
    assert transfer.parse_spec("/runs/a") == ("/runs/a", None)
    assert transfer.parse_spec("/runs/a@best") == ("/runs/a", "best")
    assert transfer.parse_spec("/runs/a@latest") == ("/runs/a", "latest")
    assert transfer.parse_spec("/runs/a@1200") == ("/runs/a", "1200")
    assert transfer.parse_spec("/runs/me@home") == ("/runs/me@home", None)


def test_init_from_copies_parameters_matches_heads_by_name_on_another_mesh(source_run, tmp_path):
    src, record = _source_params(source_run)
    assert record["heads"] == ["xnli", "pawsx", "ctkfacts_nli"]
    # New mixture: ctkfacts_xnli (head 'xnli', reused by name) + NC (no source head: fresh);
    # pawsx and ctkfacts_nli are dropped. Another mesh: 4 x 2 instead of 8 x 1.
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}@latest",
               "TrainConfig.mixtures=[{'name': 'chain_new', 'tasks': ['ctkfacts_xnli_cls_cs', "
               "'nc_cls_en']}]", "TrainConfig.mixture=chain_new", "TrainConfig.mesh_data=4",
               "TrainConfig.mesh_fsdp=2", "TrainConfig.seed=3")
    exp = experiment.build(cfg)
    assert exp.layout.heads == ("xnli", "nc")
    source = transfer.resolve(exp)
    assert source.heads == {"xnli": "xnli", "nc": None} and source.step == 2
    state = transfer.initial_state(exp, source)
    fresh = _flat(exp.initial_state().params)  # this run's own initialisation (seed 3)
    got = _flat(state.params)
    assert int(state.step) == 0
    shared = [k for k in got if not k.startswith("heads/")]
    assert shared and all(k in src for k in shared)
    for k in shared:
        np.testing.assert_array_equal(got[k], src[k], err_msg=k)
    xnli_src = record["heads"].index("xnli")
    for name in ("dense_kernel", "dense_bias", "out_kernel", "out_bias"):
        # XNLI's 3 label columns are the source's; padding up to NC's 10 labels stays zero
        row, want = got[f"heads/{name}"][0], src[f"heads/{name}"][xnli_src]
        np.testing.assert_array_equal(row[..., :want.shape[-1]], want)
        assert not row[..., 3:].any() if name.startswith("out") else True
        np.testing.assert_array_equal(got[f"heads/{name}"][1], fresh[f"heads/{name}"][1])
    # nothing of the optimizer travels: the state equals a fresh optimizer's on these params
    opt = exp.optimizer.tx.init(jax.device_get(state.params))
    for a, b in zip(jax.tree.leaves(jax.device_get(state.opt_state)), jax.tree.leaves(opt),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the parameters live on the new mesh
    kernel = state.params["heads"]["dense_kernel"]
    assert dict(kernel.sharding.mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_head_mapping_reuses_a_source_head_and_checks_label_counts(source_run, tmp_path):
    src, record = _source_params(source_run)
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}",
               "TrainConfig.mixture=ctkfacts_nli_cls", "TrainConfig.init_heads={'ctkfacts_nli': 'xnli'}")
    exp = experiment.build(cfg)
    source = transfer.resolve(exp)
    assert source.heads == {"ctkfacts_nli": "xnli"}
    got = _flat(transfer.initial_state(exp, source).params)
    np.testing.assert_array_equal(got["heads/dense_kernel"][0],
                                  src["heads/dense_kernel"][record["heads"].index("xnli")])
    # the spelling of the XNLI-format mapping (a dataset name as key) resolves the same
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}",
               "TrainConfig.mixture=ctkfacts_xnli_cls", "TrainConfig.init_heads={'ctkfacts_xnli': 'xnli'}")
    assert transfer.resolve(experiment.build(cfg)).heads == {"xnli": "xnli"}
    # ctkfacts_nli has 3 labels, PAWS-X 2: a clear error
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}",
               "TrainConfig.mixture=ctkfacts_nli_cls", "TrainConfig.init_heads={'ctkfacts_nli': 'pawsx'}")
    with pytest.raises(experiment.ConfigError, match=r"'ctkfacts_nli'.*3 label.*'pawsx'.* 2"):
        transfer.resolve(experiment.build(cfg))
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}",
               "TrainConfig.mixture=ctkfacts_nli_cls", "TrainConfig.init_heads={'wpr': 'xnli'}")
    with pytest.raises(experiment.ConfigError, match=r"'wpr' is neither a head nor a dataset"):
        transfer.resolve(experiment.build(cfg))
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}",
               "TrainConfig.mixture=ctkfacts_nli_cls", "TrainConfig.init_heads={'ctkfacts_nli': 'qam'}")
    with pytest.raises(experiment.ConfigError, match=r"no head 'qam'; its heads: \['xnli'"):
        transfer.resolve(experiment.build(cfg))


@pytest.mark.parametrize("spec,params,message", [
    ("{tmp}/nowhere", [], r"nowhere does not exist"),
    ("{src}@99", [], r"step 99 is not in .*available steps: 2"),
    ("{src}", ["XLMRConfig.hidden_size=48"], r"differs .*\n  hidden_size: checkpoint=32 run=48"),
])
def test_bad_init_from_stops_before_anything_is_written(source_run, tmp_path, capsys, spec,
                                                        params, message):
    run = tmp_path / "new"
    spec = spec.format(tmp=tmp_path, src=source_run)
    assert train_cli.main(_argv(run, f"TrainConfig.init_from={spec}",
                                "TrainConfig.mixture=ctkfacts_nli_cls", *params)) == 2
    import re

    assert re.search(message, capsys.readouterr().err), message
    assert not run.exists()


def test_chained_run_records_its_start_and_resumes_its_own_checkpoints(source_run, tmp_path):
    import shutil

    source = tmp_path / "source_copy"
    shutil.copytree(source_run, source)
    run = tmp_path / "new"
    args = [f"TrainConfig.init_from={source}@2", "TrainConfig.mixture=ctkfacts_xnli_cls"]
    assert train_cli.main(_argv(run, *args)) == 0
    report = json.loads((run / "results.json").read_text())
    start = report["extra"]["init_from"]
    assert (start["run"], start["step"], start["heads"]) == (str(source), 2, {"xnli": "xnli"})
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["source"]["step"] for r in records if r["kind"] == "init_from"] == [2]
    with RunCheckpoint(run) as ck:
        assert ck.config["init_from"]["spec"] == f"{source}@2"
    # Longer, again: the run resumes from its own step 2 (the source is gone: it is not read).
    shutil.rmtree(source)
    assert train_cli.main(_argv(run, *args, "TrainConfig.num_steps=4")) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    report = json.loads((run / "results.json").read_text())
    assert report["extra"]["init_from"]["step"] == 2


def test_lora_on_a_chained_run_starts_with_the_source_outputs(source_run, tmp_path):
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={source_run}", *SOURCE_MIXTURE,
               "XLMRConfig.lora=@LoRAConfig()", "LoRAConfig.rank=4")
    exp = experiment.build(cfg)
    state = transfer.initial_state(exp, transfer.resolve(exp))
    lora = {k: v for k, v in _flat(state.params).items() if "lora_" in k}
    assert lora and all(not v.any() for k, v in lora.items() if k.endswith("lora_b"))
    assert any(v.any() for k, v in lora.items() if k.endswith("lora_a"))  # A is fresh, random
    with RunCheckpoint(source_run) as ck:
        src_exp = experiment.build(gin_config.checkpoint_train_config(ck, [], []), training=False)
        params, rest = src_exp.restore_params(ck)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, exp.config.vocab_size, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    task = np.array([0, 1, 2, 0], np.int32)

    def logits(graphdef, p, r):
        model = merge_model(graphdef, jax.device_get(p), jax.device_get(r))
        return np.asarray(model(ids, mask, task_id=task)["logits"])

    want = logits(src_exp.graphdef, params, rest)
    got = logits(exp.graphdef, state.params, state.rest)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _logits(graphdef, params, rest, vocab_size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab_size, (4, 12)).astype(np.int32)
    model = merge_model(graphdef, jax.device_get(params), jax.device_get(rest))
    return np.asarray(model(ids, np.ones_like(ids), task_id=np.array([0, 1, 2, 0], np.int32))["logits"])


def test_a_lora_source_is_folded_into_the_new_runs_kernels(tmp_path):
    run = tmp_path / "lora_src"
    lora = ["XLMRConfig.lora=@LoRAConfig()", "LoRAConfig.rank=4", "LoRAConfig.alpha=8"]
    assert train_cli.main(_argv(run, *SOURCE_MIXTURE, *lora)) == 0
    with RunCheckpoint(run) as ck:
        src_exp = experiment.build(gin_config.checkpoint_train_config(ck, [], []), training=False)
        params, rest = src_exp.restore_params(ck)
    assert any(np.asarray(v).any() for k, v in _flat(params).items() if k.endswith("lora_b"))
    cfg = _cfg(tmp_path / "new", f"TrainConfig.init_from={run}", *SOURCE_MIXTURE)
    exp = experiment.build(cfg)
    state = transfer.initial_state(exp, transfer.resolve(exp))
    assert not any("lora_" in k for k in _flat(state.params))
    want = _logits(src_exp.graphdef, params, rest, exp.config.vocab_size)
    got = _logits(exp.graphdef, state.params, state.rest, exp.config.vocab_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_num_epochs_sets_the_steps_and_excludes_num_steps(tmp_path):
    rows = sum(1 for line in (BUNDLED_CTK / "train.jsonl").read_text().splitlines() if line.strip())
    cfg = _cfg(tmp_path / "r", "TrainConfig.num_steps=None", "TrainConfig.num_epochs=2.5",
               "TrainConfig.mixture=ctkfacts_nli_cls", "TrainConfig.batch_size=16")
    assert experiment.build(cfg).cfg.num_steps == math.ceil(2.5 * rows / 16)
    with pytest.raises(ValueError, match="num_steps=2 and TrainConfig.num_epochs=3"):
        _cfg(tmp_path / "r", "TrainConfig.num_epochs=3")


def test_final_test_evaluation_equals_the_evaluate_cli(source_run, tmp_path, capsys):
    run = tmp_path / "new"
    assert train_cli.main(_argv(run, f"TrainConfig.init_from={source_run}",
                                "TrainConfig.mixture=ctkfacts_nli_cls",
                                "TrainConfig.final_eval_split=test")) == 0
    final = json.loads((run / "results_test.json").read_text())
    assert final["extra"]["split"] == "test" and final["extra"]["init_from"]["step"] == 2
    out = tmp_path / "eval"
    assert evaluate_cli.main([f"--checkpoint={run}", "--split=test", "--step=best",
                              f"--output_dir={out}"]) == 0
    cli = json.loads(next(out.glob("eval_test_step*.json")).read_text())
    assert final["metrics"] == cli["metrics"] and final["metrics"]["ctkfacts_nli"]["cs"]


def test_final_split_that_no_task_has_is_a_config_error(tmp_path, capsys):
    run = tmp_path / "r"
    assert train_cli.main(_argv(run, "TrainConfig.mixture=ctkfacts_nli_cls",
                                "TrainConfig.final_eval_split=dev2")) == 2
    assert "final_eval_split='dev2'" in capsys.readouterr().err and not run.exists()


def test_mt5_has_no_heads_to_map(tmp_path):
    gin_config.parse(["demo_mt5.gin"], [f"TrainConfig.model_dir={tmp_path}",
                                        f"TrainConfig.init_from={tmp_path}",
                                        "TrainConfig.init_heads={'ctkfacts_xnli': 'xnli'}"])
    exp = experiment.build(configurables.train_config())
    with pytest.raises(experiment.ConfigError, match="one LM head"):
        transfer.resolve(exp)



@pytest.mark.slow
def test_demo_chain_pre_finetune_then_ctkfacts_against_scratch(tmp_path):
    """The chain of docs/transfer.md at tiny size: pre-finetune on the demo mixture, fine-tune on
    CTKFacts from it (own head, and XNLI format), and CTKFacts from scratch for the same steps."""
    pre = tmp_path / "pre"
    assert train_cli.main(_argv(pre, "TrainConfig.mixture=demo_cls")) == 0
    ft = ["TrainConfig.num_steps=None", "TrainConfig.num_epochs=0.02",
          "TrainConfig.final_eval_split=test"]
    runs = {"scratch": ("ctkfacts_nli_cls", None), "own_head": ("ctkfacts_nli_cls", pre),
            "xnli_format": ("ctkfacts_xnli_cls", pre)}
    reports = {}
    for name, (mixture, start) in runs.items():
        extra = [f"TrainConfig.init_from={start}"] if start else []
        assert train_cli.main(_argv(tmp_path / name, *ft, f"TrainConfig.mixture={mixture}",
                                    *extra)) == 0
        reports[name] = json.loads((tmp_path / name / "results_test.json").read_text())
        steps = [json.loads(x)["step"] for x in (tmp_path / name / "metrics.jsonl").read_text()
                 .splitlines() if json.loads(x)["kind"] == "train"]
        assert steps == [1, 2, 3]  # ceil(0.02 * 1200 / 8)
    assert "init_from" not in reports["scratch"]["extra"]
    assert reports["own_head"]["extra"]["init_from"]["heads"] == {"ctkfacts_nli": "ctkfacts_nli"}
    assert reports["xnli_format"]["extra"]["init_from"]["heads"] == {"xnli": "xnli"}
    for report in reports.values():
        (dataset,) = report["metrics"]
        assert 0.0 <= report["metrics"][dataset]["cs"]["macro_f1"] <= 1.0


TINY_T5 = ["T5Config.d_model=32", "T5Config.d_kv=8", "T5Config.d_ff=64", "T5Config.num_heads=4",
           "T5Config.num_layers=1", "T5Config.num_decoder_layers=1", "TrainConfig.pack=False",
           "TrainConfig.sequence_length={'inputs': 32, 'targets': 16}", "TrainConfig.num_steps=1",
           "TrainConfig.eval_every=1", "TrainConfig.batch_size=8", "TrainConfig.eval_batch_size=8",
           "TrainConfig.max_eval_examples=4", "TrainConfig.progress=False",
           "TrainConfig.async_checkpoints=False"]  # fmt: skip


def test_mt5_chain_copies_every_parameter_across_mixtures(tmp_path):
    run = tmp_path / "src"
    argv = ["--gin_file=demo_mt5.gin", *[f"--gin_param={p}" for p in (
        *TINY_T5, f"TrainConfig.model_dir={run}", "TrainConfig.mixture=ctkfacts_nli_t2t")]]
    assert train_cli.main(argv) == 0
    src, _ = _source_params(run)
    gin_config.parse(["demo_mt5.gin"], [*TINY_T5, f"TrainConfig.model_dir={tmp_path / 'new'}",
                                        f"TrainConfig.init_from={run}",
                                        "TrainConfig.mixture=ctkfacts_xnli_t2t",
                                        "TrainConfig.mesh_data=2", "TrainConfig.mesh_fsdp=4"])
    exp = experiment.build(configurables.train_config())
    got = _flat(transfer.initial_state(exp, transfer.resolve(exp)).params)
    assert sorted(got) == sorted(src)
    for k, v in src.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)

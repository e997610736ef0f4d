"""``python -m mtl_jax.convert``: HF -> ours -> HF reproduces every tensor, --verify against the
transformers PyTorch models (and its failure on a corrupted checkpoint), export of real training
checkpoints that transformers loads and agrees with, and the bad-input errors (exit status 2).

References: the HF source files themselves (round trips are bit-exact) and transformers' PyTorch
models (logits of the exports). One run goes through ``subprocess``; the rest call ``main``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from mtl_jax.convert import main, random_t5_inputs
from mtl_jax.models import checkpoint_io, hf_t5
from mtl_jax.models.checkpoint_io import load_converted, save_converted
from mtl_jax.models.hf_xlmr import random_padded_inputs
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.xlmr import XLMRConfig
from mtl_jax.training import optimizers as opt
from mtl_jax.training import partitioning as part
from mtl_jax.training import train_state as ts
from mtl_jax.training.checkpoints import CheckpointStore

REPO = Path(__file__).resolve().parents[1]
HF_CONFIGS = helpers.XLMR_HF_CONFIGS
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _tensors(directory: Path) -> dict[str, np.ndarray]:
    return load_file(str(directory / "model.safetensors"))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # as fast_compiles, for the child
    return subprocess.run([sys.executable, "-m", "mtl_jax.convert", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------------
# HF -> ours -> HF
# ------------------------------------------------------------------------------------------------


def test_mt5_untied_round_trip_through_the_cli_subprocess(tmp_path):
    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    helpers.make_hf("mt5_a").save_pretrained(src)
    done = _run_cli("hf-to-jax", src, ours, "--verify")
    assert done.returncode == 0, done.stderr
    # Progress on stderr (with timings), verification table on stdout.
    assert "reading model.safetensors" in done.stderr and "done in" in done.stderr
    line = next(x for x in done.stdout.splitlines() if "MT5ForConditionalGeneration logits" in x)
    assert line.endswith("OK") and "PASSED" in done.stdout, done.stdout
    print(line)
    record = json.loads((ours / "mtl_jax_model.json").read_text())
    assert record["family"] == "t5" and record["format_version"] == 1
    assert record["config"]["model_type"] == "mt5" and not record["config"]["tie_word_embeddings"]

    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    helpers.assert_same_tensors(_tensors(back), _tensors(src), "mt5")
    assert "lm_head.weight" in _tensors(back)  # untied head kept as its own tensor
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(back)
    assert type(reloaded).__name__ == "MT5ForConditionalGeneration"


def test_t5_tied_round_trip(tmp_path):
    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    helpers.make_hf("t5_relu_a").save_pretrained(src)
    assert main(["hf-to-jax", str(src), str(ours)]) == 0
    model, config, family = load_converted(ours)
    assert family == "t5" and config.tie_word_embeddings and model.lm_head is None
    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    helpers.assert_same_tensors(_tensors(back), _tensors(src), "t5 tied")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(back)
    assert hf.lm_head.weight is hf.shared.weight and hf.config.scale_decoder_outputs

    # Inside a mesh context the parameters come back placed by their logical axes.
    with jax.set_mesh(part.make_mesh(1, 2, 4)), nnx.logical_axis_rules(part.rules_by_name("fsdp")):
        sharded = load_converted(ours).model
    embedding = sharded.shared.embedding.get_value()  # [vocab 80 -> 128, embed 20]: (tensor, fsdp)
    assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert {s.data.shape for s in embedding.addressable_shards} == {(32, 10)}
    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(sharded, nnx.Param)),
                                 nnx.to_flat_state(nnx.state(model, nnx.Param)), strict=True):
        assert np.array_equal(np.asarray(x.get_value()), np.asarray(y.get_value())), path


def test_xlmr_base_model_round_trip_both_ways(tmp_path):
    src, ours, back, again = (tmp_path / n for n in ("hf", "ours", "back", "again"))
    helpers.hf_xlmr("model", HF_CONFIGS[1], seed=4).save_pretrained(src)
    assert main(["hf-to-jax", str(src), str(ours)]) == 0
    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    helpers.assert_same_tensors(_tensors(back / "encoder"), _tensors(src), "xlmr encoder")
    # The export layout converts back to the same parameters (ours -> HF -> ours).
    assert main(["hf-to-jax", str(back), str(again)]) == 0
    first, second = load_converted(ours), load_converted(again)
    assert first.config == second.config
    a, b = checkpoint_io.params_of(first.model), checkpoint_io.params_of(second.model)
    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.State(a)), nnx.to_flat_state(nnx.State(b)),
                                 strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), path


def test_xlmr_sequence_classification_round_trip_and_verify(tmp_path, capsys):
    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    cls = helpers.hf_xlmr("cls", HF_CONFIGS[0], seed=5, num_labels=3)
    cls.config.id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    cls.config.label2id = {v: k for k, v in cls.config.id2label.items()}
    cls.save_pretrained(src)
    assert main(["hf-to-jax", str(src), str(ours), "--task_names", "xnli", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "XLMRobertaForSequenceClassification logits (head 0, 3 labels)" in out, out
    assert "encoder last_hidden_state" in out and "PASSED" in out, out
    print(out)
    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    helpers.assert_same_tensors(_tensors(back / "xnli"), _tensors(src), "xlmr classifier")
    exported = json.loads((back / "xnli" / "config.json").read_text())
    assert exported["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(back / "xnli")
    assert isinstance(hf, transformers.XLMRobertaForSequenceClassification)


def test_xlmr_extra_heads_from_task_num_labels(tmp_path, capsys):
    """A classifier directory plus --task_num_labels: head 0 is the checkpoint's, others fresh."""
    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    helpers.hf_xlmr("cls", HF_CONFIGS[0], seed=6, num_labels=3).save_pretrained(src)
    rc = main(["hf-to-jax", str(src), str(ours), "--task_num_labels", "3,2", "--task_names", "a,b"])
    assert rc == 0
    assert "['b'] are freshly initialised" in capsys.readouterr().err
    assert load_converted(ours).config.task_num_labels == (3, 2)
    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    helpers.assert_same_tensors(_tensors(back / "a"), _tensors(src), "head 0")
    assert _tensors(back / "b")["classifier.out_proj.weight"].shape == (2, HF_CONFIGS[0]["hidden_size"])


# ------------------------------------------------------------------------------------------------
# --verify detects a wrong conversion
# ------------------------------------------------------------------------------------------------


def test_verify_fails_on_one_corrupted_tensor(tmp_path, capsys):
    src, ours, bad = tmp_path / "hf", tmp_path / "ours", tmp_path / "bad"
    helpers.make_hf("mt5_b").save_pretrained(src)
    assert main(["hf-to-jax", str(src), str(ours), "--verify"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["verify", str(ours), str(src)]) == 0
    capsys.readouterr()

    model, config, family = load_converted(ours)
    kernel = model.decoder.layers[0].cross_attention.value.kernel
    value = np.array(kernel[...])
    value[3, 1, 2] += 0.05 * np.abs(value).max()  # one element of one tensor
    kernel.set_value(value)
    save_converted(model, config, family, bad)
    assert main(["verify", str(bad), str(src)]) == 1
    out = capsys.readouterr().out
    assert "OVER TOLERANCE" in out and "FAILED" in out, out
    print(out)
    # The same corruption passes under a tolerance above the measured difference.
    rel = float(out.split("max rel diff ")[1].split()[0])
    assert rel > 1e-5
    assert main(["verify", str(bad), str(src), "--tolerance", str(2 * rel)]) == 0


def test_verify_without_torch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    src = tmp_path / "hf"
    helpers.make_hf("mt5_c").save_pretrained(src)
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    assert main(["hf-to-jax", str(src), str(tmp_path / "out"), "--verify"]) == 2
    assert "--verify needs PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # checked before any work


# ------------------------------------------------------------------------------------------------
# jax-to-hf from training checkpoints
# ------------------------------------------------------------------------------------------------

# What Experiment.model_record stores: every config field but the numerics/dropout switches.
_NOT_RECORDED = ("dtype", "attention_impl", "dropout_rate", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "attention_dropout_rate", "classifier_dropout")


def _model_record(family: str, config, heads: list[str]) -> dict:
    fields = json.loads(json.dumps(dataclasses.asdict(config)))
    return {"family": family, "heads": heads,
            **{k: v for k, v in fields.items() if k not in _NOT_RECORDED}}


def test_jax_to_hf_from_sharded_t5_training_checkpoint(tmp_path, capsys):
    config = T5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                      num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=20, dropout_rate=0.0)
    mesh = part.make_mesh(2, 2, 2)
    optimizer = opt.make_optimizer("adafactor", min_dim_size_to_factor=8)
    graphdef, state, _ = ts.create_train_state(
        lambda: T5Model(config, rngs=nnx.Rngs(1)), optimizer, mesh, part.rules_by_name("t5x"))

    def scaled(factor: float) -> ts.TrainState:  # on the host: no per-shape compiles
        return state.replace(params=jax.tree.map(
            lambda x: jax.device_put(factor * np.asarray(x), x.sharding), state.params))

    states = {1: state, 2: scaled(1.5), 3: scaled(-1.0)}
    scores = {1: 0.4, 2: 0.9, 3: None}  # best = 2, latest = 3
    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints", keep_last=3, async_save=False)
    for step, s in states.items():
        store.save(step, s, {"position": step}, {"model": _model_record("t5", config, ["xnli"])},
                   score=scores[step])
    store.close()
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))

    def exported_equals(dst: Path, step: int) -> None:
        flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.State(helpers.host(states[step].params)))}
        helpers.assert_same_tensors(_tensors(dst), hf_t5.params_to_hf(flat, config), f"step {step}")

    assert main(["jax-to-hf", str(run), str(tmp_path / "best")]) == 0  # default: best
    exported_equals(tmp_path / "best", 2)
    assert main(["jax-to-hf", str(run / "checkpoints"), str(tmp_path / "latest"),
                 "--step", "latest"]) == 0
    exported_equals(tmp_path / "latest", 3)
    assert main(["jax-to-hf", str(run / "checkpoints" / "1"), str(tmp_path / "one")]) == 0
    exported_equals(tmp_path / "one", 1)
    capsys.readouterr()
    assert main(["jax-to-hf", str(run), str(tmp_path / "nope"), "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert "step 7 is not in" in err and "available steps: 1, 2, 3 (best: 2, latest: 3)" in err, err
    assert not (tmp_path / "nope").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # run untouched

    # transformers loads the export and agrees with the training model of the best step.
    hf = transformers.MT5ForConditionalGeneration.from_pretrained(
        tmp_path / "best", attn_implementation="eager").eval()
    enc, dec = random_t5_inputs(config, batch=3, enc_len=13, dec_len=7, seed=1)
    assert enc[1:].min() == 0  # padded rows
    with torch.no_grad():
        ids = torch.from_numpy(enc).long()
        want = hf(input_ids=ids, attention_mask=(ids != 0).long(),
                  decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()
    trained = nnx.merge(graphdef, helpers.host(states[2].params), helpers.host(states[2].rest))
    helpers.assert_close(helpers.t5_forward(trained, enc, dec), want, helpers.LOGIT_RTOL,
                         helpers.LOGIT_ATOL, "training checkpoint's model vs its HF export")


def test_jax_to_hf_from_xlmr_training_checkpoint_one_dir_per_head(tmp_path):
    config = XLMRConfig(**HF_CONFIGS[1], task_num_labels=(3, 2))
    model = helpers.xlmr_random_model(config, seed=7)
    params = helpers.host(checkpoint_io.params_of(model))
    optimizer = opt.make_optimizer("adamw", learning_rate=1e-3)
    state = ts.TrainState(step=np.int32(5), params=params, opt_state=optimizer.tx.init(params),
                          rest={}, rng=ts.seed_key(0))
    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints", async_save=False)
    store.save(5, state, {}, {"model": _model_record("xlmr", config, ["xnli", "pawsx"])})
    store.close()

    dst = tmp_path / "hf"
    assert main(["jax-to-hf", str(run), str(dst)]) == 0  # no score: latest
    assert json.loads((dst / "mtl_jax_tasks.json").read_text())["tasks"] == [
        {"name": "xnli", "num_labels": 3, "dir": "xnli"},
        {"name": "pawsx", "num_labels": 2, "dir": "pawsx"},
    ]
    ids, mask = random_padded_inputs(config, 4, 12, seed=3)
    for task, name in enumerate(("xnli", "pawsx")):
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(
            dst / name, attn_implementation="eager").eval()
        with torch.no_grad():
            want = hf(input_ids=torch.from_numpy(ids).long(),
                      attention_mask=torch.from_numpy(mask).long()).logits.numpy()
        got = helpers.xlmr_forward(model, ids, mask, np.full((4,), task, np.int32))["logits"]
        got = got[:, : config.task_num_labels[task]]
        helpers.assert_close(got, want, helpers.LOGIT_RTOL, helpers.LOGIT_ATOL, name)
    # --task_names renames the directories.
    assert main(["jax-to-hf", str(run), str(tmp_path / "renamed"), "--task_names", "n", "p"]) == 0
    assert (tmp_path / "renamed" / "n" / "config.json").is_file()


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_sources_are_named(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    dst = str(tmp_path / "dst")
    assert f"no config.json in {empty}" in _error(capsys, ["hf-to-jax", str(empty), dst])
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    err = _error(capsys, ["hf-to-jax", str(gpt), dst])
    assert "unknown model_type 'gpt2'" in err and str(gpt / "config.json") in err
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(T5Config(vocab_size=32).to_hf()))
    err = _error(capsys, ["hf-to-jax", str(no_weights), dst])
    assert f"no weights in {no_weights}" in err and "model.safetensors" in err
    err = _error(capsys, ["hf-to-jax", str(no_weights), dst, "--family", "xlmr"])
    assert "--family xlmr does not fit" in err
    mt5 = tmp_path / "mt5"
    helpers.make_hf("mt5_c").save_pretrained(mt5)
    assert "apply to XLM-R" in _error(capsys, ["hf-to-jax", str(mt5), dst, "--task_num_labels", "3"])
    assert "is neither a converted checkpoint" in _error(capsys, ["jax-to-hf", str(empty), dst])
    assert "does not exist" in _error(capsys, ["jax-to-hf", str(tmp_path / "missing"), dst])
    assert not (tmp_path / "dst").exists()


def test_destination_must_be_empty_unless_overwrite(tmp_path, capsys):
    src, dst = tmp_path / "hf", tmp_path / "dst"
    helpers.make_hf("mt5_c").save_pretrained(src)
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    err = _error(capsys, ["hf-to-jax", str(src), str(dst)])
    assert f"destination {dst} is not empty (notes.txt)" in err and "--overwrite" in err
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]

    assert main(["hf-to-jax", str(src), str(dst), "--overwrite"]) == 0
    assert (dst / "notes.txt").read_text() == "mine"  # nothing else touched
    # Overwriting a converted checkpoint replaces its params.
    assert main(["hf-to-jax", str(src), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["mtl_jax_model.json", "notes.txt", "params"]
    # A params/ folder this tool did not write is never replaced.
    other = tmp_path / "other"
    (other / "params").mkdir(parents=True)
    err = _error(capsys, ["hf-to-jax", str(src), str(other), "--overwrite"])
    assert "not replacing a folder this tool did not write" in err
    assert sorted(p.name for p in other.iterdir()) == ["params"]

    hf_dir = tmp_path / "hf_out"
    assert main(["jax-to-hf", str(dst), str(hf_dir)]) == 0
    assert "is not empty" in _error(capsys, ["jax-to-hf", str(dst), str(hf_dir)])
    assert main(["jax-to-hf", str(dst), str(hf_dir), "--overwrite"]) == 0
    err = _error(capsys, ["jax-to-hf", str(dst), str(tmp_path / "x"), "--step", "3"])
    assert "--step applies to training checkpoints" in err


def test_jax_to_hf_of_a_converted_checkpoint_copies_the_sources_tokenizer(tmp_path):
    """A pretrained directory with its tokenizer -> hf-to-jax -> jax-to-hf: the export loads
    with AutoTokenizer and tokenizes like the source's tokenizer (offline, the demo vocabulary)."""
    import shutil

    from mtl_jax.data import vocab as vocab_lib

    src, ours, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
    helpers.make_hf("mt5_c").save_pretrained(src)
    shutil.copyfile(vocab_lib.DEMO_T5_SPM, src / "spiece.model")
    helpers.hf_tokenizer(src, "mt5").save_pretrained(src)  # the source's own tokenizer files
    assert main(["hf-to-jax", str(src), str(ours)]) == 0
    assert main(["jax-to-hf", str(ours), str(back)]) == 0
    assert (back / "spiece.model").read_bytes() == (src / "spiece.model").read_bytes()
    text = "Praha je hlavní město. The cat sat."
    want = transformers.AutoTokenizer.from_pretrained(src)(text)["input_ids"]
    assert transformers.AutoTokenizer.from_pretrained(back)(text)["input_ids"] == want
    # A source without tokenizer files: the export says so and still writes the model.
    bare, bare_ours, bare_back = tmp_path / "bare", tmp_path / "bare_ours", tmp_path / "bare_back"
    helpers.make_hf("mt5_c").save_pretrained(bare)
    assert main(["hf-to-jax", str(bare), str(bare_ours)]) == 0
    assert main(["jax-to-hf", str(bare_ours), str(bare_back)]) == 0
    assert not (bare_back / "spiece.model").exists() and (bare_back / "config.json").is_file()

"""XLM-R Hugging Face conversion: exact round trips both ways, the export layout loading with
``from_pretrained``, parameter counts of the gin configs vs transformers, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import helpers
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from gin import config as gin_config
from gin import config_parser
from transformers import (
    AutoModelForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from mtl_jax.models.hf_io import read_config, read_state_dict
from mtl_jax.models.hf_xlmr import MANIFEST_NAME, export_hf_xlmr, load_hf_xlmr
from mtl_jax.models.layers import count_params
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "models"
TASKS = ("nli", "sts", "paraphrase")
LABELS = (3, 1, 2)
HF_CONFIGS = helpers.XLMR_HF_CONFIGS


def _hf_family(cfg: dict, seed: int) -> tuple[XLMRobertaModel, list[XLMRobertaForSequenceClassification]]:
    """An encoder and one classifier per task, all sharing that encoder's weights."""
    encoder = helpers.hf_xlmr("model", cfg, seed=seed)
    classifiers = [helpers.hf_xlmr("cls", cfg, seed=seed + 1 + k, num_labels=n) for k, n in enumerate(LABELS)]
    for c in classifiers:
        missing, unexpected = c.roberta.load_state_dict(encoder.state_dict(), strict=False)
        assert missing == [] and set(unexpected) == {"pooler.dense.weight", "pooler.dense.bias"}
    return encoder, classifiers


@pytest.mark.parametrize("index", range(len(HF_CONFIGS)))
def test_hf_to_ours_to_hf_is_exact(tmp_path, index):
    encoder, classifiers = _hf_family(HF_CONFIGS[index], seed=100 * index)
    src = helpers.save(encoder, tmp_path / "src" / "encoder")
    head_dirs = {k: helpers.save(c, tmp_path / "src" / TASKS[k]) for k, c in enumerate(classifiers)}
    model, config, _ = load_hf_xlmr(src, task_num_labels=LABELS, head_dirs=head_dirs)

    dst = tmp_path / "dst"
    id2label = {"nli": ["entailment", "neutral", "contradiction"]}
    written = export_hf_xlmr(model, config, dst, TASKS, id2label=id2label)
    assert set(written) == {"encoder", *TASKS}
    helpers.assert_same_tensors(read_state_dict(dst / "encoder"), read_state_dict(src), "encoder")
    for k, task in enumerate(TASKS):
        helpers.assert_same_tensors(read_state_dict(dst / task), read_state_dict(head_dirs[k]), task)
        hf_config = read_config(dst / task)
        assert len(hf_config["id2label"]) == LABELS[k]
        assert hf_config["problem_type"] == ("regression" if LABELS[k] == 1 else "single_label_classification")
    assert read_config(dst / "nli")["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    assert [(t["name"], t["num_labels"]) for t in manifest["tasks"]] == list(zip(TASKS, LABELS, strict=True))


def test_ours_to_hf_to_ours_is_exact_and_transformers_agrees(tmp_path):
    config = XLMRConfig(**HF_CONFIGS[1], task_num_labels=LABELS)
    model = helpers.xlmr_random_model(config, seed=1)
    dst = tmp_path / "export"
    export_hf_xlmr(model, config, dst, TASKS)

    back, back_config, names = load_hf_xlmr(dst)
    assert names == TASKS and back_config == config
    ours = nnx.to_flat_state(nnx.state(model, nnx.Param))
    theirs = dict(nnx.to_flat_state(nnx.state(back, nnx.Param)))
    assert len(ours) == len(theirs)
    for path, var in ours:
        want = np.array(var.get_value())
        if path[-2:] == ("word_embeddings", "embedding"):  # the padded rows stay ours: zeros
            assert want.shape[0] == config.padded_vocab_size > config.vocab_size
            want[config.vocab_size:] = 0.0
        np.testing.assert_array_equal(np.asarray(theirs[path].get_value()), want, err_msg=str(path))

    # Without a pooler the round trip stays exact (the manifest records it).
    no_pooler = XLMRConfig(**HF_CONFIGS[0], task_num_labels=(2,), add_pooling_layer=False)
    export_hf_xlmr(helpers.xlmr_random_model(no_pooler, seed=3), no_pooler, tmp_path / "np", ("t",))
    assert load_hf_xlmr(tmp_path / "np").model.encoder.pooler is None

    # Every exported directory is a complete transformers model that reproduces ours.
    ids, mask = helpers.xlmr_inputs(config, seed=2, batch=4)
    encoder, info = XLMRobertaModel.from_pretrained(dst / "encoder", attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        ref = encoder.eval()(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask))
    out = helpers.xlmr_forward(model, ids, mask, jnp.zeros((4,), jnp.int32))
    helpers.xlmr_assert_close(out["hidden"], ref.last_hidden_state.numpy(), what="exported encoder")
    helpers.xlmr_assert_close(out["pooled"], ref.pooler_output.numpy(), what="exported pooler")
    for k, task in enumerate(TASKS):
        hf, info = AutoModelForSequenceClassification.from_pretrained(
            dst / task, attn_implementation="eager", output_loading_info=True
        )
        assert isinstance(hf, XLMRobertaForSequenceClassification) and hf.config.num_labels == LABELS[k]
        assert not info["missing_keys"] and not info["unexpected_keys"], task
        with torch.no_grad():
            ref = hf.eval()(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask)).logits.numpy()
        out = helpers.xlmr_forward(model, ids, mask, jnp.full((4,), k, jnp.int32))
        helpers.xlmr_assert_close(np.asarray(out["logits"])[:, : LABELS[k]], ref, what=f"exported {task}")


def test_masked_lm_checkpoint_loads_encoder(tmp_path):
    """The published xlm-roberta checkpoints are XLMRobertaForMaskedLM (roberta.* + lm_head.*)."""
    config = XLMRobertaConfig(**HF_CONFIGS[0], attn_implementation="eager")
    torch.manual_seed(0)
    mlm = XLMRobertaForMaskedLM(config)
    with torch.no_grad():
        for p in mlm.parameters():
            p.normal_(0, 0.1)
    mlm.eval()
    model, cfg, _ = load_hf_xlmr(helpers.save(mlm, tmp_path / "mlm"))
    ids, mask = helpers.xlmr_inputs(cfg, seed=3)
    with torch.no_grad():
        ref = mlm.roberta(input_ids=helpers.to_torch(ids), attention_mask=helpers.to_torch(mask)).last_hidden_state.numpy()
    helpers.xlmr_assert_close(helpers.xlmr_forward(model, ids, mask)["hidden"], ref, what="mlm encoder")


def _gin_bindings(path: Path) -> dict:
    """``XLMRConfig.<field> = value`` statements, parsed by gin's own parser (no registration)."""
    parser = config_parser.ConfigParser(path.read_text(), gin_config.ParserDelegate(skip_unknown=True))
    out = {}
    for statement in parser:
        assert isinstance(statement, config_parser.BindingStatement), statement
        assert statement.selector == "XLMRConfig" and statement.scope == "", statement
        out[statement.arg_name] = statement.value
    return out


def _hf_count(config: XLMRConfig, num_labels: int | None = None) -> int:
    kw = {k: v for k, v in config.to_hf().items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        if num_labels is None:
            hf = XLMRobertaModel(XLMRobertaConfig(**kw))
        else:
            hf = XLMRobertaForSequenceClassification(XLMRobertaConfig(**kw, num_labels=num_labels))
    return sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("name", ["xlmr_tiny", "xlmr_base", "xlmr_large"])
def test_gin_config_parameter_count_matches_transformers(name):
    config = XLMRConfig(**_gin_bindings(GIN_DIR / f"{name}.gin"))
    ours = count_params(nnx.eval_shape(lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0))))
    vocab_rows = (config.padded_vocab_size - config.vocab_size) * config.hidden_size
    assert ours == _hf_count(config) + vocab_rows  # the padded word-embedding rows are ours only
    print(f"{name}: {ours:,} parameters (XLMRobertaModel with pooler)")

    if name != "xlmr_tiny":
        return
    # With heads: HF's classifier per task, plus the zero columns padding each head to max labels.
    tasks = XLMRConfig(**{**_gin_bindings(GIN_DIR / f"{name}.gin"), "task_num_labels": LABELS})
    with_heads = count_params(nnx.eval_shape(lambda: XLMRMultiTask(tasks, rngs=nnx.Rngs(0))))
    no_pooler = _hf_count(config) - (config.hidden_size**2 + config.hidden_size)
    heads = sum(_hf_count(config, n) - no_pooler for n in LABELS)
    padding = sum((max(LABELS) - n) * (config.hidden_size + 1) for n in LABELS)
    assert with_heads == _hf_count(config) + heads + padding + vocab_rows


def test_gin_configs_match_published_architecture():
    base = _gin_bindings(GIN_DIR / "xlmr_base.gin")
    large = _gin_bindings(GIN_DIR / "xlmr_large.gin")
    assert XLMRConfig(**base) == XLMRConfig()  # our defaults are xlm-roberta-base
    assert (large["hidden_size"], large["num_hidden_layers"], large["num_attention_heads"],
            large["intermediate_size"]) == (1024, 24, 16, 4096)
    assert math.isclose(base["layer_norm_eps"], 1e-5) and base["max_position_embeddings"] == 514


def test_import_errors_name_the_fault(tmp_path):
    cls = helpers.save(helpers.hf_xlmr("cls", HF_CONFIGS[0], seed=5, num_labels=3), tmp_path / "cls")
    with pytest.raises(ValueError, match=r"cls: head has 3 labels but task 1 expects 2"):
        load_hf_xlmr(cls, task_num_labels=(3, 2), head_dirs={1: cls})
    state = read_state_dict(cls)
    del state["roberta.encoder.layer.0.output.dense.weight"]
    from safetensors.numpy import save_file

    save_file(state, str(cls / "model.safetensors"))
    with pytest.raises(KeyError, match="roberta.encoder.layer.0.output.dense.weight"):
        load_hf_xlmr(cls)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_xlmr(tmp_path / "nowhere")

    config = XLMRConfig(**HF_CONFIGS[0], task_num_labels=(2, 2))
    model = nnx.eval_shape(lambda: XLMRMultiTask(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"task name 'encoder' cannot be a directory name next to encoder/"):
        export_hf_xlmr(model, config, tmp_path / "x", ("encoder", "b"))
    with pytest.raises(ValueError, match="1 task names for 2 heads"):
        export_hf_xlmr(model, config, tmp_path / "x", ("a",))
    with pytest.raises(ValueError, match="XLMRConfig.num_attention_heads"):
        XLMRConfig(hidden_size=30, num_attention_heads=4)

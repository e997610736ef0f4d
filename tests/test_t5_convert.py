"""Hugging Face T5/mT5 conversion: exact round trips, from_pretrained on our exports, configs, and
the parameter counts of the gin model configs (computed abstractly) against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import gin
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import helpers  # noqa: E402

from mtl_jax.models import hf_io, hf_t5  # noqa: E402
from mtl_jax.models.layers import count_params  # noqa: E402
from mtl_jax.models.t5 import T5Config, T5Model  # noqa: E402

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "models"
# Published sizes (mT5 paper, Table 8 / model cards), an anchor independent of both codebases.
PUBLISHED_PARAMS = {"small": 300e6, "base": 580e6, "large": 1.2e9, "xl": 3.7e9}


def _file_tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("name", ["mt5_a", "t5_relu_a"])
def test_hf_to_ours_to_hf_is_exact_and_loads(tmp_path, name):
    hf = helpers.make_hf(name)
    src, dst = tmp_path / "hf", tmp_path / "export"
    hf.save_pretrained(src)
    model, config = hf_t5.load_hf_t5(src)
    assert config.tie_word_embeddings == name.startswith("t5")
    hf_t5.export_hf_t5(model, config, dst)

    before, after = _file_tensors(src), _file_tensors(dst)
    assert set(after) == set(before), set(after) ^ set(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype and np.array_equal(after[key], value), key

    reloaded = type(hf).from_pretrained(dst, attn_implementation="eager").eval()
    assert (reloaded.lm_head.weight is reloaded.shared.weight) == config.tie_word_embeddings
    batch = helpers.random_batch(hf.config.vocab_size, seed=6)
    with torch.no_grad():
        ref, again = (
            helpers.hf_forward(hf, batch).logits.numpy(),
            helpers.hf_forward(reloaded, batch).logits.numpy(),
        )
    np.testing.assert_array_equal(again, ref)
    ours = helpers.t5_forward(model, jnp.asarray(batch["enc"]), jnp.asarray(batch["dec_in"]))
    helpers.assert_close(
        ours, again, helpers.LOGIT_RTOL, helpers.LOGIT_ATOL, "ours vs exported-and-reloaded HF"
    )


@pytest.mark.parametrize(
    "model_type,tied,ff",
    [("mt5", False, "gated-gelu"), ("t5", True, "relu"), ("t5", False, "gated-gelu")],
)
def test_ours_to_hf_to_ours_is_exact(tmp_path, model_type, tied, ff):
    config = T5Config(
        vocab_size=61,
        d_model=20,
        d_kv=6,
        d_ff=28,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=40,
        feed_forward_proj=ff,
        tie_word_embeddings=tied,
        model_type=model_type,
    )
    # Random values straight into the model (random init would spend seconds compiling RNG ops).
    rng = np.random.default_rng(3)
    abstract = nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0)))
    model = hf_t5.model_from_params(
        {
            k: rng.normal(size=v.shape).astype(np.float32)
            for k, v in hf_t5.flat_params(abstract).items()
        },
        config,
    )
    hf_t5.export_hf_t5(model, config, tmp_path)
    loaded, loaded_config = hf_t5.load_hf_t5(tmp_path)
    assert loaded_config == config
    ours, back = hf_t5.flat_params(model), hf_t5.flat_params(loaded)
    assert set(ours) == set(back)
    # The padded vocabulary rows (61 -> 128) stay ours: they come back as zeros.
    vocab_axis = {("shared", "embedding"): 0, ("lm_head", "kernel"): 1}
    for path, value in ours.items():
        value = np.array(value)
        if path in vocab_axis:
            np.moveaxis(value, vocab_axis[path], 0)[config.vocab_size:] = 0.0
        assert np.array_equal(np.asarray(back[path]), value), path
    # transformers reads the export as the same architecture (T5 v1.1: untied, not rescaled).
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert (
        type(hf).__name__ == ("MT5" if model_type == "mt5" else "T5") + "ForConditionalGeneration"
    )
    assert (hf.lm_head.weight is hf.shared.weight) == tied
    if model_type == "t5":
        assert hf.config.scale_decoder_outputs == tied
    assert hf.shared.weight.shape == (config.vocab_size, config.d_model)  # no padded rows
    assert np.array_equal(
        hf.shared.weight.detach().numpy(), np.asarray(model.shared.embedding[...])[: config.vocab_size]
    )


def test_pytorch_bin_checkpoint_loads(tmp_path):
    """The legacy ``pytorch_model.bin`` layout (with the tied embedding copies) loads too."""
    hf = helpers.make_hf("mt5_c")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model, config = hf_t5.load_hf_t5(tmp_path)
    expected = hf_t5.params_from_hf(helpers.hf_state(hf), config)
    for path, value in hf_t5.flat_params(model).items():
        assert np.array_equal(np.asarray(value), expected[path]), path


def _gin_config(path: Path) -> T5Config:
    """Parse a model gin file the way the CLIs do (classes registered by mtl_jax.configurables)."""
    import mtl_jax.configurables  # noqa: F401  (registers T5Config with gin)

    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        bindings = gin.get_bindings("T5Config")
    finally:
        gin.clear_config()
    return T5Config(**bindings)


def _hf_meta_model(config: T5Config):
    """transformers' model for the same config on the meta device (no memory), with the LM head
    untied as in the published mT5 checkpoints (transformers 5 constructs MT5 tied)."""
    hf_config = transformers.AutoConfig.for_model(**config.to_hf())
    with torch.device("meta"):
        model = transformers.AutoModelForSeq2SeqLM.from_config(hf_config)
        if not config.tie_word_embeddings:
            model.lm_head.weight = torch.nn.Parameter(
                torch.empty(config.vocab_size, config.d_model)
            )
            model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xl"])
def test_gin_model_config_parameter_count_matches_transformers(size):
    config = _gin_config(GIN_DIR / f"mt5_{size}.gin")
    assert config.model_type == "mt5" and not config.tie_word_embeddings
    abstract = nnx.eval_shape(lambda: T5Model(config, rngs=nnx.Rngs(0)))
    ours = count_params(abstract)
    hf = _hf_meta_model(config)
    hf_params = dict(hf.named_parameters())
    assert ours == sum(p.numel() for p in hf_params.values()), (
        ours,
        sum(p.numel() for p in hf_params.values()),
    )
    # Tensor by tensor: every HF parameter has our counterpart with the converted shape.
    flat = hf_t5.flat_params(abstract)
    entries = hf_t5.parameter_map(config)
    assert {e.hf for e in entries} == set(hf_params)
    for e in entries:
        assert hf_t5.hf_shape(e.kind, tuple(flat[e.ours].shape), config) == tuple(hf_params[e.hf].shape), (
            e.hf
        )
    if size in PUBLISHED_PARAMS:
        assert abs(ours / PUBLISHED_PARAMS[size] - 1) < 0.03, ours
    print(f"mt5_{size}: {ours:,} parameters")


def test_config_from_hf_semantics():
    """transformers 5 config files: T5 v1.1 is saved as tie_word_embeddings=True with
    scale_decoder_outputs=False; mT5 never rescales; original T5 rescales and ties."""
    v11 = transformers.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False).to_dict()
    assert v11["tie_word_embeddings"] is True and v11["scale_decoder_outputs"] is False
    assert not T5Config.from_hf(v11).tie_word_embeddings
    assert T5Config.from_hf(transformers.T5Config().to_dict()).tie_word_embeddings
    assert (
        T5Config.from_hf({"model_type": "t5", "tie_word_embeddings": False}).tie_word_embeddings
        is False
    )
    mt5 = T5Config.from_hf(transformers.MT5Config().to_dict())
    assert not mt5.tie_word_embeddings and mt5.activation == "gelu_new" and mt5.is_gated
    # Defaults follow the class: mT5-small / t5-small.
    assert T5Config.from_hf({"model_type": "mt5"}).vocab_size == 250112
    assert T5Config.from_hf({"model_type": "t5"}).feed_forward_proj == "relu"
    # Our export reloads as the same architecture in transformers.
    for cfg in (mt5, T5Config.from_hf(v11), T5Config.from_hf(transformers.T5Config().to_dict())):
        hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf())
        assert T5Config.from_hf(hf_cfg.to_dict()) == cfg
    assert T5Config.from_hf(mt5.to_hf(), dtype="bfloat16").dtype == "bfloat16"


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        T5Config.from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="T5Config.feed_forward_proj"):
        T5Config(feed_forward_proj="gated-gelu-x")
    with pytest.raises(ValueError, match="T5Config.attention_impl"):
        T5Config(attention_impl="flash")
    with pytest.raises(ValueError, match="relative_attention_max_distance"):
        T5Config(relative_attention_num_buckets=32, relative_attention_max_distance=16)
    with pytest.raises(ValueError, match="never rescales"):
        T5Config(model_type="mt5", tie_word_embeddings=True).to_hf()

    hf = helpers.make_hf("mt5_c")
    config = T5Config.from_hf(hf.config.to_dict())
    state = helpers.hf_state(hf)
    missing = {k: v for k, v in state.items() if k != "encoder.final_layer_norm.weight"}
    with pytest.raises(ValueError, match="missing tensors.*encoder.final_layer_norm"):
        hf_t5.params_from_hf(missing, config)
    with pytest.raises(ValueError, match="not used.*extra.weight"):
        hf_t5.params_from_hf({**state, "extra.weight": np.zeros(2)}, config)
    deeper = T5Config.from_hf({**hf.config.to_dict(), "num_layers": 2})
    with pytest.raises(ValueError, match="missing tensors.*encoder.block.1"):
        hf_t5.params_from_hf(state, deeper)
    # A missing lm_head in an untied checkpoint means "the embedding", as transformers 5 loads it.
    no_head = {k: v for k, v in state.items() if k != "lm_head.weight"}
    params = hf_t5.params_from_hf(no_head, config)
    head = params[("lm_head", "kernel")]  # [embed, padded vocab]: zero columns past the vocabulary
    assert np.array_equal(head[:, : config.vocab_size], state["shared.weight"].T)
    assert head.shape[1] == config.padded_vocab_size and not head[:, config.vocab_size:].any()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_t5.load_hf_t5(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        hf_t5.load_hf_t5(tmp_path)
    own = {k: v for k, v in state.items() if "embed_tokens" not in k}
    hf_io.write_checkpoint(
        tmp_path, config.to_hf(), {**own, "shared.weight": own["shared.weight"][:5]}
    )
    with pytest.raises(ValueError, match="shape"):
        hf_t5.load_hf_t5(tmp_path)

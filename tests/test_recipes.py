"""The thesis's final recipes resolve to the settings they claim (gin in, TrainConfig out), and
the methods' gin fragments compose with the demos."""

from __future__ import annotations

import pytest

from mtl_jax import configurables, experiment, gin_config
from mtl_jax.data import mixtures

THESIS_R3F = {"sigma": 1e-5, "lam": 0.01, "noise": "uniform"}


@pytest.mark.parametrize("recipe,mixture,family", [
    ("mt5_final.gin", "xglue_mix_t2t", "t5"),
    ("mt5_final_mc4.gin", "xglue_mix_mc4_t2t", "t5"),
    ("xlmr_final.gin", "xglue_mix_cls", "xlmr"),
])
def test_final_recipes(recipe, mixture, family):
    gin_config.parse([recipe])
    cfg = configurables.train_config()
    assert (cfg.family, cfg.mixture, cfg.batch_mode) == (family, mixture, "heterogeneous")
    assert (cfg.batch_size, cfg.micro_batches) == (128, 4)
    assert cfg.r3f == THESIS_R3F and cfg.loss_scaling == "log_classes"
    assert cfg.require_pretrained


def test_mc4_is_one_percent_of_the_final_mt5_mixture():
    spec = mixtures.mixture_spec("xglue_mix_mc4_t2t")
    assert sum(share for _, share in spec.fixed) == pytest.approx(0.01)
    assert len(spec.fixed) == 20 and "xnli_mix_t2t" in spec.members


@pytest.mark.parametrize("method,field,value", [
    ("methods/r3f.gin", "r3f", THESIS_R3F),
    ("methods/loss_scaling.gin", "loss_scaling", "log_classes"),
    ("methods/pcgrad.gin", "gradient_combiner", "pcgrad"),
])
@pytest.mark.parametrize("demo", ["demo_mt5.gin", "demo_xlmr.gin"])
def test_method_fragments_compose_with_the_demos(demo, method, field, value):
    gin_config.parse([demo, method])
    cfg = configurables.train_config()
    assert getattr(cfg, field) == value
    layout = experiment.task_layout(cfg)
    objective = experiment.objective(cfg, layout)
    if field == "r3f":
        assert objective.sigma == 1e-5 and objective.lam == 0.01
    if field == "gradient_combiner":
        assert experiment.gradient_combiner(cfg) is not None


def test_bad_method_settings_name_the_binding():
    gin_config.parse(["demo_xlmr.gin"], ["TrainConfig.r3f={'sigma': 1e-5, 'lambda': 1.0}"])
    cfg = configurables.train_config()
    with pytest.raises(experiment.ConfigError, match=r"TrainConfig.r3f=.*keys: sigma, lam"):
        experiment.objective(cfg, experiment.task_layout(cfg))
    gin_config.parse(["demo_xlmr.gin"], ["TrainConfig.gradient_combiner=gradnorm"])
    with pytest.raises(experiment.ConfigError, match="gradient_combiner='gradnorm'"):
        experiment.gradient_combiner(configurables.train_config())

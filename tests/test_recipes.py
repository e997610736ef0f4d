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
    ("methods/smart.gin", "smart", {"sigma": 1e-5, "step_size": 1e-3, "steps": 1, "alpha": 1.0}),
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
    if field == "smart":
        assert (objective.sigma, objective.steps, objective.normalize) == (1e-5, 1, "perturbation")
    if field == "gradient_combiner":
        assert experiment.gradient_combiner(cfg) is not None


def test_bad_method_settings_name_the_binding():
    gin_config.parse(["demo_xlmr.gin"], ["TrainConfig.r3f={'sigma': 1e-5, 'lambda': 1.0}"])
    cfg = configurables.train_config()
    with pytest.raises(experiment.ConfigError, match=r"TrainConfig.r3f=.*keys: sigma, lam"):
        experiment.objective(cfg, experiment.task_layout(cfg))
    gin_config.parse(["demo_xlmr.gin", "methods/r3f.gin", "methods/smart.gin"])
    with pytest.raises(experiment.ConfigError, match="r3f and TrainConfig.smart are both set"):
        experiment.objective(configurables.train_config(), experiment.task_layout(cfg))
    gin_config.parse(["demo_xlmr.gin"], ["TrainConfig.smart={'sigma': 1e-5, 'k': 1}"])
    with pytest.raises(experiment.ConfigError, match=r"TrainConfig.smart=.*keys: sigma, step_size"):
        experiment.objective(configurables.train_config(), experiment.task_layout(cfg))
    gin_config.parse(["demo_xlmr.gin"], ["TrainConfig.gradient_combiner=gradnorm"])
    with pytest.raises(experiment.ConfigError, match="gradient_combiner='gradnorm'"):
        experiment.gradient_combiner(configurables.train_config())


# The CTKFacts recipes of docs/transfer.md: (file, mixture, starts from, heads, LoRA).
CTK_RECIPES = [
    ("target_{f}.gin", "ctkfacts_nli_{fmt}", None, ["ctkfacts_nli"], False),
    ("prefinetuned_{f}.gin", "ctkfacts_nli_{fmt}", "/tmp/{final}@best", ["ctkfacts_nli"], False),
    ("prefinetuned_xnli_format_{f}.gin", "ctkfacts_xnli_{fmt}", "/tmp/{final}@best", ["xnli"], False),
    ("prefinetuned_lora_{f}.gin", "ctkfacts_nli_{fmt}", "/tmp/{final}@best", ["ctkfacts_nli"], True),
]  # fmt: skip


@pytest.mark.parametrize("family,fmt,final", [("mt5", "t2t", "mt5_final"),
                                              ("xlmr", "cls", "xlmr_final")])
@pytest.mark.parametrize("recipe,mixture,init_from,heads,lora", CTK_RECIPES)
def test_ctkfacts_recipes(family, fmt, final, recipe, mixture, init_from, heads, lora):
    gin_config.parse([f"ctkfacts/{recipe.format(f=family)}"])
    cfg = configurables.train_config()
    assert cfg.mixture == mixture.format(fmt=fmt)
    assert cfg.init_from == (init_from and init_from.format(final=final))
    assert (cfg.num_epochs, cfg.num_steps, cfg.final_eval_split) == (100, None, "test")
    assert cfg.require_pretrained and cfg.batch_size == 32
    assert (cfg.model_config.lora is not None) == lora
    assert list(experiment.task_layout(cfg, training=False).heads) == heads


@pytest.mark.parametrize("family,fmt", [("mt5", "t2t"), ("xlmr", "cls")])
def test_intermediate_task_recipe_trains_one_source_task(family, fmt):
    gin_config.parse([f"ctkfacts/intermediate_{family}.gin"])
    cfg = configurables.train_config()
    experiment.configure_datasets(cfg)
    assert mixtures.mixture_spec(cfg.mixture).tasks == (f"xnli_mix_{fmt}",)
    assert cfg.init_from is None and cfg.num_steps == 20000

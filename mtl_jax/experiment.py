"""Assemble a run from a ``TrainConfig``: vocabulary, tasks, model, mesh, state, data, evaluator.

This is the one place where the data layer (seqio Tasks and Mixtures) meets the model and trainer
layers; the CLIs ``train`` and ``evaluate`` are thin wrappers around it. Both model families go
through the same path and differ only in their entry of ``models.families``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from mtl_jax.data import eval_sets, mixtures, tasks
from mtl_jax.data.cache_reader import Cache, CacheError, open_cache, sharded_cache_iterator
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.data.iterator import mixture_members, shard_blocks, sharded_mixture_iterator
from mtl_jax.data.rates import AnnealedRates
from mtl_jax.evaluation.evaluator import Evaluator
from mtl_jax.evaluation.predictor import Predictor
from mtl_jax.evaluation.runner import ModelRunner
from mtl_jax.models import ca_mtl, hf_io
from mtl_jax.models.families import Family, get_family
from mtl_jax.run_config import TrainConfig
from mtl_jax.training import optimizers
from mtl_jax.training import partitioning as part
from mtl_jax.training.checkpoints import RunCheckpoint, abstract_like, check_compatible
from mtl_jax.training.objectives import (
    ClassificationObjective,
    EncoderDecoderObjective,
    R3FObjective,
)
from mtl_jax.training.smart import SMARTObjective
from mtl_jax.training.step import make_train_step
from mtl_jax.training.teacher import Momentum
from mtl_jax.training.train_state import (
    TrainState,
    abstract_model,
    create_train_state,
    split_model,
    state_from_params,
    train_state_shardings,
)
from mtl_jax.training.uncertainty import UncertaintySampler, regression_quotas

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the gin binding to change."""


# ------------------------------------------------------------------------------------------------
# Tasks and vocabulary
# ------------------------------------------------------------------------------------------------


def task_format(family: str) -> str:
    return get_family(family).task_format


def configure_datasets(cfg: TrainConfig) -> None:
    """Register the run's own datasets and mixtures (``TrainConfig.dataset_modules``,
    ``datasets``, ``mixtures``) before its sources, tasks and mixture are resolved."""
    from mtl_jax.data import declarations

    try:
        declarations.apply(cfg.dataset_modules, cfg.datasets, cfg.mixtures)
    except declarations.DeclarationError as e:
        raise ConfigError(f"TrainConfig.{e}") from e


def check_evaluation_data(cfg: TrainConfig, layout: TaskLayout, split: str | None = None) -> None:
    """Read every evaluation file (``split``, default the eval split) of the run's local sources
    now, so a missing file, column or an undeclared label stops the run before training (the
    bundled samples are known good)."""
    from mtl_jax.data import sources

    split = split or cfg.eval_split
    for name in layout.eval_tasks:
        info = tasks.task_info(name)
        if split not in info.splits:
            continue
        if sources.get_source(info.source_dataset).kind != "local":
            continue
        try:
            tasks.source_examples(name, split)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"evaluation task {name!r}: {e}") from e


def check_final_split(exp: Experiment, split: str) -> None:
    """``TrainConfig.final_eval_split``: some evaluation task has the split, and its local files
    read now (not after the whole training run)."""
    if not exp.eval_infos(split):
        raise ConfigError(f"TrainConfig.final_eval_split={split!r}: no evaluation task of mixture "
                          f"{exp.cfg.mixture!r} has a {split!r} split")
    check_evaluation_data(exp.cfg, exp.layout, split)


def configure_sources(cfg: TrainConfig) -> None:
    """Apply ``TrainConfig.sources``; a local path that does not exist fails here, before any
    file of the run is written."""
    from mtl_jax.data import sources

    sources.reset_sources()
    if cfg.on_bad_row not in ("error", "skip"):
        raise ConfigError(f"TrainConfig.on_bad_row={cfg.on_bad_row!r}: expected 'error' or 'skip'")
    for dataset, spec in cfg.sources.items():
        try:
            parsed = dataclasses.replace(sources.parse_source(spec), on_bad_row=cfg.on_bad_row)
            sources.set_source(dataset, parsed)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"TrainConfig.sources[{dataset!r}]={spec!r}: {e}") from e
        if parsed.kind == "local" and not Path(parsed.path).exists():
            raise ConfigError(
                f"TrainConfig.sources[{dataset!r}]: local data path {parsed.path} does not exist"
            )


def configure_vocabulary(cfg: TrainConfig) -> Any:
    """Point the tasks of this family at the run's vocabulary and return it."""
    fmt = task_format(cfg.family)
    path = cfg.vocabulary or cfg.pretrained
    if path is not None:
        if not Path(path).exists():
            raise ConfigError(
                f"vocabulary path {path} does not exist (TrainConfig.vocabulary / TrainConfig.pretrained)"
            )
        tasks.set_vocabulary(fmt, path)
    return tasks.get_vocabulary(fmt)


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """Which tasks a run trains on and evaluates, and the head (task id) of each."""

    train_tasks: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    heads: tuple[str, ...]
    head_labels: tuple[int, ...]  # label count per head (0 for span corruption)


def task_layout(cfg: TrainConfig, training: bool = True) -> TaskLayout:
    """The run's tasks and heads. ``training=False`` (evaluate, predict) reads no data file: the
    mixture's declaration is enough, so a run can be evaluated where only dev files exist."""
    try:
        info: Any = mixtures.mixture_info(cfg.mixture) if training else mixtures.mixture_spec(cfg.mixture)
    except (KeyError, ValueError) as e:
        known = ", ".join(mixtures.mixture_names())
        raise ConfigError(f"TrainConfig.mixture={cfg.mixture!r}: {e}. Known mixtures: {known}") from e
    fmt = task_format(cfg.family)
    wrong = [t for t in info.tasks if tasks.task_info(t).format != fmt]
    if wrong:
        raise ConfigError(
            f"TrainConfig.mixture={cfg.mixture!r} has {tasks.task_info(wrong[0]).format} tasks "
            f"({wrong[0]}, ...) but TrainConfig.family={cfg.family!r} needs {fmt} tasks"
        )
    heads: list[str] = []
    labels: list[int] = []
    for name in (*info.tasks, *info.evaluation_tasks):
        t = tasks.task_info(name)
        if t.head not in heads:
            heads.append(t.head)
            # A regression task is a 1-output head (MSE); span corruption has no label head.
            labels.append({"classification": t.num_classes, "regression": 1}.get(t.kind, 0))
    return TaskLayout(tuple(info.tasks), tuple(info.evaluation_tasks), tuple(heads), tuple(labels))


def training_length(cfg: TrainConfig, training: bool = True) -> TrainConfig:
    """``cfg`` with ``num_steps`` set: ``TrainConfig.num_epochs`` becomes
    ``ceil(num_epochs * examples / batch_size)`` steps, counting the training examples of the
    mixture's rule-weighted members (tasks held at a fixed share, like mC4, are not counted)."""
    if cfg.num_epochs is None:
        return cfg
    if not training:  # evaluation and prediction use no learning-rate schedule
        return dataclasses.replace(cfg, num_steps=1, num_epochs=None)
    sizes = mixtures.mixture_info(cfg.mixture).sizes
    examples = sum(sizes.values())
    if examples < 1:
        raise ConfigError(f"TrainConfig.num_epochs={cfg.num_epochs}: mixture {cfg.mixture!r} has "
                          "no training examples to count epochs over")
    steps = max(1, math.ceil(cfg.num_epochs * examples / cfg.batch_size))
    log.info("TrainConfig.num_epochs=%g over %d training examples of mixture %s (%s) at batch "
             "size %d: %d steps", cfg.num_epochs, examples, cfg.mixture,
             ", ".join(f"{t} {n}" for t, n in sizes.items()), cfg.batch_size, steps)
    return dataclasses.replace(cfg, num_steps=steps, num_epochs=None)


# ------------------------------------------------------------------------------------------------
# Model families
# ------------------------------------------------------------------------------------------------


def model_config(cfg: TrainConfig, layout: TaskLayout, vocab_size: int) -> Any:
    """The architecture: from the pretrained checkpoint when there is one, else the gin config."""
    family = get_family(cfg.family)
    config_cls = family.config_cls
    base = cfg.model_config if cfg.model_config is not None else config_cls()
    if not isinstance(base, config_cls):
        raise ConfigError(f"TrainConfig.model_config must be a {config_cls.__name__} for "
                          f"family={cfg.family!r}")
    if cfg.pretrained:
        hf = config_cls.from_hf(hf_io.read_config(cfg.pretrained))
        kept = {k: getattr(base, k) for k in ("dtype", "attention_impl", "dropout_rate", "lora",
                                              "ca_mtl", "vocab_pad_multiple")
                if hasattr(base, k) and hasattr(hf, k)}
        if getattr(base, "classifier_dropout", None) is not None:  # a recipe's head dropout
            kept["classifier_dropout"] = base.classifier_dropout
        base = dataclasses.replace(hf, **kept)
        if family.encoder_decoder:
            return base
    else:
        base = _fit_vocab(base, vocab_size)
    if family.encoder_decoder:
        return base
    return dataclasses.replace(base, task_num_labels=tuple(max(n, 1) for n in layout.head_labels),
                               task_siamese=siamese_flags(cfg, layout),
                               ca_mtl=_ca_mtl_length(cfg, getattr(base, "ca_mtl", None)))


def siamese_flags(cfg: TrainConfig, layout: TaskLayout) -> tuple[bool, ...]:
    """``TrainConfig.siamese_heads`` as one flag per head (empty when there are none), checked:
    an XLM-R run, unpacked, naming regression heads of the run."""
    if not cfg.siamese_heads:
        return ()
    where = f"TrainConfig.siamese_heads={tuple(cfg.siamese_heads)!r}"
    if get_family(cfg.family).encoder_decoder:
        raise ConfigError(f"{where}: siamese heads need family='xlmr' (an encoder with heads)")
    if cfg.pack:
        raise ConfigError(f"{where}: siamese heads encode each text in a row of its own; "
                          "packing cannot be used (set TrainConfig.pack=False)")
    labels = dict(zip(layout.heads, layout.head_labels, strict=True))
    unknown = [h for h in cfg.siamese_heads if h not in labels]
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not heads of mixture {cfg.mixture!r} "
                          f"(heads: {list(layout.heads)})")
    wrong = [h for h in cfg.siamese_heads if labels[h] != 1]
    if wrong:
        raise ConfigError(f"{where}: {wrong} are not regression tasks; a siamese head predicts "
                          "one similarity score")
    return tuple(h in cfg.siamese_heads for h in layout.heads)


def _ca_mtl_length(cfg: TrainConfig, ca: Any) -> Any:
    """CA-MTL's block-diagonal attention length ``L``: the run's input length when unset."""
    if ca is None or ca.max_seq_length is not None or not ca.conditional_attention:
        return ca
    length = cfg.sequence_length.get("inputs")
    if length is None:
        raise ConfigError("CAMTLConfig.max_seq_length is unset and TrainConfig.sequence_length has "
                          "no 'inputs' length to take it from")
    return dataclasses.replace(ca, max_seq_length=int(length))


def _fit_vocab(config: Any, vocab_size: int) -> Any:
    if config.vocab_size != vocab_size:
        log.info("model vocab_size %d -> %d (the run's vocabulary)", config.vocab_size, vocab_size)
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return config


def model_factory(family: str, config: Any, seed: int) -> Callable[[], nnx.Module]:
    cls = get_family(family).model_cls
    return lambda: cls(config, rngs=nnx.Rngs(seed))


def pretrained_model(family: str, config: Any, directory: str, seed: int = 0) -> nnx.Module:
    """The HF checkpoint's weights in our module (host memory), heads freshly initialised (as
    before LoRA existed, from seed 0), LoRA matrices (if any) from ``seed`` with B = 0."""
    if get_family(family).encoder_decoder:
        from mtl_jax.models.hf_t5 import model_from_hf_state

        return model_from_hf_state(hf_io.read_state_dict(directory), config, seed=seed)
    from mtl_jax.models import lora
    from mtl_jax.models.hf_xlmr import load_hf_xlmr

    model, _, _ = load_hf_xlmr(directory, task_num_labels=config.task_num_labels,
                               dtype=config.dtype, attention_impl=config.attention_impl,
                               lora=config.lora, ca_mtl=config.ca_mtl)
    if config.lora is not None:
        lora.init_lora_params(model, seed)
    return model


def converter(cfg: TrainConfig, layout: TaskLayout, vocab: Any, passthrough: Sequence[str] = (),
              pack: bool | None = None):
    """The family's feature converter; ``pack=False`` for evaluation (one example per row)."""
    if get_family(cfg.family).encoder_decoder:
        pack = cfg.pack and not passthrough if pack is None else pack
        return EncDecConverter(layout.heads, pack=pack, passthrough=tuple(passthrough))
    return ClassificationConverter(
        layout.heads, bos_id=0, pad_id=vocab.pad_id, eos_id=vocab.eos_id,
        passthrough=tuple(passthrough), regression=1 in layout.head_labels,
        siamese_heads=tuple(cfg.siamese_heads),
    )


def objective(cfg: TrainConfig, layout: TaskLayout, vocab_size: int | None = None) -> Any:
    """The family's objective, with Muppet loss scaling and wrapped in R3F or SMART when configured;
    ``vocab_size`` is the model's (unpadded) vocabulary, what text-to-text scaling divides by."""
    try:
        if get_family(cfg.family).encoder_decoder:
            base: Any = EncoderDecoderObjective(
                num_tasks=len(layout.heads), normalization=cfg.loss_normalization or "tokens",
                z_loss=cfg.z_loss, loss_scaling=cfg.loss_scaling, vocab_size=vocab_size,
            )
        else:
            base = ClassificationObjective(
                num_tasks=len(layout.heads), normalization=cfg.loss_normalization or "examples",
                num_labels=tuple(max(n, 1) for n in layout.head_labels),
                loss_scaling=cfg.loss_scaling,
            )
    except ValueError as e:
        raise ConfigError(f"TrainConfig.loss_scaling={cfg.loss_scaling!r}: {e}") from e
    if cfg.r3f and cfg.smart:
        raise ConfigError("TrainConfig.r3f and TrainConfig.smart are both set: choose one")
    if cfg.smart:
        try:
            return SMARTObjective(base, **cfg.smart)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"TrainConfig.smart={cfg.smart!r}: {e} (keys: sigma, step_size, steps, alpha, "
                "normalize='perturbation'|'gradient', radius, mu, beta, beta_late, beta_switch)"
            ) from e
    if not cfg.r3f:
        return base
    try:
        return R3FObjective(base, **cfg.r3f)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"TrainConfig.r3f={cfg.r3f!r}: {e} (keys: sigma, lam, noise='uniform'|'normal')"
        ) from e


def smart_teacher(cfg: TrainConfig, layout: TaskLayout, vocab_size: int) -> Momentum | None:
    """The momentum schedule of SMART's proximal-point teacher (``TrainConfig.smart`` with
    ``'mu' > 0``), which the optimizer keeps; None otherwise."""
    made = objective(cfg, layout, vocab_size)
    return made.teacher_momentum(cfg.num_steps) if isinstance(made, SMARTObjective) else None


def gradient_combiner(cfg: TrainConfig) -> Any:
    if cfg.gradient_combiner is None:
        return None
    if cfg.gradient_combiner == "pcgrad":
        from mtl_jax.training.pcgrad import PCGrad

        return PCGrad()
    raise ConfigError(
        f"TrainConfig.gradient_combiner={cfg.gradient_combiner!r}: expected None or 'pcgrad'")


def uncertainty_sampler(cfg: TrainConfig, layout: TaskLayout,
                        batch_sharding: Any) -> UncertaintySampler | None:
    """MT-Uncertainty sampling for ``TrainConfig.batch_mode='uncertainty'`` (else None): each
    regression head keeps its mixture-rate share of every shard's batch (docs/methods.md)."""
    if cfg.batch_mode != "uncertainty":
        return None
    where = f"TrainConfig.batch_mode='uncertainty' with family={cfg.family!r}"
    if get_family(cfg.family).encoder_decoder:
        raise ConfigError(f"{where}: MT-Uncertainty sampling scores the entropy of per-task "
                          "classification heads; text-to-text models have none (use "
                          "family='xlmr')")
    if cfg.pack:
        raise ConfigError(f"{where}: TrainConfig.pack=True cannot be selected from; set it False")
    shards, _ = data_shards(cfg, batch_sharding)
    num_labels = tuple(max(n, 1) for n in layout.head_labels)
    rates = [0.0] * len(layout.heads)
    for name, rate in mixture_members(cfg.mixture, mixtures.TRAIN_SPLIT):
        rates[layout.heads.index(tasks.task_info(name).head)] += rate
    if not any(n > 1 and r > 0 for n, r in zip(num_labels, rates, strict=True)):
        raise ConfigError(f"{where}: mixture {cfg.mixture!r} has no classification task to "
                          "score (regression tasks are sampled at their rate)")
    quotas = regression_quotas(rates, [n == 1 for n in num_labels], cfg.batch_size // shards)
    return UncertaintySampler(num_labels, quotas, shards, cfg.batch_size)


def make_optimizer(cfg: TrainConfig, optimizer_args: dict[str, Any],
                   lora: bool = False, model_frozen: Callable[[str], bool] | None = None,
                   teacher_momentum: Momentum | None = None) -> optimizers.Optimizer:
    """``TrainConfig``'s optimizer dict -> ``optimizers.make_optimizer``. ``train``/``freeze``:
    lists of parameter-path regexes; with LoRA (``lora``) or ``train`` only the LoRA matrices and
    the ``train`` matches are trained; ``model_frozen``: the model's own frozen set (CA-MTL's,
    ``ca_mtl.frozen_predicate``) (``optimizers.make_partition``); ``teacher_momentum``: SMART's
    momentum teacher (``smart_teacher``)."""
    args = dict(optimizer_args)
    if teacher_momentum is not None:
        args["teacher_momentum"] = teacher_momentum
    try:
        partition = optimizers.make_partition(args.pop("train", ()), args.pop("freeze", ()), lora,
                                              model_frozen)
        if partition is not None:
            args["partition_fn"] = partition
        return optimizers.make_optimizer(total_steps=cfg.num_steps, **args)
    except (TypeError, re.error) as e:
        raise ConfigError(f"TrainConfig.optimizer={optimizer_args!r}: {e}") from e


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
    cfg: TrainConfig
    layout: TaskLayout
    vocab: Any
    config: Any  # T5Config | XLMRConfig
    mesh: Any
    rules: Any
    optimizer: optimizers.Optimizer
    graphdef: Any
    abstract_state: TrainState
    shardings: TrainState
    batch_sharding: Any

    def model_record(self) -> dict[str, Any]:
        """The model's identity stored with each checkpoint (compatibility check on restore)."""
        fields = dataclasses.asdict(self.config)
        for k in ("dtype", "attention_impl", "dropout_rate", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "attention_dropout_rate", "classifier_dropout"):
            fields.pop(k, None)
        if fields.get("lora") is not None:  # LoRA's dropout may change on resume like the others
            fields["lora"].pop("dropout", None)
        if not any(fields.get("task_siamese", ())):  # records from before siamese heads match
            fields.pop("task_siamese", None)
        return {"family": self.cfg.family, "heads": list(self.layout.heads), **_jsonable(fields)}

    def parameter_table(self) -> str:
        """The start-of-run table: every parameter, what it trains, and the optimizer state's
        size (which holds the trainable parameters only)."""
        _, params, _ = abstract_model(model_factory(self.cfg.family, self.config, self.cfg.seed))
        partition = self.optimizer.partition_fn
        frozen = None if partition is None else (lambda p: partition(p) == optimizers.FROZEN)
        table = part.parameter_table(params, self.mesh, self.rules, frozen)
        opt = jax.tree.leaves(self.abstract_state.opt_state)
        nbytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in opt)
        return f"{table}\noptimizer state: {len(opt)} arrays, {nbytes:,} bytes"

    def initial_state(self) -> TrainState:
        """Fresh parameters (from scratch or from the pretrained checkpoint), placed on the mesh."""
        if self.cfg.pretrained:
            model = pretrained_model(self.cfg.family, self.config, self.cfg.pretrained,
                                     seed=self.cfg.seed)
            _, params, rest = split_model(model)
            params = part.host_to_global(params, self.shardings.params)
            rest = part.host_to_global(rest, self.shardings.rest)
            return state_from_params(self.graphdef, params, rest, self.optimizer, self.shardings,
                                     seed=self.cfg.seed)
        _, state, _ = create_train_state(
            model_factory(self.cfg.family, self.config, self.cfg.seed), self.optimizer,
            self.mesh, self.rules, seed=self.cfg.seed,
        )
        return state

    def train_step(self) -> Any:
        return make_train_step(
            self.graphdef, objective(self.cfg, self.layout, self.config.vocab_size),
            self.optimizer, self.mesh,
            self.shardings, self.batch_sharding, self.cfg.micro_batches, rules=self.rules,
            deterministic=not self.cfg.dropout, combiner=gradient_combiner(self.cfg),
            sampler=uncertainty_sampler(self.cfg, self.layout, self.batch_sharding),
        )

    def train_batches(self) -> Any:
        shards, rows = data_shards(self.cfg, self.batch_sharding)
        if self.cfg.cache_dir:
            cache = training_cache(self.cfg)
            return sharded_cache_iterator(
                cache, self.cfg.sequence_length, self.cfg.batch_size, rows,
                shards, converter(self.cfg, self.layout, self.vocab), self.cfg.seed,
                batch_mode=self.cfg.batch_mode,
                rate_schedule=training_rate_schedule(
                    self.cfg, [t for t, _ in cache.members(mixtures.TRAIN_SPLIT)]),
            )
        return sharded_mixture_iterator(
            self.cfg.mixture, self.cfg.sequence_length, self.cfg.batch_size, rows, shards,
            converter(self.cfg, self.layout, self.vocab), self.cfg.seed,
            batch_mode=self.cfg.batch_mode,
            rate_schedule=training_rate_schedule(
                self.cfg, [t for t, _ in mixture_members(self.cfg.mixture, mixtures.TRAIN_SPLIT)]),
        )

    def to_global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return part.global_batch(local, self.mesh, self.batch_sharding)

    @property
    def family(self) -> Family:
        return get_family(self.cfg.family)

    def vocabulary_file(self) -> Path:
        """The sentencepiece file of the run's vocabulary (recorded with each checkpoint so an
        export can ship the tokenizer)."""
        return vocabulary_file(self.cfg)

    # -- evaluation and prediction ------------------------------------------------------------
    def runner(self) -> ModelRunner:
        """The compiled forward passes of evaluation and prediction on this run's mesh."""
        classify = None
        if not self.family.encoder_decoder:
            classify = objective(self.cfg, self.layout).predict
        return ModelRunner(
            family=self.family, graphdef=self.graphdef, mesh=self.mesh, rules=self.rules,
            param_shardings=self.shardings.params, rest_shardings=self.shardings.rest,
            batch_sharding=self.batch_sharding, batch_size=self.cfg.eval_batch_size,
            target_length=self.cfg.sequence_length.get("targets", 8), classify=classify,
        )

    def inputs(self) -> RunInputs:
        return RunInputs(self)

    def eval_infos(self, split: str, tasks_filter: Sequence[str] = (),
                   languages: Sequence[str] = ()) -> list[tasks.TaskInfo]:
        """The run's evaluation tasks that have ``split``, optionally only the named datasets
        (or full task names) and languages; a filter that matches nothing is an error."""
        infos = [tasks.task_info(t) for t in self.layout.eval_tasks]
        for name in tasks_filter:
            if not any(name in (i.dataset, i.name) for i in infos):
                raise ConfigError(f"--tasks {name}: not an evaluation task of mixture "
                                  f"{self.cfg.mixture!r}; it has "
                                  f"{sorted({i.dataset for i in infos})}")
        for lang in languages:
            if not any(lang == i.language for i in infos):
                raise ConfigError(f"--languages {lang}: no evaluation task of mixture "
                                  f"{self.cfg.mixture!r} is in that language; languages: "
                                  f"{sorted({i.language for i in infos})}")
        return [i for i in infos if split in i.splits
                and (not tasks_filter or i.dataset in tasks_filter or i.name in tasks_filter)
                and (not languages or i.language in languages)]

    def evaluator(self, split: str | None = None, infos: Sequence[Any] | None = None) -> Evaluator:
        split = split or self.cfg.eval_split
        return Evaluator(self.runner(), self.inputs(),
                         self.eval_infos(split) if infos is None else infos, split,
                         eval_mode=self.cfg.eval_mode, max_examples=self.cfg.max_eval_examples)

    def evaluate_split(self, params: Any, rest: Any, step: int, split: str,
                       infos: Sequence[Any] | None = None,
                       extra: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """``(outcome, table)``: ``params`` evaluated on ``split`` and its task x language table
        (the evaluate CLI's and the training run's final evaluation). Every process calls it."""
        from mtl_jax.evaluation import tables
        from mtl_jax.evaluation.plots import eval_results

        evaluator = self.evaluator(split, infos)
        outcome = evaluator.evaluate(params, rest, step)
        _, results = eval_results(outcome.records, split=split)
        return outcome, tables.build_report(results, evaluator.primary_metrics(), extra=extra)

    def restore_params(self, checkpoint: RunCheckpoint) -> tuple[Any, Any]:
        """``(params, rest)`` of a training checkpoint, placed on this run's mesh; nothing of
        the optimizer is read. The stored model record must match this run's model."""
        check_compatible(checkpoint.model_record, self.model_record(), checkpoint.where)
        target = {
            "params": abstract_like(self.abstract_state.params, self.shardings.params),
            "rest": abstract_like(self.abstract_state.rest, self.shardings.rest),
        }
        restored = checkpoint.restore(target)
        return restored["params"], restored["rest"]

    def predictor(self, params: Any, rest: Any, greedy: bool = False) -> Predictor:
        if greedy and not self.family.encoder_decoder:
            raise ConfigError("greedy decoding needs a text-to-text (mT5) run")
        return Predictor(self.runner(), self.inputs(), params, rest, greedy=greedy)


class RunInputs:
    """The data layer's side of evaluation and prediction (``evaluation.runner.EvalInputs``):
    examples of a split, their token batches, rank-classification candidates, decoding."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def examples(self, info: Any, split: str) -> list[dict[str, Any]]:
        return eval_sets.load_examples(info.name, split, self.exp.cfg.sequence_length,
                                       self.exp.cfg.max_eval_examples)

    def batches(self, info: Any, examples: Sequence[Any], batch_size: int,
                rows: tuple[int, int]) -> Any:
        conv = converter(self.exp.cfg, self.exp.layout, self.exp.vocab, pack=False)
        return eval_sets.eval_batches(examples, conv, self.exp.cfg.sequence_length, batch_size, rows)

    def candidates(self, info: Any) -> np.ndarray:
        return eval_sets.label_candidates(info, self.exp.cfg.sequence_length.get("targets", 8))

    def decode(self, tokens: Sequence[int]) -> str:
        ids = [int(t) for t in tokens]
        eos = self.exp.vocab.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.exp.vocab.decode([t for t in ids if t > 0])


def vocabulary_file(cfg: TrainConfig) -> Path:
    """The sentencepiece model file a run tokenizes with: ``TrainConfig.vocabulary`` (a file, or
    a directory holding the family's file), else the pretrained directory's, else the demo's."""
    from mtl_jax.data import vocab as vocab_lib

    family = get_family(cfg.family)
    path = cfg.vocabulary or cfg.pretrained
    if path is None:
        return vocab_lib.DEMO_T5_SPM if family.encoder_decoder else vocab_lib.DEMO_XLMR_SPM
    path = Path(path)
    return path / family.tokenizer_file if path.is_dir() else path


def training_cache(cfg: TrainConfig) -> Cache:
    """``TrainConfig.cache_dir``, checked against the run's mixture (its members and rates now),
    sequence lengths and vocabulary."""
    try:
        return open_cache(
            cfg.cache_dir, cfg.mixture, cfg.sequence_length,
            members=mixture_members(cfg.mixture, mixtures.TRAIN_SPLIT),
            vocabularies={task_format(cfg.family): vocabulary_file(cfg)},
        )
    except CacheError as e:
        raise ConfigError(f"TrainConfig.cache_dir: {e}") from e


def training_rate_schedule(cfg: TrainConfig, tasks: Sequence[str]) -> AnnealedRates | None:
    """``TrainConfig.rate_schedule`` over ``tasks`` (in the iterator's order), sized by their
    training examples, over ``num_steps`` batches; None when unset."""
    if cfg.rate_schedule is None:
        return None
    try:
        return mixtures.rate_schedule(cfg.rate_schedule, tasks, cfg.num_steps)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"TrainConfig.rate_schedule={cfg.rate_schedule!r}: {e}") from e


def data_shards(cfg: TrainConfig, batch_sharding: Any) -> tuple[int, tuple[int, int]]:
    """(number of data shards, this process's rows of a global batch), checked."""
    shards = cfg.data_shards or jax.process_count()
    rows = part.local_rows(batch_sharding, cfg.batch_size)
    try:
        shard_blocks(cfg.batch_size, rows, shards)
    except ValueError as e:
        raise ConfigError(f"TrainConfig.data_shards={shards} (process {jax.process_index()} of "
                          f"{jax.process_count()}): {e}") from e
    return shards, rows


def build(cfg: TrainConfig, training: bool = True) -> Experiment:
    """Everything but parameters: shapes, shardings and the compiled-step ingredients.

    ``training=False`` (evaluate, predict) reads no training file (``task_layout``)."""
    if not cfg.model_dir:
        raise ConfigError("TrainConfig.model_dir is not set (e.g. --gin_param=TrainConfig.model_dir=/tmp/run)")
    if cfg.require_pretrained and not cfg.pretrained:
        kind, demo = get_family(cfg.family).display, get_family(cfg.family).demo_gin
        raise ConfigError(
            f"this recipe fine-tunes a pretrained {kind}: set "
            f"--gin_param=TrainConfig.pretrained=/path/to/checkpoint (a Hugging Face directory with "
            f"config.json and model.safetensors, plus the sentencepiece model). To try the framework "
            f"without one, run the demo: python -m mtl_jax.train --gin_file={demo}"
        )
    if cfg.pretrained is not None and not Path(cfg.pretrained).is_dir():
        raise ConfigError(
            f"TrainConfig.pretrained={cfg.pretrained!r} is not a directory: it must be a Hugging "
            "Face checkpoint directory (config.json + model.safetensors)"
        )
    configure_datasets(cfg)
    configure_sources(cfg)
    vocab = configure_vocabulary(cfg)
    layout = task_layout(cfg, training)
    cfg = training_length(cfg, training)
    siamese_flags(cfg, layout)  # any family: a wrong binding stops here
    if training:
        check_evaluation_data(cfg, layout)
    config = model_config(cfg, layout, vocab.vocab_size)
    mesh = part.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    rules = part.rules_by_name(cfg.rules)
    part.check_batch_size(cfg.batch_size, mesh, rules, cfg.micro_batches)
    optimizer = make_optimizer(cfg, cfg.optimizer, lora=config.lora is not None,
                               model_frozen=ca_mtl.frozen_predicate(config),
                               teacher_momentum=smart_teacher(cfg, layout, vocab.vocab_size))
    graphdef, abstract, shardings = train_state_shardings(
        model_factory(cfg.family, config, cfg.seed), optimizer, mesh, rules
    )
    batch_sharding = part.batch_sharding(mesh, rules)
    data_shards(cfg, batch_sharding)  # fail before anything of the run is written
    if training:
        uncertainty_sampler(cfg, layout, batch_sharding)
    if training and cfg.cache_dir:
        training_cache(cfg)
    if training:
        training_rate_schedule(
            cfg, [t for t, _ in mixture_members(cfg.mixture, mixtures.TRAIN_SPLIT)])
    return Experiment(cfg, layout, vocab, config, mesh, rules, optimizer, graphdef, abstract,
                      shardings, batch_sharding)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value

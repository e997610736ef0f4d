"""Assemble a run from a ``TrainConfig``: vocabulary, tasks, model, mesh, state, data, evaluator.

This is the one place where the data layer (seqio Tasks and Mixtures) meets the model and trainer
layers; the CLIs ``train`` and ``evaluate`` are thin wrappers around it. Both model families go
through the same path and differ only in the small ``_Family`` tables below.
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
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_jax import features as F
from mtl_jax.data import eval_sets, mixtures, tasks
from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
from mtl_jax.data.iterator import shard_blocks, sharded_mixture_iterator
from mtl_jax.evaluation import tables
from mtl_jax.evaluation.plots import eval_record
from mtl_jax.models import hf_io
from mtl_jax.models.t5 import T5Config, T5Model
from mtl_jax.models.t5_decoding import greedy_decode, rank_classification
from mtl_jax.models.xlmr import XLMRConfig, XLMRMultiTask
from mtl_jax.run_config import TrainConfig
from mtl_jax.training import optimizers
from mtl_jax.training import partitioning as part
from mtl_jax.training.loop import EvalOutcome
from mtl_jax.training.objectives import (
    ClassificationObjective,
    EncoderDecoderObjective,
    R3FObjective,
)
from mtl_jax.training.step import make_eval_step, make_train_step, to_host
from mtl_jax.training.train_state import (
    TrainState,
    abstract_model,
    create_train_state,
    split_model,
    state_from_params,
    train_state_shardings,
)

log = logging.getLogger(__name__)

CANDIDATES = "candidates"


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the gin binding to change."""


# ------------------------------------------------------------------------------------------------
# Tasks and vocabulary
# ------------------------------------------------------------------------------------------------


def task_format(family: str) -> str:
    return "t2t" if family == "t5" else "cls"


def configure_datasets(cfg: TrainConfig) -> None:
    """Register the run's own datasets and mixtures (``TrainConfig.dataset_modules``,
    ``datasets``, ``mixtures``) before its sources, tasks and mixture are resolved."""
    from mtl_jax.data import declarations

    try:
        declarations.apply(cfg.dataset_modules, cfg.datasets, cfg.mixtures)
    except declarations.DeclarationError as e:
        raise ConfigError(f"TrainConfig.{e}") from e


def check_evaluation_data(cfg: TrainConfig, layout: TaskLayout) -> None:
    """Read every evaluation file of the run's local sources now, so a missing file, column or
    an undeclared label stops the run before training (the bundled samples are known good)."""
    from mtl_jax.data import sources

    for name in layout.eval_tasks:
        info = tasks.task_info(name)
        if cfg.eval_split not in info.splits:
            continue
        if sources.get_source(info.source_dataset).kind != "local":
            continue
        try:
            tasks.source_examples(name, cfg.eval_split)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"evaluation task {name!r}: {e}") from e


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


def task_layout(cfg: TrainConfig) -> TaskLayout:
    try:
        info = mixtures.mixture_info(cfg.mixture)
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


# ------------------------------------------------------------------------------------------------
# Model families
# ------------------------------------------------------------------------------------------------


def model_config(cfg: TrainConfig, layout: TaskLayout, vocab_size: int) -> Any:
    """The architecture: from the pretrained checkpoint when there is one, else the gin config."""
    base = cfg.model_config
    if cfg.family == "t5":
        base = base if base is not None else T5Config()
        if cfg.pretrained:
            hf = T5Config.from_hf(hf_io.read_config(cfg.pretrained))
            return dataclasses.replace(hf, dtype=base.dtype, attention_impl=base.attention_impl,
                                       dropout_rate=base.dropout_rate, lora=base.lora)
        if not isinstance(base, T5Config):
            raise ConfigError("TrainConfig.model_config must be a T5Config for family='t5'")
        return _fit_vocab(base, vocab_size)
    base = base if base is not None else XLMRConfig()
    if not isinstance(base, XLMRConfig):
        raise ConfigError("TrainConfig.model_config must be an XLMRConfig for family='xlmr'")
    if cfg.pretrained:
        hf = XLMRConfig.from_hf(hf_io.read_config(cfg.pretrained))
        base = dataclasses.replace(hf, dtype=base.dtype, attention_impl=base.attention_impl,
                                   lora=base.lora)
    else:
        base = _fit_vocab(base, vocab_size)
    return dataclasses.replace(base, task_num_labels=tuple(max(n, 1) for n in layout.head_labels))


def _fit_vocab(config: Any, vocab_size: int) -> Any:
    if config.vocab_size != vocab_size:
        log.info("model vocab_size %d -> %d (the run's vocabulary)", config.vocab_size, vocab_size)
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return config


def model_factory(family: str, config: Any, seed: int) -> Callable[[], nnx.Module]:
    cls = T5Model if family == "t5" else XLMRMultiTask
    return lambda: cls(config, rngs=nnx.Rngs(seed))


def pretrained_model(family: str, config: Any, directory: str, seed: int = 0) -> nnx.Module:
    """The HF checkpoint's weights in our module (host memory), heads freshly initialised (as
    before LoRA existed, from seed 0), LoRA matrices (if any) from ``seed`` with B = 0."""
    if family == "t5":
        from mtl_jax.models.hf_t5 import model_from_hf_state

        return model_from_hf_state(hf_io.read_state_dict(directory), config, seed=seed)
    from mtl_jax.models import lora
    from mtl_jax.models.hf_xlmr import load_hf_xlmr

    model, _, _ = load_hf_xlmr(directory, task_num_labels=config.task_num_labels,
                               dtype=config.dtype, attention_impl=config.attention_impl,
                               lora=config.lora)
    if config.lora is not None:
        lora.init_lora_params(model, seed)
    return model


def converter(cfg: TrainConfig, layout: TaskLayout, vocab: Any, passthrough: Sequence[str] = ()):
    if cfg.family == "t5":
        return EncDecConverter(layout.heads, pack=cfg.pack and not passthrough,
                               passthrough=tuple(passthrough))
    return ClassificationConverter(
        layout.heads, bos_id=0, pad_id=vocab.pad_id, eos_id=vocab.eos_id,
        passthrough=tuple(passthrough), regression=1 in layout.head_labels,
    )


def objective(cfg: TrainConfig, layout: TaskLayout) -> Any:
    """The family's objective, with Muppet loss scaling and wrapped in R3F when configured."""
    try:
        if cfg.family == "t5":
            base: Any = EncoderDecoderObjective(
                num_tasks=len(layout.heads), normalization=cfg.loss_normalization or "tokens",
                z_loss=cfg.z_loss, loss_scaling=cfg.loss_scaling,
            )
        else:
            base = ClassificationObjective(
                num_tasks=len(layout.heads), normalization=cfg.loss_normalization or "examples",
                num_labels=tuple(max(n, 1) for n in layout.head_labels),
                loss_scaling=cfg.loss_scaling,
            )
    except ValueError as e:
        raise ConfigError(f"TrainConfig.loss_scaling={cfg.loss_scaling!r}: {e}") from e
    if not cfg.r3f:
        return base
    try:
        return R3FObjective(base, **cfg.r3f)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"TrainConfig.r3f={cfg.r3f!r}: {e} (keys: sigma, lam, noise='uniform'|'normal')"
        ) from e


def gradient_combiner(cfg: TrainConfig) -> Any:
    if cfg.gradient_combiner is None:
        return None
    if cfg.gradient_combiner == "pcgrad":
        from mtl_jax.training.pcgrad import PCGrad

        return PCGrad()
    raise ConfigError(
        f"TrainConfig.gradient_combiner={cfg.gradient_combiner!r}: expected None or 'pcgrad'")


def make_optimizer(cfg: TrainConfig, optimizer_args: dict[str, Any],
                   lora: bool = False) -> optimizers.Optimizer:
    """``TrainConfig``'s optimizer dict -> ``optimizers.make_optimizer``. ``train``/``freeze``:
    lists of parameter-path regexes; with LoRA (``lora``) or ``train`` only the LoRA matrices and
    the ``train`` matches are trained (``optimizers.make_partition``)."""
    args = dict(optimizer_args)
    try:
        partition = optimizers.make_partition(args.pop("train", ()), args.pop("freeze", ()), lora)
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
            self.graphdef, objective(self.cfg, self.layout), self.optimizer, self.mesh,
            self.shardings, self.batch_sharding, self.cfg.micro_batches, rules=self.rules,
            deterministic=not self.cfg.dropout, combiner=gradient_combiner(self.cfg),
        )

    def train_batches(self) -> Any:
        shards, rows = data_shards(self.cfg, self.batch_sharding)
        return sharded_mixture_iterator(
            self.cfg.mixture, self.cfg.sequence_length, self.cfg.batch_size, rows, shards,
            converter(self.cfg, self.layout, self.vocab), self.cfg.seed,
            batch_mode=self.cfg.batch_mode,
        )

    def to_global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return part.global_batch(local, self.mesh, self.batch_sharding)

    def evaluator(self, split: str | None = None) -> Callable[[TrainState, int], EvalOutcome]:
        return Evaluator(self, split or self.cfg.eval_split)


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


def build(cfg: TrainConfig) -> Experiment:
    """Everything but parameters: shapes, shardings and the compiled-step ingredients."""
    if not cfg.model_dir:
        raise ConfigError("TrainConfig.model_dir is not set (e.g. --gin_param=TrainConfig.model_dir=/tmp/run)")
    if cfg.require_pretrained and not cfg.pretrained:
        kind = "mT5" if cfg.family == "t5" else "XLM-R"
        demo = "demo_mt5.gin" if cfg.family == "t5" else "demo_xlmr.gin"
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
    layout = task_layout(cfg)
    check_evaluation_data(cfg, layout)
    config = model_config(cfg, layout, vocab.vocab_size)
    mesh = part.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    rules = part.rules_by_name(cfg.rules)
    part.check_batch_size(cfg.batch_size, mesh, rules, cfg.micro_batches)
    optimizer = make_optimizer(cfg, cfg.optimizer, lora=config.lora is not None)
    graphdef, abstract, shardings = train_state_shardings(
        model_factory(cfg.family, config, cfg.seed), optimizer, mesh, rules
    )
    batch_sharding = part.batch_sharding(mesh, rules)
    data_shards(cfg, batch_sharding)  # fail before anything of the run is written
    return Experiment(cfg, layout, vocab, config, mesh, rules, optimizer, graphdef, abstract,
                      shardings, batch_sharding)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates every (task, language) of the run's evaluation tasks; compiles once per shape."""

    def __init__(self, exp: Experiment, split: str) -> None:
        self.exp = exp
        self.split = split
        cfg = exp.cfg
        self.batch_size = max(cfg.eval_batch_size, 1)
        # Global eval batches must split over the data-parallel devices and over processes.
        self.dp = math.lcm(part.data_parallel_size(exp.mesh, exp.rules), jax.process_count())
        self.batch_size += (-self.batch_size) % self.dp
        self._examples: dict[str, list[dict[str, Any]]] = {}
        self._steps: dict[str, Any] = {}
        self.infos = [tasks.task_info(t) for t in exp.layout.eval_tasks
                      if split in tasks.task_info(t).splits]
        self.cand_len = cfg.sequence_length.get("targets", 8)
        # Exact candidates per task (no padding to the largest label set or the target length):
        # the decoder and LM head run over B x C x Lc tokens, so this is what evaluation costs.
        self.candidates = {
            i.name: _trim_columns(eval_sets.label_candidates(i, self.cand_len)) for i in self.infos
        } if cfg.family == "t5" else {}

    # The predict functions: batch -> per-example scores/predictions, traced once per shape.
    def _predict_fn(self) -> Callable[[nnx.Module, dict[str, jax.Array]], dict[str, jax.Array]]:
        family, mode = self.exp.cfg.family, self.exp.cfg.eval_mode
        echo = (F.LABELS, "label", "query_id", eval_sets.VALID)

        def finish(out: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            for key in echo:
                if key in batch:
                    out[key] = batch[key]
            return out

        if family == "t5" and mode == "rank":
            def predict(model, batch):
                cands = batch[CANDIDATES]
                _, scores = rank_classification(model, batch[F.ENCODER_INPUT_TOKENS], cands)
                scores = jnp.where(cands[..., 0] > 0, scores, -jnp.inf)
                return finish({"scores": scores, "predictions": jnp.argmax(scores, -1)}, batch)
        elif family == "t5":
            length = self.cand_len

            def predict(model, batch):
                tokens = greedy_decode(model, batch[F.ENCODER_INPUT_TOKENS], length)
                return finish({"tokens": tokens}, batch)
        else:
            objective_ = objective(self.exp.cfg, self.exp.layout)

            def predict(model, batch):
                out = objective_.predict(model, batch)
                return finish({"scores": out["logits"], "predictions": out["predictions"]}, batch)
        return predict

    def _step(self) -> Any:
        if "step" not in self._steps:
            self._steps["step"] = make_eval_step(
                self.exp.graphdef, self._predict_fn(), self.exp.mesh, self.exp.shardings,
                self.exp.batch_sharding, rules=self.exp.rules,
            )
        return self._steps["step"]

    def examples(self, task: str) -> list[dict[str, Any]]:
        if task not in self._examples:
            self._examples[task] = eval_sets.load_examples(
                task, self.split, self.exp.cfg.sequence_length, self.exp.cfg.max_eval_examples
            )
        return self._examples[task]

    def predict_task(self, state: TrainState, info: Any) -> dict[str, np.ndarray]:
        """Labels, predictions, ranking scores and query ids of one task, all on the host."""
        passthrough = ["label"] if self.exp.cfg.family == "t5" else []
        if "wpr" == info.head:
            passthrough.append("query_id")
        conv = converter(self.exp.cfg, self.exp.layout, self.exp.vocab, passthrough)
        outs: list[dict[str, np.ndarray]] = []
        examples = self.examples(info.name)
        batch_size = min(self.batch_size, len(examples) + (-len(examples)) % self.dp)
        batch_size = max(batch_size, self.dp)
        rows = part.local_rows(self.exp.batch_sharding, batch_size)
        for local in eval_sets.eval_batches(
            examples, conv, self.exp.cfg.sequence_length, batch_size, rows
        ):
            if self.exp.cfg.family == "t5":
                local[CANDIDATES] = np.broadcast_to(
                    self.candidates[info.name], (len(local[eval_sets.VALID]),
                                                 *self.candidates[info.name].shape)).copy()
                local = {k: v for k, v in local.items() if k not in (F.DECODER_INPUT_TOKENS,)}
            outs.append(to_host(self._step()(state, self.exp.to_global(local))))
        merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        keep = merged[eval_sets.VALID] > 0
        merged = {k: v[keep] for k, v in merged.items()}
        labels = merged["label"] if "label" in merged else merged[F.LABELS]
        if "tokens" in merged:
            preds = np.array([info.label_id(self._decode(row)) for row in merged["tokens"]])
            scores = None
        else:
            n = info.num_classes
            scores = merged["scores"][:, :n].astype(np.float64)
            preds = merged["predictions"]
        ranking = None
        if scores is not None:
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            ranking = probs @ np.arange(scores.shape[1], dtype=np.float64)  # expected grade
        return {"labels": labels, "predictions": preds, "ranking": ranking,
                "query_id": merged.get("query_id")}

    def _decode(self, tokens: np.ndarray) -> str:
        ids = [int(t) for t in tokens]
        eos = self.exp.vocab.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.exp.vocab.decode([t for t in ids if t > 0])

    def __call__(self, state: TrainState, step: int) -> EvalOutcome:
        results: dict[tuple[str, str], dict[str, float]] = {}
        primary: dict[str, str] = {}
        records: list[dict[str, Any]] = []
        for info in self.infos:
            out = self.predict_task(state, info)
            metrics = _task_metrics(info, out)
            table_task = info.dataset
            primary.setdefault(table_task, info.metrics[0])
            results[(table_task, info.language)] = metrics
            for name, value in metrics.items():
                records.append(eval_record(step=step, task=table_task, language=info.language,
                                           metric=name, value=value, split=self.split))
        table = tables.build_report(results, primary)
        return EvalOutcome(score=float(table.overall), records=records,
                           summary=tables.format_text(table))

    def primary_metrics(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for info in self.infos:
            out.setdefault(info.dataset, info.metrics[0])
        return out


def _trim_columns(cands: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(cands.any(axis=0))
    return cands[:, : used[-1] + 1]


def _task_metrics(info: Any, out: dict[str, np.ndarray]) -> dict[str, float]:
    labels, preds = out["labels"], out["predictions"]
    if "ndcg" in info.metrics:
        from mtl_jax.evaluation.metrics import compute_metrics

        ranking = out["ranking"] if out["ranking"] is not None else preds.astype(np.float64)
        return compute_metrics(info.metrics, labels, preds, scores=ranking, groups=out["query_id"])
    return info.compute_metrics(labels, preds)

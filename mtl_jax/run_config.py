"""What one training or evaluation run is: a plain dataclass that gin fills at the CLI edge.

Bindings look like ``TrainConfig.model_dir = '/tmp/run'`` or, on the command line,
``--gin_param=TrainConfig.model_dir=/tmp/run`` (bare strings are quoted for you).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtl_jax.models.families import FAMILY_NAMES as FAMILIES
from mtl_jax.models.families import get_family

DEFAULT_NUM_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run. ``model_config`` is a ``T5Config`` or ``XLMRConfig`` (bound in gin_configs/models)."""

    model_dir: str = ""
    family: str = "t5"
    model_config: Any = None
    # A Hugging Face checkpoint directory to start from (weights and vocabulary). None = train
    # from scratch with the vocabulary below (demo).
    pretrained: str | None = None
    require_pretrained: bool = False  # recipes that make no sense from scratch set this
    vocabulary: str | None = None  # spm file or HF directory; None = pretrained dir, else the demo one
    mixture: str = "demo_t2t"
    # Your own datasets and mixtures (docs/datasets.md), registered before anything else of the
    # run: Python modules to import (they call mtl_jax.data.registry.register_dataset), dataset
    # declarations as plain dicts (the keywords of mtl_jax.data.registry.declare: name, format,
    # files, data_dir, columns, text, text_pair, label, label_names | regression, metrics, ...),
    # and mixture declarations {"name": ..., "tasks": [task or mixture names], "rule": ...}.
    # `mixture` may name any registered mixture, declared ones included.
    dataset_modules: tuple[str, ...] = ()
    datasets: tuple[dict[str, Any], ...] = ()
    mixtures: tuple[dict[str, Any], ...] = ()
    # Where each dataset is read from: {"xnli": "/data/xnli", "nc": "hub", ...}; datasets not
    # named use the bundled samples (see mtl_jax.data.sources).
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    # What a malformed row of a source named in `sources` does: "error" stops with a message
    # naming dataset, file and row; "skip" drops it, counts it and logs the count per file.
    on_bad_row: str = "error"
    sequence_length: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 128, "targets": 8}
    )
    batch_size: int = 32  # global effective batch (examples or packed rows) per update
    micro_batches: int = 1
    pack: bool = False
    # "heterogeneous" (examples draw their task), "homogeneous" (batches draw one task),
    # "round_robin" (batch k holds task k mod T: docs/data.md) or "uncertainty" (CA-MTL's
    # MT-Uncertainty sampling, XLM-R: the batch is chosen from a pool of batch_size examples per
    # task by prediction entropy; docs/methods.md).
    batch_mode: str = "heterogeneous"
    # Rates that change during training, in place of the mixture's: {"name": "annealed",
    # "alpha_start": 1.0, "alpha_end": 0.5} samples task t ∝ n_t^α, α linear in the step over
    # num_steps (Stickland & Murray 2019; docs/data.md). None = the mixture's fixed rates.
    rate_schedule: dict[str, Any] | None = None
    # Training batches are built from this many data shards (each global batch is data_shards
    # blocks of batch_size / data_shards rows, block k from shard k). None = the process count.
    # Fix it (a multiple of every process count you will use) to make runs on different numbers
    # of processes see the same batches and resume exactly across a resize. See docs/scaling.md.
    data_shards: int | None = None
    # A pre-tokenized cache of `mixture` (python -m mtl_jax.cache): training batches are read
    # from it without TensorFlow or seqio, identical to the uncached ones (docs/cache.md).
    cache_dir: str | None = None
    # Training length: num_steps updates, or num_epochs passes over the mixture's training
    # examples (steps = ceil(num_epochs * examples / batch_size), computed when the run is built
    # and logged). Give at most one; neither = 1000 steps.
    num_steps: int | None = None
    num_epochs: float | None = None
    eval_every: int = 200
    checkpoint_every: int | None = None
    keep_last: int = 2
    keep_best: int = 1
    patience: int | None = None
    # Updates skipped in a row (non-finite loss, gradient norm or update: see docs/faults.md)
    # before the run stops with exit code 3; an isolated bad batch is skipped and training goes on.
    max_consecutive_skips: int = 3
    eval_split: str = "validation"
    # After training, evaluate the best checkpoint on this split too (e.g. "test"); the table is
    # saved as results_{split}.{md,csv,json} beside results.*. None = no final evaluation.
    final_eval_split: str | None = None
    # Chaining runs (docs/transfer.md). Start a fresh run from another run's PARAMETERS (not its
    # optimizer state, step or data position): "RUN_DIR", "RUN_DIR@best" (the default step),
    # "RUN_DIR@latest" or "RUN_DIR@N". A run that has checkpoints of its own resumes from them and
    # ignores this. XLM-R heads are matched by head name: heads of tasks this run does not have are
    # dropped, new ones are freshly initialised, and init_heads maps this run's head (or dataset)
    # to the source run's head to reuse instead, e.g. {'ctkfacts_nli': 'xnli'}.
    init_from: str | None = None
    init_heads: dict[str, str] = dataclasses.field(default_factory=dict)
    eval_mode: str = "rank"  # rank | greedy (t5 only)
    eval_batch_size: int = 64
    max_eval_examples: int | None = None  # per (task, language); None = all
    # Keyword arguments of training.optimizers.make_optimizer (total_steps comes from num_steps);
    # "freeze": [regex, ...] freezes matching parameter paths (no update, no optimizer state).
    optimizer: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "adafactor", "learning_rate": 1e-3}
    )
    z_loss: float = 0.0
    # R3F (Aghajanyan et al. 2020): {"sigma": 1e-5, "lam": 1e-2, "noise": "uniform"} (the
    # thesis's setting; gin_configs/methods/r3f.gin); None = off. See docs/methods.md.
    r3f: dict[str, Any] | None = None
    # SMART (Jiang et al. 2020, as in MT-DNN): {"sigma": 1e-5, "step_size": 1e-3, "steps": 1,
    # "alpha": 1.0} (gin_configs/methods/smart.gin); "mu" > 0 adds the Bregman proximal point
    # term with a momentum teacher ("beta", "beta_late", "beta_switch";
    # methods/smart_proximal.gin). None = off. Not together with r3f.
    smart: dict[str, Any] | None = None
    # Muppet loss scaling: "log_classes" divides each example's loss by log(its task's classes)
    # (vocabulary size for text-to-text); None = off.
    loss_scaling: str | None = None
    # Gradient surgery across the tasks of each effective batch: "pcgrad" (Yu et al. 2020) or
    # None. Costs one gradient per task in memory and one backward pass per task present.
    gradient_combiner: str | None = None
    # XLM-R heads (names, e.g. ('cs224n_sts',)) of two-text regression tasks predicted by a
    # siamese cosine head: each text encoded alone, 2.5 * (cos(pooled a, pooled b) + 1). Costs a
    # second encoder pass on batches holding such a task; no packing. See docs/methods.md.
    siamese_heads: tuple[str, ...] = ()
    # None = the family default: "tokens" for t5 (mean over real target tokens), "examples" for xlmr.
    loss_normalization: Any = None
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    rules: str = "t5x"
    seed: int = 0
    dropout: bool = True
    async_checkpoints: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num_steps is not None and self.num_epochs is not None:
            raise ValueError(
                f"TrainConfig.num_steps={self.num_steps} and TrainConfig.num_epochs="
                f"{self.num_epochs} are both set: give the training length one way")
        if self.num_steps is None and self.num_epochs is None:
            object.__setattr__(self, "num_steps", DEFAULT_NUM_STEPS)
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise ValueError(f"TrainConfig.num_epochs must be > 0, got {self.num_epochs}")
        if self.init_heads and not self.init_from:
            raise ValueError("TrainConfig.init_heads is set but TrainConfig.init_from is not: "
                             "head mapping only applies when starting from another run")
        if self.family not in FAMILIES:
            raise ValueError(f"TrainConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.eval_mode not in ("rank", "greedy"):
            raise ValueError(f"TrainConfig.eval_mode must be 'rank' or 'greedy', got {self.eval_mode!r}")
        if self.eval_mode == "greedy" and not get_family(self.family).encoder_decoder:
            raise ValueError("TrainConfig.eval_mode='greedy' needs family='t5'")
        if self.max_consecutive_skips < 1:
            raise ValueError(
                f"TrainConfig.max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        if self.rate_schedule is not None and self.batch_mode in ("round_robin", "uncertainty"):
            raise ValueError(f"TrainConfig.rate_schedule is set but TrainConfig.batch_mode="
                             f"{self.batch_mode!r} does not draw tasks by rate (round_robin: a "
                             "fixed cycle; uncertainty: a pool of every task): use one or the other")
        if self.batch_size % self.micro_batches:
            raise ValueError(
                f"TrainConfig.batch_size={self.batch_size} is not divisible by "
                f"TrainConfig.micro_batches={self.micro_batches}"
            )

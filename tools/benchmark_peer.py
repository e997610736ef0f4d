"""The PyTorch peer of ``tools/benchmark.py --peer hf``: transformers' own train step on our batches.

What a user weighs is our step against what they would use instead: the transformers PyTorch model
the recipe came from (``MT5ForConditionalGeneration`` for mT5, ``XLMRobertaForSequenceClassification``
for XLM-R), eager and under ``torch.compile``. Each peer is built from OUR model's initial weights
(exported with the tested HF converters, ``hf_t5.export_hf_t5`` / ``hf_xlmr.export_hf_xlmr``), gets
the very same token batches (the NumPy arrays our step reads, as torch tensors), the same dtype
policy (float32 parameters; bfloat16 compute through ``torch.autocast`` where ours computes in
bfloat16), dropout as ours (``train()`` / ``eval()``), the loss over the same tokens (labels -100
where ``decoder_loss_weights`` is 0; HF's mean equals our "tokens" / "examples" normalisation), the
same optimizer family and hyper-parameters, and on CPU the same thread count as XLA's pool.

Differences that remain, by design of the two libraries (also printed in the JSON ``peer.notes``):
- Adafactor: transformers' ``Adafactor`` (lr fixed, ``relative_step=False``, ``scale_parameter=True``,
  ``eps=(1e-30, 1e-3)``, clip 1.0, decay -0.8) factors every >= 2-D tensor over its last two dims;
  ours (optax, T5X's rule) factors only when both of the two largest dims are >= 128 and our
  attention kernels are 3-D ([embed, heads, kv]) where HF's are 2-D. Same FLOP order; the
  factored/unfactored choice changes state size on the small embeddings only.
- AdamW: ``torch.optim.AdamW`` with its default CPU implementation (``foreach`` on CUDA), decay on
  every tensor except biases and LayerNorm weights (our ``default_weight_decay`` rule).
- XLM-R: our model has one head per task selected by ``task_id``; the peer has one head, so the
  comparison uses a single task (``--task_labels`` keeps its first entry).
- ``torch.compile`` compiles the model (forward + backward, AOTAutograd/Inductor); the optimizer
  step runs eagerly, as in transformers' Trainer. Its compile time is the first step's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

KINDS = ("eager", "compile")
LEARNING_RATES = {"t5": 1e-3, "xlmr": 1e-5}  # what tools/benchmark.py gives our optimizer
FAILED: dict[str, str] = {}  # peer variants whose first step raised (reported, not fatal)


def single_task(args: argparse.Namespace) -> None:
    """The peer has one classification head: compare XLM-R on the first task of ``--task_labels``."""
    first = args.task_labels.split(",")[0]
    if args.model.startswith("xlmr") and args.task_labels != first:
        print(f"--peer: XLM-R compared on one task head (--task_labels {first}; "
              f"was {args.task_labels})")
        args.task_labels = first


def _torch_device(platform: str) -> str:
    import torch

    if platform == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--peer hf on a GPU needs a CUDA build of torch")
        return "cuda"
    return "cpu"


def export_ours(family: str, config: Any, params: Any, rest: Any, graphdef: Any,
                directory: str) -> str:
    """Our parameters as an HF checkpoint directory (the tested export); returns its path."""
    from mtl_jax.models import hf_t5, hf_xlmr
    from mtl_jax.training.train_state import merge_model

    model = merge_model(graphdef, params, rest)
    if family == "t5":
        hf_t5.export_hf_t5(model, config, directory)
        return directory
    return str(hf_xlmr.export_hf_xlmr(model, config, directory, ["task0"])["task0"])


def load_hf(family: str, directory: str) -> Any:
    """The transformers model of an exported directory (float32)."""
    import transformers

    if family == "t5":
        # transformers warns that lm_head is not tied to the embeddings: right for mT5.
        return transformers.MT5ForConditionalGeneration.from_pretrained(directory)
    return transformers.XLMRobertaForSequenceClassification.from_pretrained(directory)


def torch_batch(family: str, batch: dict[str, np.ndarray], device: str) -> dict[str, Any]:
    """Our batch as the HF model's keyword arguments: the same tokens, loss over the same tokens."""
    import torch

    from mtl_jax import features as F

    def t(x: np.ndarray) -> Any:
        return torch.from_numpy(np.asarray(x).astype(np.int64)).to(device)

    if family == "t5":
        enc = batch[F.ENCODER_INPUT_TOKENS]
        labels = np.where(batch[F.DECODER_LOSS_WEIGHTS] > 0, batch[F.DECODER_TARGET_TOKENS], -100)
        return dict(input_ids=t(enc), attention_mask=t(enc != 0),
                    decoder_input_ids=t(batch[F.DECODER_INPUT_TOKENS]), labels=t(labels))
    return dict(input_ids=t(batch[F.INPUT_IDS]), attention_mask=t(batch[F.ATTENTION_MASK]),
                labels=t(batch[F.LABELS]))


def torch_optimizer(name: str, model: Any, learning_rate: float) -> Any:
    """The closest transformers/torch equivalent of ``optimizers.make_optimizer(name)``."""
    import torch

    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(model.parameters(), lr=learning_rate, eps=(1e-30, 1e-3),
                         clip_threshold=1.0, decay_rate=-0.8, beta1=None, weight_decay=0.0,
                         scale_parameter=True, relative_step=False, warmup_init=False)
    if name == "adamw":
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            (no_decay if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n
             else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)
    raise SystemExit(f"--peer: no torch equivalent of optimizer {name!r}")


class TorchStep:
    """One HF train step (forward, backward, optimizer update), called like our compiled step:
    ``step(state, batch) -> (state, loss)``; on a GPU it waits for the device before returning."""

    def __init__(self, model: Any, optimizer: Any, dtype: str, device: str, compiled: bool):
        import torch

        self.model, self.optimizer, self.device = model, optimizer, device
        self.forward = torch.compile(model) if compiled else model
        self.autocast = dtype == "bfloat16"
        self.last_loss: Any = None

    def __call__(self, state: Any, batch: dict[str, Any]) -> tuple[Any, float]:
        import torch

        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.forward(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.last_loss = loss.detach()
        return state, self.last_loss


def build_peers(bench: Any, ours: Any, kinds: tuple[str, ...] = KINDS) -> list[Any]:
    """Peer variants (``bench.Variant`` objects the benchmark's round loop runs like ours), built
    before our first step so they start from our initial weights. The first call of each is
    timed as its compile time (eager: the first step's cost)."""
    import jax
    import torch
    from flax import nnx

    from mtl_jax.models.t5 import T5Model
    from mtl_jax.models.xlmr import XLMRMultiTask
    from mtl_jax.training.train_state import abstract_model

    args, config = ours.args, ours.config
    if not kinds or set(kinds) - set(KINDS):
        raise SystemExit(f"--peer_kinds {','.join(kinds)!r}: use {' and/or '.join(KINDS)}")
    family = bench.family_of(args.model)
    if jax.process_count() > 1 or ours.num_devices > 1 and jax.devices()[0].platform != "cpu":
        raise SystemExit("--peer hf compares one device in one process")
    if args.method != "plain" or args.micro_batches != 1:
        raise SystemExit("--peer hf compares the plain step (--method plain, --micro_batches 1)")
    device = _torch_device(jax.devices()[0].platform)
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    model_cls = T5Model if family == "t5" else XLMRMultiTask
    graphdef, _, _ = abstract_model(lambda: model_cls(config, rngs=nnx.Rngs(0)))
    params, rest = jax.device_get(ours.state.params), jax.device_get(ours.state.rest)
    host_batches = [jax.device_get(b) for b in ours.batches]
    opt_name = args.optimizer or ("adafactor" if family == "t5" else "adamw")
    peers = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = export_ours(family, config, params, rest, graphdef, tmp)
        models = {kind: load_hf(family, directory) for kind in kinds}
    for kind in kinds:
        torch.manual_seed(args.seed)
        model = models.pop(kind).to(device)
        model.train(args.dropout == "on")
        step = TorchStep(model, torch_optimizer(opt_name, model, LEARNING_RATES[family]),
                         config.dtype, device, compiled=kind == "compile")
        batches = [torch_batch(family, b, device) for b in host_batches]
        t0 = time.perf_counter()
        try:
            step(None, batches[0])
        except Exception as e:  # noqa: BLE001 - e.g. no compiler for Inductor: keep the others
            FAILED[f"hf {kind}"] = f"{type(e).__name__}: {e}"[:1000]
            print(f"[hf {kind}] failed, left out: {FAILED[f'hf {kind}']}")
            continue
        compile_s = time.perf_counter() - t0
        peers.append(bench.Variant(f"hf {kind}", args, config, step, None, batches, ours.tokens,
                                   ours.flops_padded, ours.flops_useful, compile_s, None, 1))
        print(f"[hf {kind}] {type(model).__name__} attention={model.config._attn_implementation} "
              f"optimizer={type(step.optimizer).__name__} threads={torch.get_num_threads()} "
              f"first step (compile) {compile_s:.1f} s")
    return peers


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def report(bench: Any, ours: list[Any], peers: list[Any]) -> dict[str, Any]:
    """Print and return ours/peer throughput ratios (median over rounds, p10/p90) for each of
    our variants against each peer."""
    out: dict[str, Any] = {"versions": versions(), "notes": __doc__.split("Differences")[1].strip(),
                           "ratios": {}, "failed": dict(FAILED)}
    print(f"\nours vs the PyTorch peer ({len(peers[0].times)} interleaved rounds; ours throughput / "
          f"peer's, >1 = ours faster), torch {out['versions']['torch']}, transformers "
          f"{out['versions']['transformers']}:")
    for mine in ours:
        for peer in peers:
            r = bench.paired_ratios(peer, mine)
            s = {"median": statistics.median(r), "p10": bench.percentile(r, 0.1),
                 "p90": bench.percentile(r, 0.9), "peer_compile_s": peer.compile_s}
            out["ratios"][f"{mine.label} / {peer.label}"] = s
            print(f"  {mine.label} / {peer.label}: {s['median']:.3f} "
                  f"(p10 {s['p10']:.3f}, p90 {s['p90']:.3f})")
    return out

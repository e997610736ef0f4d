"""``python -m mtl_jax.convert``: Hugging Face checkpoints <-> mtl_jax models.

  hf-to-jax SRC DST   an HF directory (config.json + model.safetensors / pytorch_model.bin, or an
                      XLM-R export layout) -> our converted checkpoint (mtl_jax_model.json + params/)
  jax-to-hf SRC DST   a converted checkpoint, or a training MODEL_DIR (or its checkpoints/ folder,
                      or one checkpoints/<step>/) -> config.json + model.safetensors for
                      transformers' from_pretrained (XLM-R: encoder/ plus one
                      XLMRobertaForSequenceClassification directory per task); a LoRA model is
                      written merged, or with --lora_adapter as its base plus peft adapter(s)
  verify CONVERTED HF compare a converted checkpoint with the transformers PyTorch model

Exit status: 0 done, 1 verification over tolerance, 2 bad input (the message names the path).
The Python API is :func:`mtl_jax.models.checkpoint_io.load_converted` / ``save_converted``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mtl_jax.models.families import FAMILIES, family_of_hf_model_type, get_family  # noqa: E402

EXIT_OK, EXIT_OVER_TOLERANCE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_TOLERANCE = 1e-5
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

log = logging.getLogger("mtl_jax.convert")


class ConvertError(Exception):
    """Bad input: printed as ``error: ...`` with exit status 2."""


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mtl_jax.convert",
        description="Convert between Hugging Face checkpoints and mtl_jax models.",
        epilog="Exit status: 0 done, 1 verification over tolerance, 2 bad input.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    h = sub.add_parser("hf-to-jax", help="HF directory -> converted mtl_jax checkpoint")
    h.add_argument("src", type=Path, help="HF model directory (config.json + weights)")
    h.add_argument("dst", type=Path, help="output directory (must be empty or new)")
    h.add_argument("--family", choices=tuple(FAMILIES),
                   help="model family (default: from config.json model_type)")
    h.add_argument("--task_num_labels", type=_int_list, default=None,
                   help="XLM-R: comma-separated label counts of the task heads, e.g. 3,2,1 "
                        "(head 0 comes from SRC when it is a sequence classifier; the others "
                        "are freshly initialised from --seed)")
    h.add_argument("--task_names", nargs="+", default=None,
                   help="XLM-R: names of the task heads (space- or comma-separated)")
    h.add_argument("--seed", type=int, default=0,
                   help="seed for fresh heads/pooler and for --verify's random inputs")
    h.add_argument("--verify", action="store_true",
                   help="compare with the transformers PyTorch model on random padded inputs")
    h.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="--verify fails (exit 1) when max|ours-hf| / max|hf| exceeds this")
    h.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DST (replaces only the files this tool writes)")

    j = sub.add_parser("jax-to-hf", help="converted checkpoint or training run -> HF directory")
    j.add_argument("src", type=Path,
                   help="converted checkpoint, training MODEL_DIR, its checkpoints/ folder, or "
                        "one checkpoints/<step>/ folder")
    j.add_argument("dst", type=Path, help="output directory (must be empty or new)")
    j.add_argument("--step", default=None,
                   help="training checkpoints: N, 'best' or 'latest' (default: best if any step "
                        "has a score, else latest)")
    j.add_argument("--task_names", nargs="+", default=None,
                   help="XLM-R: directory name per task head (default: the run's heads)")
    j.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DST (replaces only the files this tool writes)")
    j.add_argument("--lora_adapter", action="store_true",
                   help="LoRA models: write the base model (LoRA not merged) and the LoRA update "
                        "as a peft adapter in DST/adapter/ (XLM-R: DST/encoder/adapter/ and "
                        "DST/<task>/adapter/); default: one model with LoRA merged into it")

    v = sub.add_parser("verify", help="compare a converted checkpoint with transformers")
    v.add_argument("converted", type=Path, help="directory written by hf-to-jax")
    v.add_argument("hf", type=Path, help="the HF directory to compare with")
    v.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    v.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)

    p.add_argument("--log_level", default="WARNING")
    args = p.parse_args(argv)
    if getattr(args, "task_names", None) is not None:
        args.task_names = [n for item in args.task_names for n in item.split(",") if n]
    return args


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"label counts must be >= 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_jax.cli_logging import setup_logging

    setup_logging(args.log_level, noisy_level=logging.ERROR, timestamps=False,
                  fallback=logging.WARNING)
    commands = {"hf-to-jax": hf_to_jax, "jax-to-hf": jax_to_hf, "verify": verify_command}
    try:
        return commands[args.command](args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, NotImplementedError) as e:
        # Raised by the loaders with the offending path/tensor in the message.
        if os.environ.get("MTL_JAX_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------------------
# Progress lines
# ------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """Progress goes to stderr, results (verification table, summary) to stdout."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def stage(message: str) -> Iterator[dict[str, str]]:
    """Print ``message ...`` now and ``... done in T s (detail)`` at the end; the body may set
    ``info["detail"]``."""
    say(f"{message} ...")
    info: dict[str, str] = {}
    start = time.perf_counter()
    yield info
    detail = f" ({info['detail']})" if info.get("detail") else ""
    say(f"  done in {time.perf_counter() - start:.2f} s{detail}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def tree_size(tree: Any) -> tuple[int, int]:
    """(parameter count, bytes) of a tree of arrays."""
    import jax

    leaves = jax.tree.leaves(tree)
    count = sum(math.prod(x.shape) for x in leaves)
    return count, sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------------
# Destination
# ------------------------------------------------------------------------------------------------


def check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory without ``--overwrite``; create nothing yet."""
    if dst.exists() and not dst.is_dir():
        raise ConvertError(f"destination {dst} exists and is not a directory")
    if dst.is_dir() and not overwrite:
        entries = sorted(p.name for p in dst.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ConvertError(
                f"destination {dst} is not empty ({shown}); choose a new directory or pass "
                "--overwrite (replaces only the files this tool writes, deletes nothing else)"
            )


# ------------------------------------------------------------------------------------------------
# hf-to-jax
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class HFSource:
    """What an HF directory holds, checked before any heavy work."""

    directory: Path
    family: str
    model_type: str
    config_dir: Path  # where config.json is (SRC, or SRC/encoder for an XLM-R export layout)
    weight_files: list[Path]
    export_layout: bool  # an export_hf_xlmr layout (mtl_jax_tasks.json)
    architectures: list[str]


def inspect_hf_source(src: Path, family: str | None) -> HFSource:
    from mtl_jax.models import hf_io, hf_xlmr

    if not src.is_dir():
        raise ConvertError(f"source {src} is not a directory (expected a Hugging Face model directory)")
    export_layout = (src / hf_xlmr.MANIFEST_NAME).is_file()
    config_dir = src / hf_xlmr.ENCODER_DIR if export_layout else src
    if not (config_dir / hf_io.CONFIG_NAME).is_file():
        raise ConvertError(
            f"no {hf_io.CONFIG_NAME} in {config_dir}: expected a Hugging Face model directory "
            f"(config.json + {' or '.join(WEIGHT_FILES)})"
        )
    hf_config = hf_io.read_config(config_dir)
    model_type = hf_config.get("model_type")
    found = family_of_hf_model_type(model_type)
    if found is None:
        supported = " and ".join(f"{', '.join(f.hf_model_types)} (family {f.name})"
                                 for f in FAMILIES.values())
        raise ConvertError(
            f"{config_dir / hf_io.CONFIG_NAME}: unknown model_type {model_type!r}; supported: "
            f"{supported}"
        )
    detected = found.name
    if family is not None and family != detected:
        raise ConvertError(
            f"--family {family} does not fit {config_dir / hf_io.CONFIG_NAME} (model_type "
            f"{model_type!r} is family {detected})"
        )
    weight_dirs = [config_dir]
    if export_layout:
        weight_dirs += [src / t["dir"] for t in hf_xlmr.read_manifest(src)]
    files: list[Path] = []
    for d in weight_dirs:
        found = [d / name for name in WEIGHT_FILES if (d / name).is_file()]
        if not found:
            raise ConvertError(f"no weights in {d}: expected one of {', '.join(WEIGHT_FILES)}")
        files.append(found[0])
        if found[0].name.endswith(".index.json"):
            shards = sorted(set(json.loads(found[0].read_text())["weight_map"].values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise ConvertError(f"{found[0]} lists weight files that are missing: {missing[:5]}")
            files += [d / s for s in shards]
    return HFSource(src, detected, str(model_type), config_dir, files, export_layout,
                    list(hf_config.get("architectures") or []))


def _require_torch() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference is read from local files only
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise ConvertError(
            f"--verify needs PyTorch and transformers to run the reference model ({e}); install "
            "them (pip install torch==2.13.0 transformers) or convert without --verify"
        ) from None
    transformers.utils.logging.disable_progress_bar()


def hf_to_jax(args: argparse.Namespace) -> int:
    from mtl_jax.models import checkpoint_io

    source = inspect_hf_source(args.src, args.family)
    if get_family(source.family).encoder_decoder and (args.task_num_labels or args.task_names):
        raise ConvertError("--task_num_labels/--task_names apply to XLM-R (family xlmr) only")
    check_destination(args.dst, args.overwrite)
    if args.verify:
        _require_torch()
    size = sum(f.stat().st_size for f in source.weight_files)
    say(f"source {source.directory}: model_type {source.model_type} (family {source.family}), "
        f"{len(source.weight_files)} weight file(s), {human_bytes(size)}")

    if get_family(source.family).encoder_decoder:
        model, config, task_names, id2label = _load_t5(source)
    else:
        model, config, task_names, id2label = _load_xlmr(source, args)
    count, nbytes = tree_size(checkpoint_io.params_of(model))
    with stage(f"writing {args.dst} (orbax params + {checkpoint_io.RECORD_NAME})") as info:
        checkpoint_io.save_converted(
            model, config, source.family, args.dst, task_names=task_names, id2label=id2label,
            source=str(source.directory.absolute()), overwrite=args.overwrite,
        )
        info["detail"] = f"{count:,} parameters, {human_bytes(folder_size(args.dst / checkpoint_io.PARAMS_DIR))} on disk"
    print(f"wrote {args.dst}: {source.family} model, {count:,} parameters ({human_bytes(nbytes)})"
          + (f", tasks {', '.join(task_names)}" if task_names else ""))
    if not args.verify:
        return EXIT_OK
    with stage(f"reloading {args.dst} for verification"):
        reloaded = checkpoint_io.load_converted(args.dst)
    return report_verification(reloaded.model, reloaded.family, source, args.tolerance, args.seed)


def _load_t5(source: HFSource) -> tuple[Any, Any, list[str] | None, dict | None]:
    from mtl_jax.models import hf_io, hf_t5
    from mtl_jax.models.t5 import T5Config

    config = T5Config.from_hf(hf_io.read_config(source.directory))
    with stage(f"reading {', '.join(f.name for f in source.weight_files)}") as info:
        state = hf_io.read_state_dict(source.directory)
        count, nbytes = tree_size(state)
        info["detail"] = f"{len(state)} tensors, {count:,} values, {human_bytes(nbytes)} as float32"
    with stage("converting to T5Model parameters") as info:
        model = hf_t5.model_from_params(
            hf_t5.params_from_hf(state, config, source=str(source.directory)), config)
        info["detail"] = (f"{config.model_type}, {config.num_layers}+{config.num_decoder_layers} "
                          f"layers, d_model {config.d_model}, vocab {config.vocab_size}, "
                          f"{'tied' if config.tie_word_embeddings else 'untied'} LM head")
    return model, config, None, None


def _load_xlmr(source: HFSource, args: argparse.Namespace) -> tuple[Any, Any, list[str], dict]:
    from mtl_jax.models import hf_io, hf_xlmr

    head_dirs = None
    task_num_labels = args.task_num_labels
    if source.export_layout and (task_num_labels or args.task_names):
        raise ConvertError(
            f"{source.directory} is an mtl_jax XLM-R export: its tasks come from "
            f"{hf_xlmr.MANIFEST_NAME}; drop --task_num_labels/--task_names"
        )
    is_classifier = _is_classifier(source.architectures)
    if task_num_labels and is_classifier:
        head_dirs = {0: source.directory}  # keep the checkpoint's head as head 0
    with stage("reading and converting the encoder and heads") as info:
        loaded = hf_xlmr.load_hf_xlmr(source.directory, task_num_labels=task_num_labels,
                                      head_dirs=head_dirs, seed=args.seed)
        config = loaded.config
        info["detail"] = (f"{config.model_type}, {config.num_hidden_layers} layers, hidden "
                          f"{config.hidden_size}, vocab {config.vocab_size}, task heads "
                          f"{list(config.task_num_labels) or 'none'}")
    n_tasks = len(config.task_num_labels)
    if loaded.task_names:
        names = list(loaded.task_names)
    elif args.task_names:
        names = list(args.task_names)
    else:
        names = [f"task_{k}" for k in range(n_tasks)]
    if len(names) != n_tasks:
        raise ConvertError(f"--task_names has {len(names)} names for {n_tasks} task heads "
                           f"(task_num_labels {list(config.task_num_labels)})")
    fresh = [k for k in range(n_tasks) if not (source.export_layout or (k == 0 and is_classifier))]
    if fresh:
        say(f"note: task heads {[names[k] for k in fresh]} are freshly initialised (seed {args.seed})")
    if source.export_layout:
        label_dirs = {k: source.directory / t["dir"]
                      for k, t in enumerate(hf_xlmr.read_manifest(source.directory))}
    else:
        label_dirs = {0: source.directory} if is_classifier else {}
    id2label: dict[str, list[str]] = {}
    for k, d in label_dirs.items():
        labels = hf_io.read_config(d).get("id2label") or {}
        values = [labels.get(str(i)) for i in range(config.task_num_labels[k])]
        if None not in values and values != [f"LABEL_{i}" for i in range(len(values))]:
            id2label[names[k]] = values
    return loaded.model, config, names, id2label


def _is_classifier(architectures: Sequence[str]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures)


# ------------------------------------------------------------------------------------------------
# Verification against transformers
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    what: str  # e.g. "MT5ForConditionalGeneration logits [3, 11, 250112]"
    max_abs: float
    max_rel: float


def verify_command(args: argparse.Namespace) -> int:
    from mtl_jax.models import checkpoint_io

    try:
        checkpoint_io.read_record(args.converted)
    except (FileNotFoundError, ValueError) as e:
        raise ConvertError(str(e)) from None
    source = inspect_hf_source(args.hf, None)
    _require_torch()
    with stage(f"loading {args.converted}"):
        loaded = checkpoint_io.load_converted(args.converted)
    if loaded.family != source.family:
        raise ConvertError(f"{args.converted} is a {loaded.family} model but {args.hf} is family {source.family}")
    return report_verification(loaded.model, loaded.family, source, args.tolerance, args.seed)


def report_verification(model: Any, family: str, source: HFSource, tolerance: float, seed: int) -> int:
    """Run the comparisons, print them and return 0 (all within ``tolerance``) or 1."""
    with stage(f"verifying against transformers (PyTorch) from {source.directory}"):
        rows = compare_with_transformers(model, family, source, seed)
    print(f"verification vs transformers, float32, random padded inputs (seed {seed}); "
          "rel = max|ours - hf| / max|hf|:")
    failed = False
    for row in rows:
        ok = row.max_rel <= tolerance and math.isfinite(row.max_rel)
        failed |= not ok
        print(f"  {row.what}: max abs diff {row.max_abs:.3e}, max rel diff {row.max_rel:.3e}  "
              f"{'OK' if ok else 'OVER TOLERANCE'}")
    print(f"{'FAILED' if failed else 'PASSED'} (tolerance {tolerance:g} on the max relative diff)")
    return EXIT_OVER_TOLERANCE if failed else EXIT_OK


def compare_with_transformers(model: Any, family: str, source: HFSource, seed: int) -> list[Comparison]:
    if get_family(family).encoder_decoder:
        out = verify_t5_against_transformers(model, source.directory, seed=seed)
        return [Comparison(out["what"], out["max_abs"], out["max_rel"])]
    from mtl_jax.models import hf_xlmr

    rows = []
    dirs: list[tuple[Path, int]] = [(source.config_dir, 0)]
    if source.export_layout:
        dirs += [(source.directory / t["dir"], k) for k, t in enumerate(hf_xlmr.read_manifest(source.directory))]
    for directory, task in dirs:
        arch = _architectures(directory)[0]
        label = f"{directory.name}/ " if source.export_layout else ""
        out = hf_xlmr.verify_against_transformers(model, directory, task=task, seed=seed)
        if _is_classifier([arch]):
            n = model.config.task_num_labels[task]
            rows.append(Comparison(f"{label}{arch} logits (head {task}, {n} labels)",
                                   out["max_abs"], out["max_rel"]))
            if not source.export_layout:  # there the encoder/ directory is compared on its own
                out = xlmr_hidden_vs_classifier(model, directory, seed=seed)
                rows.append(Comparison(f"{arch} encoder last_hidden_state", out["max_abs"], out["max_rel"]))
        else:
            rows.append(Comparison(f"{label}{arch} -> encoder last_hidden_state", out["max_abs"],
                                   out["max_rel"]))
    return rows


def _architectures(directory: Path) -> list[str]:
    from mtl_jax.models import hf_io

    return list(hf_io.read_config(directory).get("architectures") or ["(no architectures)"])


def _diff(got: Any, want: Any) -> dict[str, float]:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"output shapes differ: ours {got.shape}, transformers {want.shape}")
    diff = np.abs(got - want)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / max(np.abs(want).max(), 1e-12))}


def xlmr_hidden_vs_classifier(model: Any, hf_directory: Path, *, batch: int = 3, length: int = 17,
                              seed: int = 0) -> dict[str, float]:
    """Encoder output of a sequence-classification directory's ``.roberta`` vs ours (the logits
    check alone cannot tell an encoder error from a head error)."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForSequenceClassification

    from mtl_jax.models.hf_xlmr import random_padded_inputs

    reference = AutoModelForSequenceClassification.from_pretrained(
        str(hf_directory), attn_implementation="eager").eval()
    base = getattr(reference, reference.base_model_prefix)
    ids, mask = random_padded_inputs(model.config, batch, length, seed)
    with torch.no_grad():
        want = base(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    task_id = jnp.zeros((batch,), jnp.int32) if model.heads is not None else None
    got = _xlmr_hidden(model, jnp.asarray(ids), jnp.asarray(mask), task_id)
    return _diff(got, want)


# Module-level jitted forwards, so repeated verifications of one architecture compile once.
def _t5_logits(model: Any, enc: Any, dec: Any) -> Any:
    return _jitted("t5", lambda m, e, d: m(e, d))(model, enc, dec)


def _xlmr_hidden(model: Any, ids: Any, mask: Any, task_id: Any) -> Any:
    return _jitted("xlmr_hidden", lambda m, i, a, t: m(i, a, t)["hidden"])(model, ids, mask, task_id)


_JITTED: dict[str, Any] = {}


def _jitted(name: str, fn: Any) -> Any:
    if name not in _JITTED:
        from flax import nnx

        _JITTED[name] = nnx.jit(fn)
    return _JITTED[name]


def random_t5_inputs(config: Any, batch: int, enc_len: int, dec_len: int,
                     seed: int) -> tuple[Any, Any]:
    """Encoder tokens with right padding of varied lengths (row 0 full, >= 2 real tokens) and
    decoder inputs starting with the decoder start token; real tokens avoid pad and EOS."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = 2 if config.vocab_size > 2 else 0
    enc = rng.integers(low, config.vocab_size, size=(batch, enc_len))
    lengths = rng.integers(2, enc_len + 1, size=batch)
    lengths[0] = enc_len
    enc = np.where(np.arange(enc_len)[None, :] < lengths[:, None], enc, config.pad_token_id)
    dec = rng.integers(low, config.vocab_size, size=(batch, dec_len))
    dec[:, 0] = config.decoder_start_token_id
    return enc.astype(np.int32), dec.astype(np.int32)


def verify_t5_against_transformers(model: Any, hf_directory: str | Path, *, batch: int = 3,
                                   enc_len: int = 17, dec_len: int = 11,
                                   seed: int = 0) -> dict[str, Any]:
    """Max absolute/relative logit difference of ``model`` vs transformers'
    ``MT5ForConditionalGeneration``/``T5ForConditionalGeneration`` loaded from ``hf_directory``
    (eager attention, float32) on random padded encoder inputs and random decoder inputs."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForSeq2SeqLM

    reference = AutoModelForSeq2SeqLM.from_pretrained(str(hf_directory), attn_implementation="eager").eval()
    enc, dec = random_t5_inputs(model.config, batch, enc_len, dec_len, seed)
    with torch.no_grad():
        ids = torch.from_numpy(enc).long()
        want = reference(input_ids=ids, attention_mask=(ids != model.config.pad_token_id).long(),
                         decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()
    got = _t5_logits(model, jnp.asarray(enc), jnp.asarray(dec))[..., : model.config.vocab_size]
    out: dict[str, Any] = _diff(got, want)  # our padded vocabulary columns are masked, not compared
    out["what"] = f"{type(reference).__name__} logits {list(want.shape)}"
    return out


# ------------------------------------------------------------------------------------------------
# jax-to-hf
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Restored:
    model: Any
    config: Any
    family: str
    task_names: list[str] | None
    id2label: dict[str, list[str]]
    description: str
    # The tokenizer to write beside the export: {"file": spm path, "extra_ids": n} of a training
    # run, or {"copy_from": HF directory} of a converted checkpoint; None = none known.
    tokenizer: dict[str, Any] | None = None


def jax_to_hf(args: argparse.Namespace) -> int:
    from mtl_jax.models import checkpoint_io

    src = args.src
    if not src.exists():
        raise ConvertError(f"source {src} does not exist")
    check_destination(args.dst, args.overwrite)
    if checkpoint_io.is_converted(src):
        if args.step is not None:
            raise ConvertError(f"--step applies to training checkpoints; {src} is a converted checkpoint")
        restored = _restore_converted(src)
    else:
        if src.name.isdigit() and args.step is not None and str(args.step) != src.name:
            raise ConvertError(f"{src} is step {src.name}; --step {args.step} contradicts it")
        restored = restore_training_model(src, args.step)
    task_names = args.task_names or restored.task_names
    if args.lora_adapter and getattr(restored.config, "lora", None) is None:
        raise ConvertError(f"--lora_adapter: {restored.description} has no LoRA (its model "
                           "config's lora is None); export it without --lora_adapter")
    with stage(f"exporting {restored.description} to {args.dst}") as info:
        written = export_hf(restored, args.dst, task_names, lora_adapter=args.lora_adapter)
        info["detail"] = f"{human_bytes(sum(folder_size(p) for p in written.values()))} written"
    tokenizer_dirs = export_tokenizer(restored, [args.dst, *written.values()])
    if tokenizer_dirs:
        say(f"tokenizer files written to {', '.join(str(d) for d in tokenizer_dirs)}")
    else:
        say(f"note: {restored.description} records no tokenizer (trained before tokenizer "
            "recording, or converted from a directory without one): no tokenizer files written")
    for name, path in written.items():
        print(f"wrote {path} ({name})")
    return EXIT_OK


def _restore_converted(src: Path) -> Restored:
    from mtl_jax.models import checkpoint_io

    record = checkpoint_io.read_record(src)
    with stage(f"restoring {src} (converted {record['family']} checkpoint)") as info:
        model, config, family = checkpoint_io.load_converted(src)
        count, nbytes = tree_size(checkpoint_io.params_of(model))
        info["detail"] = f"{count:,} parameters, {human_bytes(nbytes)}"
    tokenizer = None
    source = record.get("source")
    if source and (Path(source) / get_family(family).tokenizer_file).is_file():
        tokenizer = {"copy_from": source}
    return Restored(model, config, family, record.get("task_names"), record.get("id2label") or {},
                    f"converted checkpoint {src}", tokenizer)


def restore_training_model(src: Path, requested: str | None) -> Restored:
    """The model of one training checkpoint (``training.checkpoints.RunCheckpoint``: only
    ``state.params`` is read, as host arrays, onto the structure rebuilt from the checkpoint's
    ``config["model"]``; no optimizer is needed)."""
    from mtl_jax.models import checkpoint_io
    from mtl_jax.training.checkpoints import CONFIG, CheckpointLookupError, RunCheckpoint

    try:
        checkpoint = RunCheckpoint(src, requested)
    except CheckpointLookupError as e:
        if "is not a training run" in str(e):
            raise ConvertError(
                f"{src} is neither a converted checkpoint (no mtl_jax_model.json) nor a training "
                "run (expected MODEL_DIR/checkpoints/<step>/, a checkpoints/ folder or one <step>/ "
                "folder)") from None
        raise ConvertError(str(e)) from None
    with checkpoint:
        step, where = checkpoint.step, checkpoint.where
        record = checkpoint.model_record
        family = record.pop("family", None)
        heads = record.pop("heads", None)
        if family is None:
            raise ConvertError(f"{where}/{CONFIG}: no model record (config['model']['family']); "
                               "was this checkpoint written by mtl_jax.train?")
        try:
            config = checkpoint_io.config_from_fields(family, record, f"{where}/{CONFIG} ['model']")
        except (TypeError, ValueError) as e:
            raise ConvertError(str(e)) from None
        with stage(f"restoring the params of step {step} from {where}") as info:
            state = checkpoint.restore({"params": checkpoint_io.abstract_params(family, config)})
            model = checkpoint_io.model_from_params(family, config, state["params"])
            count, nbytes = tree_size(state["params"])
            info["detail"] = f"{family}, {count:,} parameters, {human_bytes(nbytes)}"
    task_names = list(heads) if not get_family(family).encoder_decoder and heads is not None else None
    tokenizer = checkpoint.config.get("vocabulary")
    return Restored(model, config, family, task_names, {}, f"step {step} of {checkpoint.directory}",
                    dict(tokenizer) if isinstance(tokenizer, dict) else None)


TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def export_tokenizer(restored: Restored, directories: Sequence[Path]) -> list[Path]:
    """Write the tokenizer beside every exported model directory (and the export's root), so
    ``AutoTokenizer.from_pretrained`` works on each; returns the directories written."""
    import shutil

    from mtl_jax.models.hf_tokenizer import write_tokenizer

    spec = restored.tokenizer
    if not spec:
        return []
    family = get_family(restored.family)
    done: list[Path] = []
    for directory in dict.fromkeys(Path(d) for d in directories):
        if directory.name == "adapter":  # peft adapters load their base model's tokenizer
            continue
        if "copy_from" in spec:
            source = Path(spec["copy_from"])
            for name in (family.tokenizer_file, *TOKENIZER_FILES):
                if (source / name).is_file():
                    directory.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / name, directory / name)
        else:
            write_tokenizer(directory, restored.family, spec["file"],
                            extra_ids=int(spec.get("extra_ids", 0)))
        done.append(directory)
    return done


def export_hf(restored: Restored, dst: Path, task_names: Sequence[str] | None,
              lora_adapter: bool = False) -> dict[str, Path]:
    """Write the HF directory (T5) or the XLM-R export layout; returns ``{name: directory}``.
    A LoRA model is merged (``W + A B * alpha/r``); with ``lora_adapter`` the base model is
    written instead and the LoRA update as peft adapter directory(ies) next to it."""
    from mtl_jax.models import lora
    from mtl_jax.models.peft_adapter import ADAPTER_DIR

    model = restored.model
    if lora_adapter:
        model = lora.without_lora(restored.model)
    if get_family(restored.family).encoder_decoder:
        from mtl_jax.models.hf_t5 import export_hf_t5, export_lora_adapter

        written = {restored.config.model_type: export_hf_t5(model, model.config, dst)}
        if lora_adapter:
            written[ADAPTER_DIR] = export_lora_adapter(restored.model, dst / ADAPTER_DIR,
                                                       str(dst.absolute()))
        return written
    from mtl_jax.models.hf_xlmr import export_hf_xlmr, export_lora_adapters

    n_tasks = len(restored.config.task_num_labels)
    names = list(task_names) if task_names else [f"task_{k}" for k in range(n_tasks)]
    if len(names) != n_tasks:
        raise ConvertError(f"{len(names)} task names {names} for {n_tasks} task heads "
                           f"(task_num_labels {list(restored.config.task_num_labels)})")
    id2label: Mapping[str, Sequence[str]] = {k: v for k, v in restored.id2label.items() if k in names}
    written = export_hf_xlmr(model, model.config, dst, names, id2label=id2label)
    if lora_adapter:
        written.update(export_lora_adapters(restored.model, dst, names))
    return written


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the training input pipeline next to what the train step consumes.

    python tools/benchmark.py --data                       # mT5 (t2t), real XNLI + PAWS-X dev sets
    python tools/benchmark.py --data --model xlmr_base --inputs 256
    python tools/benchmark.py --data --device H100 --mfu 0.4 --devices 8

What runs is the trainer's own data path: ``MixtureBatches`` (task choice, windowed shuffle,
converter, packing) over every task of the mixture, on one data shard per process as
``sharded_batches`` builds it, and the global-batch assembly (``partitioning.global_batch`` on
this host's devices). It is measured twice: reading through seqio (tokenizing on the fly) and
reading a pre-tokenized cache (``python -m mtl_jax.cache``; built here first, its build time
reported), each unpacked and packed. Speeds are per CPU core: tokens (real, non-padding encoder
input tokens) and examples per second of this process's CPU time (all its threads), so a
pipeline that uses several threads is not flattered; wall-clock rates are printed too.

Data: the real dev sets of ``../shared/data`` (XNLI in 15 languages, PAWS-X in 7; or the
``MTL_JAX_SHARED_DATA`` folder) read as the ``validation`` split of ``xnli_*``/``pawsx_*`` tasks,
with the project's demo vocabulary (the real mT5/XLM-R vocabularies cannot be downloaded here;
their token counts differ by a few tens of percent). For mT5 also the bundled mC4-like
documents under span corruption (seqio only: span corruption is not cacheable).

The step's consumption: examples/s = MFU x peak x devices / (analytic training FLOPs of one
example at the padded shape, ``mtl_jax.training.flops``), and the same in input tokens/s (an
unpacked row is counted by its real tokens at the dev sets' mean length; a packed row by its
full length). The last column says how many CPU cores the pipeline needs to keep up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO_ROOT = TOOLS.parent
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
                  "vi", "zh")
PAWSX_LANGUAGES = ("de", "en", "es", "fr", "ja", "ko", "zh")
MC4_LANGUAGES = ("en", "de", "cs", "ru", "zh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mt5_base", help="whose step consumption to print (and "
                   "which task format to read: mt5_* t2t, xlmr_* cls)")
    p.add_argument("--sizes", choices=("auto", "gin", "table"), default="auto")
    p.add_argument("--batch", type=int, default=128, help="global batch (rows)")
    p.add_argument("--inputs", type=int, default=512)
    p.add_argument("--targets", type=int, default=16, help="decoder length (mT5)")
    p.add_argument("--examples", type=int, default=None, help="examples timed per pipeline "
                   "(default: one epoch of the dev-set mixture; mC4: a tenth of that)")
    p.add_argument("--device", default="H100", help="accelerator whose peak sets the step's "
                   "consumption (a jax device_kind substring)")
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--devices", type=int, default=1, help="accelerators per host")
    p.add_argument("--shared_data", default=os.environ.get(
        "MTL_JAX_SHARED_DATA", str(REPO_ROOT.parent / "shared" / "data")))
    p.add_argument("--no_mc4", action="store_true", help="skip the mC4 span-corruption rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--formats", action="store_true", help="only compare the read speed of the "
                   "cache's NumPy memmaps with ArrayRecord (why the cache uses memmaps)")
    return p.parse_args(argv)


def compare_formats(n: int = 200_000, reads: int = 100_000) -> dict[str, float]:
    """Examples/s per core reading token sequences in random order: memmap slices vs ArrayRecord
    records (synthetic: 20-120 tokens each, int32)."""
    import numpy as np
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 120, n)
    tokens = rng.integers(0, 250_000, lengths.sum()).astype(np.int32)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    d = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    np.save(d / "t.npy", tokens)
    np.save(d / "o.npy", offsets)
    writer = ArrayRecordWriter(str(d / "t.array_record"), "group_size:1")
    for i in range(n):
        writer.write(tokens[offsets[i]:offsets[i + 1]].tobytes())
    writer.close()
    order = rng.permutation(n)[:reads]

    def memmap() -> int:
        t, o = np.load(d / "t.npy", mmap_mode="r"), np.load(d / "o.npy", mmap_mode="r")
        return sum(t[o[i]:o[i + 1]].size for i in order)

    def array_record() -> int:
        reader = ArrayRecordReader(str(d / "t.array_record"), "readahead_buffer_size:0")
        return sum(np.frombuffer(b, np.int32).size for chunk in np.array_split(order, 100)
                   for b in reader.read(chunk.tolist()))

    out = {}
    for f in (memmap, array_record, memmap, array_record):  # interleaved, best of two
        cpu = time.process_time()
        f()
        out[f.__name__] = max(out.get(f.__name__, 0.0), reads / (time.process_time() - cpu))
    for name, rate in out.items():
        print(f"{name}: {rate:,.0f} examples/s/core (random reads of {reads:,} of {n:,})")
    return out


def _real_mixture(fmt: str, shared: Path) -> tuple[str, list[str]]:
    """A seqio Mixture of every XNLI and PAWS-X dev-set task (equal rates) on ``shared``."""
    import seqio

    from mtl_jax.data import mixtures, sources  # noqa: F401  (registers the project's tasks)

    if not (shared / "xnli").is_dir():
        raise SystemExit(f"--data needs the real dev sets: {shared}/xnli not found "
                         "(set --shared_data or MTL_JAX_SHARED_DATA)")
    sources.set_source("xnli", sources.SourceSpec("local", str(shared / "xnli")))
    sources.set_source("pawsx", sources.SourceSpec("local", str(shared / "pawsx")))
    names = [f"xnli_{fmt}_{lang}" for lang in XNLI_LANGUAGES]
    names += [f"pawsx_{fmt}_{lang}" for lang in PAWSX_LANGUAGES]
    mixture = f"bench_real_{fmt}"
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(n, 1.0) for n in names])
    return mixture, names


def _mc4_mixture() -> str:
    import seqio

    mixture = "bench_mc4_t2t"
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(f"mc4_t2t_{lang}", 1.0) for lang in MC4_LANGUAGES])
    return mixture


def _real_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(real encoder input tokens, examples) of one batch."""
    import numpy as np

    from mtl_jax import features as F

    if F.ENCODER_INPUT_TOKENS in batch:
        tokens = int(np.count_nonzero(batch[F.ENCODER_INPUT_TOKENS]))
        if F.ENCODER_SEGMENT_IDS in batch:
            seg = batch[F.ENCODER_SEGMENT_IDS]
            examples = int(np.count_nonzero(np.diff(seg, axis=1, prepend=0) > 0))
        else:
            examples = int(np.count_nonzero(batch[F.DECODER_LOSS_WEIGHTS].sum(1)))
        return tokens, examples
    mask = batch[F.ATTENTION_MASK]
    return int(mask.sum()), int(np.count_nonzero(mask.sum(1)))


def measure(make, examples: int, to_global) -> dict[str, Any]:
    """Time a fresh pipeline from its first batch until it has handed out ``examples`` examples:
    opening the task pipelines and tokenizing (seqio) or slicing (cache) each epoch count."""
    tokens = seen = batches = 0
    wall, cpu = time.perf_counter(), time.process_time()
    it = make()
    while seen < examples:
        batch = next(it)
        to_global(batch)
        t, e = _real_tokens(batch)
        tokens, seen, batches = tokens + t, seen + e, batches + 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"batches": batches, "tokens": tokens, "examples": seen, "wall_s": wall,
            "cpu_s": cpu, "tokens_per_core_s": tokens / cpu, "examples_per_core_s": seen / cpu,
            "tokens_per_wall_s": tokens / wall, "examples_per_wall_s": seen / wall}


def step_consumption(args: argparse.Namespace, mean_tokens: float) -> dict[str, Any]:
    """What the configured step consumes per second on ``--devices`` x ``--device`` at ``--mfu``."""
    sys.path.insert(0, str(TOOLS))
    import benchmark

    from mtl_jax.training import flops as fl

    base, source = benchmark.base_config(args.model, args.sizes)
    targets = args.targets if benchmark.family_of(args.model) == "t5" else 0
    per_row = fl.model_flops(base, 1, args.inputs, targets).train
    peak = fl.peak_flops(args.device, "bfloat16")
    if peak is None:
        raise SystemExit(f"--device {args.device!r}: no known peak (see mtl_jax/training/flops.py)")
    rows = args.mfu * peak * args.devices / per_row
    return {"model": args.model, "sizes": source, "device": args.device, "devices": args.devices,
            "mfu": args.mfu, "peak_flops": peak, "train_flops_per_row": per_row,
            "rows_per_s": rows, "unpacked_tokens_per_s": rows * mean_tokens,
            "packed_tokens_per_s": rows * args.inputs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.formats:
        return compare_formats()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import jax

    from mtl_jax.data import tasks
    from mtl_jax.data.batching import sharded_batches
    from mtl_jax.data.cache_reader import cached_mixture_batches, open_cache
    from mtl_jax.data.cache_writer import write_cache
    from mtl_jax.data.converters import ClassificationConverter, EncDecConverter
    from mtl_jax.data.iterator import mixture_iterator
    from mtl_jax.training import partitioning as part

    fmt = "cls" if args.model.startswith("xlmr") else "t2t"
    lengths = {"inputs": args.inputs, **({"targets": args.targets} if fmt == "t2t" else {})}
    mixture, names = _real_mixture(fmt, Path(args.shared_data))
    heads = tuple(sorted({tasks.task_info(n).head for n in names} | {"mc4"}))
    mesh = part.make_mesh(-1, 1, 1)
    sharding = part.batch_sharding(mesh, part.rules_by_name("t5x"))
    rows = part.local_rows(sharding, args.batch)

    def to_global(batch: dict[str, Any]) -> Any:
        return jax.block_until_ready(part.global_batch(batch, mesh, sharding))

    def converter(pack: bool) -> Any:
        if fmt == "t2t":
            return EncDecConverter(heads, pack=pack)
        return ClassificationConverter(heads)

    def uncached(name: str, pack: bool):
        return lambda: sharded_batches(
            lambda shard, n: mixture_iterator(name, "validation", lengths, n, converter(pack),
                                              args.seed, shard_info=shard, repeat=True),
            args.batch, rows, 1)

    cache_dir = Path(tempfile.mkdtemp(prefix="bench_cache_")) / mixture
    start = time.perf_counter()
    cpu = time.process_time()
    write_cache(mixture, cache_dir, lengths, splits=["validation"])
    build = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}
    cache = open_cache(cache_dir, mixture, lengths, split="validation")
    manifest = cache.manifest
    n_examples = sum(t["splits"]["validation"]["examples"] for t in manifest["tasks"].values())
    build["examples_per_core_s"] = n_examples / build["cpu_s"]

    def cached(pack: bool):
        return lambda: sharded_batches(
            lambda shard, n: cached_mixture_batches(cache, "validation", lengths, n,
                                                    converter(pack), args.seed, shard=shard,
                                                    repeat=True),
            args.batch, rows, 1)

    runs: list[tuple[str, Any]] = []
    packs = (False, True) if fmt == "t2t" else (False,)
    for pack in packs:
        runs.append((f"seqio {'packed' if pack else 'unpacked'}", uncached(mixture, pack)))
        runs.append((f"cache {'packed' if pack else 'unpacked'}", cached(pack)))
    if fmt == "t2t" and not args.no_mc4:
        for pack in packs:
            runs.append((f"seqio mC4 span corruption {'packed' if pack else 'unpacked'}",
                         uncached(_mc4_mixture(), pack)))
    results = {}
    for label, make in runs:
        target = args.examples or n_examples
        results[label] = measure(make, target // 10 if "mC4" in label else target, to_global)
        r = results[label]
        print(f"measured {label}: {r['tokens_per_core_s']:,.0f} tokens/s/core", flush=True)
    unpacked = results["seqio unpacked"]
    mean_tokens = unpacked["tokens"] / unpacked["examples"]
    step = step_consumption(args, mean_tokens)

    print(f"\ninput pipeline: {mixture} ({len(names)} real dev-set tasks, {n_examples:,} examples,"
          f" mean {mean_tokens:.1f} input tokens), batch {args.batch} x {lengths}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs")
    print(f"cache build: {build['wall_s']:.1f} s wall, {build['cpu_s']:.1f} s CPU, "
          f"{build['examples_per_core_s']:,.0f} examples/s/core")
    print(f"step: {args.model} on {args.devices} x {args.device} at {100 * args.mfu:.0f}% MFU "
          f"consumes {step['rows_per_s']:,.0f} rows/s = "
          f"{step['unpacked_tokens_per_s']:,.0f} tokens/s unpacked, "
          f"{step['packed_tokens_per_s']:,.0f} tokens/s packed\n")
    head = ["pipeline", "tokens/s/core", "examples/s/core", "tokens/s wall", "cores to keep up"]
    lines = [head]
    for label, r in results.items():
        need = step["packed_tokens_per_s"] if "packed" in label and "unpacked" not in label \
            else step["unpacked_tokens_per_s"]
        lines.append([label, f"{r['tokens_per_core_s']:,.0f}", f"{r['examples_per_core_s']:,.0f}",
                      f"{r['tokens_per_wall_s']:,.0f}", f"{need / r['tokens_per_core_s']:.1f}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    for j, row in enumerate(lines):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    out = {"args": vars(args), "mixture": mixture, "examples": n_examples,
           "mean_input_tokens": mean_tokens, "cache_build": build, "step": step,
           "pipelines": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()

"""Pre-tokenize a mixture once: ``python -m mtl_jax.cache --mixture=NAME --output=DIR``.

Tokenizes every member task of the mixture (all their splits, or ``--splits``) with the run's
vocabulary, sources and sequence lengths (from ``--gin_file``/``--gin_param``, as for
``python -m mtl_jax.train``) and writes NumPy shards plus a manifest to DIR. A run with
``TrainConfig.cache_dir=DIR`` then reads its training batches from DIR without TensorFlow or
seqio, in the same order as it would uncached (docs/cache.md).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtl_jax.cache",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--mixture", help="mixture (or task) to cache; default TrainConfig.mixture")
    p.add_argument("--output", required=True, help="cache directory to create")
    p.add_argument("--splits", nargs="+", help="splits to cache (default: every split)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="the run's gin file(s): sources, vocabulary, sequence_length, datasets")
    p.add_argument("--gin_param", action="append", default=[], help="binding NAME=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mtl_jax import configurables, experiment, gin_config
    from mtl_jax.data.cache_reader import CacheError
    from mtl_jax.data.cache_writer import write_cache

    try:
        gin_config.parse(args.gin_file, args.gin_param)
        cfg = configurables.train_config()
        experiment.configure_datasets(cfg)
        experiment.configure_sources(cfg)
        experiment.configure_vocabulary(cfg)
        vocab = {experiment.task_format(cfg.family): experiment.vocabulary_file(cfg)}
        manifest = write_cache(args.mixture or cfg.mixture, args.output, cfg.sequence_length,
                               splits=args.splits, vocabularies=vocab, overwrite=args.overwrite)
    except (gin_config.GinConfigError, experiment.ConfigError, CacheError, KeyError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(s["examples"] for t in manifest["tasks"].values() for s in t["splits"].values())
    print(f"wrote {args.output}: {len(manifest['tasks'])} tasks, {n:,} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the bundled sample datasets (mtl_jax/data/assets/samples/) in the real release formats.

Every dataset and language of the data table gets small train/validation/test files laid out as
the original releases are (XTREME TSVs for XNLI/PAWS-X dev/test, XNLI-MT 1.0 train files for all 15
XNLI languages so XNLI_mix works, the XGLUE ``xglue_full_dataset`` tree for NC/QADSM/QAM/WPR, the
CTKFacts NLI ``{split}.jsonl`` files, allenai/c4 ``multilingual`` shards for mC4, the GLUE task
folders ``download_glue_data.py`` writes, the CS224N minBERT ``data/`` CSVs), so the bundled source
is read by exactly the code that reads a user's local copy. The text and the learnable label
rules come from ``tools/sample_text.py`` and (English GLUE/CS224N rows) ``tools/sample_glue.py``,
the GLUE/CS224N file layouts from ``tools/glue_layouts.py``; output is deterministic (fixed seeds,
byte-stable gzip) and kept under 5.5 MB.

    python tools/make_samples.py            # (re)write mtl_jax/data/assets/samples
    python tools/make_samples.py --check    # regenerate in a temp dir and compare byte for byte
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from mtl_jax.data import formats, sources  # noqa: E402

SEED = 20240531
# The multilingual samples were sized to 5 MiB; GLUE and CS224N add ~0.3 MiB.
MAX_TOTAL_BYTES = 5 * 1024 * 1024 + 512 * 1024
# Rows per file: enough for a small model to pick up the label rules, small enough to commit.
ROWS = {"train": 1200, "validation": 200, "test": 80}
XNLI_MIX_TRAIN_ROWS = 900  # per translated XNLI-MT train file (15 languages; en = XNLI train)
MC4_DOCS = {"train": 60, "validation": 12}
# GLUE and CS224N: enough rows that every class is in every labelled split, far fewer than the
# multilingual tasks (their samples exist to exercise the layouts, not to train on).
GLUE_ROWS = {"train": 48, "dev": 24, "test": 8}
CS224N_ROWS = {
    "sst": {"train": 60, "dev": 30, "test-student": 10},
    "quora": {"train": 48, "dev": 24, "test-student": 8},
    "sts": {"train": 48, "dev": 24, "test-student": 8},
}

_FILE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}


def _seed(*parts: str) -> int:
    """A per-file seed, stable across Python runs (no hash randomisation)."""
    return (SEED + zlib.crc32("/".join(parts).encode("utf-8"))) % (2**31)


def _records(dataset: str, language: str, split: str, n: int) -> list[dict]:
    import sample_text

    return sample_text.records(dataset, language, split, n, _seed(dataset, language, split))


def _write_xnli(root: Path) -> None:
    for lang in sources.XNLI_LANGUAGES:
        # Train: the XNLI-MT 1.0 layout, one file per language (XNLI_mix reads all 15).
        records = _records("xnli", lang, "train", XNLI_MIX_TRAIN_ROWS)
        formats.write_xnli_mt_train(root / "multinli" / f"multinli.train.{lang}.tsv", records)
        for split in ("validation", "test"):
            path = root / f"{_FILE_SPLIT[split]}-{lang}.tsv"
            formats.write_xnli_pairs_tsv(path, _records("xnli", lang, split, ROWS[split]))


def _write_pawsx(root: Path) -> None:
    table = sources.SPLIT_LANGUAGES["pawsx"]
    for split, langs in table.items():
        for lang in langs:
            path = root / f"{_FILE_SPLIT[split]}-{lang}.tsv"
            formats.write_pawsx_xtreme_tsv(path, _records("pawsx", lang, split, ROWS[split]))


def _write_xglue(root: Path) -> None:
    for dataset in ("nc", "qadsm", "qam", "wpr"):
        for split, langs in sources.SPLIT_LANGUAGES[dataset].items():
            for lang in langs:
                name = f"xglue.{dataset}.{lang}.{_FILE_SPLIT[split]}"
                records = _records(dataset, lang, split, ROWS[split])
                formats.write_xglue_tsv(root / dataset.upper() / name, dataset, records)


def _write_ctkfacts(root: Path) -> None:
    for split in sources.SPLITS:
        records = _records("ctkfacts_nli", "cs", split, ROWS[split])
        formats.write_ctkfacts_jsonl(root / f"{split}.jsonl", records)


def _write_mc4(root: Path) -> None:
    import sample_text

    for split, langs in sources.SPLIT_LANGUAGES["mc4"].items():
        suffix = "" if split == "train" else "-validation"
        for lang in langs:
            docs = sample_text.mc4_documents(lang, MC4_DOCS[split], _seed("mc4", lang, split))
            formats.write_mc4_json_gz(
                root / f"c4-{lang}{suffix}.tfrecord-00000-of-00001.json.gz", docs
            )


def _write_glue(root: Path) -> None:
    import glue_layouts
    import sample_glue
    from sample_lexicons.glue_en import POS

    glue_layouts.write_glue(root, sample_glue.records, GLUE_ROWS, _seed, POS)


def _write_cs224n(root: Path) -> None:
    import glue_layouts
    import sample_glue

    glue_layouts.write_cs224n(root, sample_glue.records, CS224N_ROWS, _seed)


WRITERS: dict[str, Callable[[Path], None]] = {
    "xnli": _write_xnli,
    "pawsx": _write_pawsx,
    "xglue_full_dataset": _write_xglue,
    "ctkfacts": _write_ctkfacts,
    "mc4": _write_mc4,
    "glue": _write_glue,
    "cs224n": _write_cs224n,
}
assert set(sources.BUNDLED_SUBDIRS.values()) <= set(WRITERS)


def write_samples(out_dir: Path) -> int:
    """Write every sample file under ``out_dir`` (replacing it); return the total size in bytes."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for subdir, write in WRITERS.items():
        write(out_dir / subdir)
    return sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path) -> list[str]:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return [
            f"file lists differ: {sorted(set(map(str, files_a)) ^ set(map(str, files_b)))[:10]}"
        ]
    return [str(f) for f in files_a if not filecmp.cmp(a / f, b / f, shallow=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=sources.SAMPLES_DIR, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="regenerate in a temp dir and compare with --out"
    )
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write_samples(Path(tmp) / "samples")
            diffs = _same_tree(Path(tmp) / "samples", args.out)
        if diffs:
            print(f"samples differ from {args.out}: {diffs[:10]}", file=sys.stderr)
            return 1
        print(f"samples in {args.out} are up to date")
        return 0
    total = write_samples(args.out)
    files = sum(1 for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {files} files, {total / 1024:.0f} KiB, to {args.out}")
    if total > MAX_TOTAL_BYTES:
        print(f"samples total {total} bytes > {MAX_TOTAL_BYTES}: reduce ROWS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

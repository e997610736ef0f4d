"""Train the two demo SentencePiece models on the project's own synthetic text.

The demo must tokenize every script the tasks use without pretrained vocabularies (which cannot be
downloaded here), so two small unigram models are trained on ``sample_text.all_text(seed=0)``:

- ``mtl_jax/data/assets/demo_t5_spm.model``: T5/mT5 id layout (pad 0, eos 1, unk 2, no bos);
  the 100 sentinel ids are added by the mT5 vocabulary class, not stored here.
- ``mtl_jax/data/assets/demo_xlmr_spm.model``: XLM-R ``sentencepiece.bpe.model`` layout
  (unk 0, ``<s>`` 1, ``</s>`` 2, no pad); the fairseq offset is applied by the XLM-R vocabulary.

Training is single-threaded on an in-memory, fixed-order corpus, so a rebuild is byte-identical:
``python tools/make_vocab.py`` writes the files, ``--check`` only verifies the committed ones, and
``--report`` prints the unk rate per language on held-out generated text.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import sentencepiece as spm

if __package__:
    from . import sample_text
else:  # python tools/make_vocab.py
    import sample_text

ASSETS = Path(__file__).resolve().parents[1] / "mtl_jax" / "data" / "assets"
VOCAB_SIZE = 16000
CORPUS_SEED = 0
HELD_OUT_SEED = 987_654

LAYOUTS: dict[str, dict] = {
    "demo_t5_spm.model": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1,
                          "pad_piece": "<pad>", "eos_piece": "</s>", "unk_piece": "<unk>"},
    "demo_xlmr_spm.model": {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
                            "unk_piece": "<unk>", "bos_piece": "<s>", "eos_piece": "</s>"},
}


def train_model(name: str, corpus: list[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """The serialized model ``name`` (a key of LAYOUTS) trained on ``corpus``."""
    spm.set_random_generator_seed(CORPUS_SEED)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=out,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,  # every letter of every script gets a piece: no unk fallback
        byte_fallback=False,
        hard_vocab_limit=False,  # the corpus may support fewer pieces; never fail on that
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        max_sentence_length=16384,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
        **LAYOUTS[name],
    )
    return out.getvalue()


def build(vocab_size: int = VOCAB_SIZE) -> dict[str, bytes]:
    """Both demo models, keyed by file name."""
    corpus = list(sample_text.all_text(CORPUS_SEED))
    return {name: train_model(name, corpus, vocab_size) for name in LAYOUTS}


def held_out_text(language: str) -> list[str]:
    """Generated text of ``language`` with a seed the corpus never used."""
    texts = sample_text.mc4_documents(language, 40, HELD_OUT_SEED)
    for dataset, by_split in sample_text.LANGUAGES.items():
        if language in by_split["test"]:
            for row in sample_text.records(dataset, language, "test", 30, HELD_OUT_SEED):
                texts += [v for v in row.values() if isinstance(v, str)]
    return texts


def unk_rates(model: bytes) -> dict[str, float]:
    """Share of unk ids among all ids, per language, on held-out generated text."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    rates = {}
    for lang in sample_text.MC4_LANGUAGES:
        ids = [i for text in held_out_text(lang) for i in sp.encode(text)]
        rates[lang] = sum(i == sp.unk_id() for i in ids) / max(len(ids), 1)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed models differ from a rebuild")
    parser.add_argument("--report", action="store_true",
                        help="print sizes and per-language unk rates")
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args(argv)

    models = build()
    status = 0
    for name, data in models.items():
        path = args.out_dir / name
        if args.check:
            same = path.is_file() and path.read_bytes() == data
            print(f"{path}: {'up to date' if same else 'DIFFERS from a rebuild'}")
            status |= 0 if same else 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if args.report:
        for name, data in models.items():
            sp = spm.SentencePieceProcessor(model_proto=data)
            rates = unk_rates(data)
            print(f"{name}: {sp.get_piece_size()} pieces, {len(data)} bytes")
            print("  unk rate: " + ", ".join(f"{k} {v:.4f}" for k, v in rates.items()))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Tokenizer files beside an exported Hugging Face model, so ``AutoTokenizer.from_pretrained``
on the export gives the ids the model was trained on.

The run's sentencepiece model is copied under the name the family's HF tokenizer reads
(``spiece.model`` for mT5, ``sentencepiece.bpe.model`` for XLM-R) with a ``tokenizer_config.json``
naming the tokenizer class and its special tokens, and a ``special_tokens_map.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mtl_jax.models.families import get_family

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

_SPECIAL: dict[str, dict[str, str]] = {
    "t5": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "xlmr": {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
             "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"},
}


def write_tokenizer(directory: str | Path, family: str, spm_file: str | Path,
                    model_max_length: int = 512, extra_ids: int = 0) -> list[Path]:
    """Copy ``spm_file`` into ``directory`` and write the tokenizer config; returns the files.
    ``extra_ids``: T5 sentinel tokens appended after the sentencepiece pieces."""
    fam = get_family(family)
    spm_file = Path(spm_file)
    if not spm_file.is_file():
        raise FileNotFoundError(f"sentencepiece model {spm_file} does not exist (the run's "
                                "vocabulary); cannot write the tokenizer files")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / fam.tokenizer_file
    if spm_file.resolve() != target.resolve():
        shutil.copyfile(spm_file, target)
    special = _SPECIAL[family]
    config: dict[str, Any] = {"tokenizer_class": fam.tokenizer_class,
                              "model_max_length": int(model_max_length), **special}
    if fam.encoder_decoder:
        config["extra_ids"] = int(extra_ids)
        if extra_ids:
            config["additional_special_tokens"] = [f"<extra_id_{i}>" for i in range(extra_ids)]
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (directory / SPECIAL_TOKENS_MAP).write_text(json.dumps(special, indent=2) + "\n")
    return [target, directory / TOKENIZER_CONFIG, directory / SPECIAL_TOKENS_MAP]

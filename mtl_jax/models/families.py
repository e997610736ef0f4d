"""The one registry of model families: what differs between mT5 and XLM-R outside the modules.

Every tool that needs to know a family (the run assembly, checkpoint records, conversion, the
configuration check) reads it here, so adding a family is one entry. The module and config
classes are imported on first use: ``run_config`` checks family names without loading Flax.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Literal

TaskFormat = Literal["t2t", "cls"]


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its classes, the task format it trains on and its Hugging Face names."""

    name: str  # the TrainConfig.family / checkpoint record value
    display: str  # for messages ("mT5")
    task_format: TaskFormat  # "t2t": encoder-decoder text-to-text; "cls": encoder + task heads
    module: str  # where the classes live
    config_class: str
    model_class: str
    hf_model_types: tuple[str, ...]  # config.json model_type values this family reads
    tokenizer_file: str  # the sentencepiece file name beside an HF checkpoint
    tokenizer_class: str  # transformers tokenizer class written to tokenizer_config.json
    demo_gin: str  # the demo run of this family (for hints in error messages)

    @property
    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config_class)

    @property
    def model_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.model_class)

    @property
    def encoder_decoder(self) -> bool:
        return self.task_format == "t2t"


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("t5", "mT5", "t2t", "mtl_jax.models.t5", "T5Config", "T5Model", ("t5", "mt5"),
               "spiece.model", "T5Tokenizer", "demo_mt5.gin"),
        Family("xlmr", "XLM-R", "cls", "mtl_jax.models.xlmr", "XLMRConfig", "XLMRMultiTask",
               ("xlm-roberta", "roberta", "bert"), "sentencepiece.bpe.model",
               "XLMRobertaTokenizer", "demo_xlmr.gin"),
    )
}  # fmt: skip

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {list(FAMILIES)}")
    return FAMILIES[name]


def family_of_hf_model_type(model_type: Any) -> Family | None:
    """The family that reads an HF ``config.json`` of this ``model_type`` (None: no family)."""
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    return None

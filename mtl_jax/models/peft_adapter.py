"""Write a LoRA model's update as a peft adapter directory that ``peft.PeftModel.from_pretrained``
loads onto the transformers base model.

Files (peft's names): ``adapter_config.json`` (a ``LoraConfig``: ``peft_type`` "LORA",
``task_type``, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``modules_to_save``,
...) and ``adapter_model.safetensors`` with ``base_model.model.<HF module>.lora_A.weight``
``[r, in]`` and ``.lora_B.weight`` ``[out, r]`` (torch ``nn.Linear`` layout), plus the full
weights of every ``modules_to_save`` module as ``base_model.model.<module>.<tensor>``.

Our ``lora_a`` is ``in_features + (r,)`` and ``lora_b`` ``(r,) + out_features``; HF flattens an
attention kernel's ``(heads, kv)`` axes in the same row-major order our reshape uses, so
``A_hf = lora_a.reshape(-1, r).T`` and ``B_hf = lora_b.reshape(r, -1).T`` for every layout the
converters know. The family converters (``hf_t5``, ``hf_xlmr``) supply the HF module names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl_jax.models.lora import LoRAConfig, LoRADense

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"
_PREFIX = "base_model.model."


def lora_tensors(layer: LoRADense) -> tuple[np.ndarray, np.ndarray]:
    """``(lora_A.weight [r, in], lora_B.weight [out, r])`` of one layer as float32 NumPy."""
    a = np.asarray(layer.lora_a[...], np.float32).reshape(-1, layer.rank)
    b = np.asarray(layer.lora_b[...], np.float32).reshape(layer.rank, -1)
    return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)


def target_modules(targeted: Iterable[str], all_modules: Iterable[str]) -> list[str]:
    """peft's ``target_modules``: the short names (``["q", "v"]``) when they select exactly the
    targeted modules of the HF model (peft matches a name or a ``.name`` suffix), else the full
    module names."""
    targeted = sorted(set(targeted))
    leaves = {m.rsplit(".", 1)[-1] for m in targeted}
    selected = {m for m in all_modules if m.rsplit(".", 1)[-1] in leaves}
    return sorted(leaves) if selected == set(targeted) else targeted


def adapter_config(
    lora: LoRAConfig,
    task_type: str,
    targets: Sequence[str],
    base_model: str | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``adapter_config.json`` dict (fields peft's ``LoraConfig`` reads; others default)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": int(lora.rank),
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(targets),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def write_adapter(
    directory: str | Path,
    config: Mapping[str, Any],
    lora_weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
    saved_modules: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write an adapter directory. ``lora_weights``: HF module name -> ``(A [r, in], B [out, r])``;
    ``saved_modules``: HF tensor name -> full weight of a ``modules_to_save`` module."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for module, (a, b) in lora_weights.items():
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = a
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = b
    for name, value in (saved_modules or {}).items():
        tensors[f"{_PREFIX}{name}"] = np.ascontiguousarray(value, np.float32)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    return directory

"""Read and write Hugging Face checkpoint directories as flat NumPy state dicts.

The model-specific converters (``hf_t5``, ``hf_xlmr``) map names and layouts; this module only
knows the files: ``config.json`` plus ``model.safetensors`` (possibly sharded with an index) or
``pytorch_model.bin`` (needs torch, which is only required for that legacy format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an HF checkpoint directory, with a clear error if it is missing."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: expected a Hugging Face model directory")
    return json.loads(path.read_text())


def read_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint as float32/int NumPy arrays keyed by their HF names."""
    directory = Path(directory)
    if (directory / SAFETENSORS_NAME).is_file():
        return _read_safetensors([directory / SAFETENSORS_NAME])
    if (directory / SAFETENSORS_INDEX).is_file():
        index = json.loads((directory / SAFETENSORS_INDEX).read_text())
        files = sorted({directory / f for f in index["weight_map"].values()})
        return _read_safetensors(files)
    if (directory / TORCH_NAME).is_file():
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{directory / TORCH_NAME} is a PyTorch pickle: install torch to read it") from e
        state = torch.load(directory / TORCH_NAME, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX} or {TORCH_NAME}"
    )


def _read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    for file in files:
        # framework="np" cannot decode bfloat16; go through ml_dtypes-aware numpy via flax's own path.
        with safe_open(str(file), framework="np") as f:
            for key in f.keys():
                arr = f.get_tensor(key)
                out[key] = arr.astype(np.float32) if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" else arr
    return out


def write_checkpoint(directory: str | Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (contiguous float32) that ``from_pretrained`` loads."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(arrays, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    return directory

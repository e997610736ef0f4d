"""The classes gin may build, registered once under their plain names (``T5Config.d_model``).

Library code stays gin-free; only the CLIs import this module.
"""

from __future__ import annotations

import gin

from mtl_jax.models.ca_mtl import CAMTLConfig
from mtl_jax.models.lora import LoRAConfig
from mtl_jax.models.t5 import T5Config
from mtl_jax.models.xlmr import XLMRConfig
from mtl_jax.run_config import TrainConfig

for _cls in (T5Config, XLMRConfig, LoRAConfig, CAMTLConfig, TrainConfig):
    gin.external_configurable(_cls, module="mtl_jax")


def train_config() -> TrainConfig:
    """The ``TrainConfig`` the parsed gin files and bindings describe."""
    return gin.get_configurable(TrainConfig)()

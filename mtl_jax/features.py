"""The batch contract between the data layer and everything else.

A batch is a ``dict[str, np.ndarray]`` with these names. The data layer produces them, the
models, trainer and benchmarks consume them; nothing else crosses the boundary, which is what lets
training run on a machine without TensorFlow and lets benchmarks feed synthetic batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Encoder-decoder (mT5), T5X names. Shapes [batch, length], int32 unless noted.
ENCODER_INPUT_TOKENS = "encoder_input_tokens"
DECODER_INPUT_TOKENS = "decoder_input_tokens"  # targets shifted right, 0 (pad) at segment starts
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"  # float32, 1 on real target tokens
# Present only when packed: segment ids start at 1, 0 = padding; positions restart per segment.
ENCODER_SEGMENT_IDS = "encoder_segment_ids"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
ENCODER_POSITIONS = "encoder_positions"
DECODER_POSITIONS = "decoder_positions"

# Encoder classification (XLM-R with per-task heads). Shapes [batch, length] / [batch].
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"  # int32, 1 on real tokens
TOKEN_TYPE_IDS = "token_type_ids"  # optional, zeros for XLM-R
LABELS = "labels"  # int32 class id (float32 for regression tasks, stored in REGRESSION_TARGETS)
REGRESSION_TARGETS = "regression_targets"  # float32, only read for regression heads
# Siamese heads (TrainConfig.siamese_heads): the second sentence encoded on its own, ``<s> b </s>``
# (the first is then ``<s> a </s>`` in input_ids). Present in every batch of a run with a
# siamese head, all padding (mask 0) on the rows of other tasks, so shapes stay static.
PAIR_INPUT_IDS = "pair_input_ids"
PAIR_ATTENTION_MASK = "pair_attention_mask"

# Every example, both formats: index of its task (head) in the run's task list. int32 [batch].
TASK_ID = "task_id"
# Packed encoder-decoder batches carry one task id per segment instead: int32 [batch, length]
# aligned with the decoder segment ids (0 on padding).
DECODER_TASK_IDS = "decoder_task_ids"
# Set by the train step, not the data: each row's index in the effective batch, so per-example
# randomness (R3F noise) does not depend on how the batch is split into micro-batches.
ROW_INDEX = "row_index"

ENC_DEC_FEATURES = (
    ENCODER_INPUT_TOKENS,
    DECODER_INPUT_TOKENS,
    DECODER_TARGET_TOKENS,
    DECODER_LOSS_WEIGHTS,
)
PACKING_FEATURES = (
    ENCODER_SEGMENT_IDS,
    DECODER_SEGMENT_IDS,
    ENCODER_POSITIONS,
    DECODER_POSITIONS,
)
CLASSIFICATION_FEATURES = (INPUT_IDS, ATTENTION_MASK, LABELS, TASK_ID)
SIAMESE_FEATURES = (PAIR_INPUT_IDS, PAIR_ATTENTION_MASK)


def count_real_tokens(batch: Mapping[str, Any]) -> int:
    """Non-padding tokens of a batch (what tokens/s counts): encoder inputs + decoder targets for
    encoder-decoder batches, attended tokens for classification batches."""
    if ENCODER_INPUT_TOKENS in batch:
        return int(np.count_nonzero(batch[ENCODER_INPUT_TOKENS])
                   + np.count_nonzero(batch[DECODER_LOSS_WEIGHTS]))
    pair = np.count_nonzero(batch[PAIR_ATTENTION_MASK]) if PAIR_ATTENTION_MASK in batch else 0
    return int(np.count_nonzero(batch[ATTENTION_MASK]) + pair)

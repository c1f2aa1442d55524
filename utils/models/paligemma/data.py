"""PaliGemma's fine-tune data: the batch collator that puts loss on the answer tokens only.

The rows (``AnswerDataset``: image, prompt in the adapter's ``prompt_format``, answer) and the answer-window loss
are shared with the vlm backend in ``utils.models.finetune.loss`` and re-exported here.

- ``PaliGemmaCollator``: the processor's ``suffix=`` puts the answer after the prompt; only the answer tokens and
  the closing ``<eos>`` carry loss; image, prompt and padding tokens are labelled -100.
- ``answer_window`` / ``answer_loss`` (shared): the full 257k-vocabulary logits of ~1,000 image tokens would not fit
  a T4; the loss needs only the window from the token before the first answer token.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from utils.models.finetune.loss import IGNORE_INDEX, AnswerDataset, answer_loss, answer_window  # noqa: F401

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


class PaliGemmaCollator:
    """Batch (image, prompt, answer) items; labels are the answer tokens + ``<eos>``, everything else -100."""

    def __init__(self, processor: Any, max_length: int | None = None) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [IMAGE_TOKEN + ex["prompt"] for ex in examples]
        batch = self.processor(
            images=[ex["image"] for ex in examples],
            text=texts,
            suffix=[ex["answer"] for ex in examples],
            return_tensors="pt",
            padding="longest",
        )
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        labels = ids.masked_fill((types == 0) | (mask == 0), IGNORE_INDEX)
        # Positions as generate() counts them under left padding (1-based in PaliGemma), so training matches.
        position_ids = mask.long().cumsum(-1).masked_fill(mask == 0, 1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "pixel_values": batch["pixel_values"],
            "position_ids": position_ids,
            "labels": labels,
        }

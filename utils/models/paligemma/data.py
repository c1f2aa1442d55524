"""The fine-tune's data: (image, prompt, answer) rows, the batch collator that puts loss on the answer tokens only,
and the answer-window loss that needs logits for the last few positions only.

- ``AnswerDataset``: rows read lazily from the image cache (``utils.data.images``), prompts from
  ``utils.data.tables.make_prompt`` in the adapter's ``prompt_format`` (the one prompt, shared with inference); rows without an image are dropped.
- ``PaliGemmaCollator``: the processor's ``suffix=`` puts the answer after the prompt; only the answer tokens and
  the closing ``<eos>`` carry loss; image, prompt and padding tokens are labelled -100.
- ``answer_window`` / ``answer_loss``: the full 257k-vocabulary logits of ~1,000 image tokens would not fit a T4;
  the loss needs only the window from the token before the first answer token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from utils.data.images import cached_image, load_image
from utils.data.tables import make_prompt

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100


class AnswerDataset(torch.utils.data.Dataset):
    """Rows as (image, prompt, answer); images are read lazily, rows whose image file is missing are dropped."""

    def __init__(self, rows: pd.DataFrame, image_dir: str | Path, max_side: int | None = None,
                 prompt_format: str = "question") -> None:
        missing_cols = {"image_link", "entity_name", "entity_value"} - set(rows.columns)
        if missing_cols:
            raise ValueError(f"training rows lack column(s) {sorted(missing_cols)}")
        self.image_dir = Path(image_dir)
        self.max_side = max_side
        paths = [cached_image(self.image_dir, u) for u in rows["image_link"]]
        keep = [p is not None and p.is_file() for p in paths]
        self.n_missing = len(keep) - sum(keep)
        if self.n_missing:
            log.warning("%d of %d rows have no image in %s; they are skipped", self.n_missing, len(keep), image_dir)
        kept = rows[keep]
        self.paths = [p for p, k in zip(paths, keep) if k]
        self.prompts = [make_prompt(e, prompt_format) for e in kept["entity_name"]]
        self.answers = ["" if pd.isna(v) else str(v).strip() for v in kept["entity_value"]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        for k in range(len(self.paths)):  # an undecodable file: take the next row instead of crashing
            j = (i + k) % len(self.paths)
            image = load_image(self.paths[j], self.max_side)
            if image is not None:
                return {"image": image, "prompt": self.prompts[j], "answer": self.answers[j]}
            log.warning("cannot decode %s; using another row", self.paths[j])
        raise RuntimeError(f"no decodable image among {len(self.paths)} rows in {self.image_dir}")


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


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions' logits are needed: from the token before the first labelled one to the end."""
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return 1
    first = labelled.float().argmax(dim=1)  # first labelled column per row (0 for rows with none)
    first = torch.where(labelled.any(dim=1), first, torch.full_like(first, labels.shape[1] - 1))
    return int(labels.shape[1] - first.min().item() + 1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` cover the last ``logits.shape[1]`` positions of ``labels``."""
    keep = logits.shape[1]
    target = labels[:, labels.shape[1] - keep + 1 :]
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1).to(pred.device), ignore_index=IGNORE_INDEX
    )



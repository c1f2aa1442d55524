"""The fine-tune's rows and loss, for any backend that trains a decoder on (image, prompt, answer) rows:

- ``AnswerDataset``: rows read lazily from the image cache, prompts from ``utils.data.tables.make_prompt`` (the one
  prompt, shared with inference); rows without an image file are dropped, an undecodable one is replaced.
- ``answer_window`` / ``answer_loss``: a 150k-260k-word vocabulary's logits over hundreds of image tokens would not
  fit a T4; the loss needs only the window from the token before the first answer token.

(The same as ``utils.models.paligemma.data``'s pieces, written for every backend; that module can import them from
here once it is free to change.)
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


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions' logits are needed: from the token before the first labelled one to the end."""
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return 1
    first = labelled.float().argmax(dim=1)
    first = torch.where(labelled.any(dim=1), first, torch.full_like(first, labels.shape[1] - 1))
    return int(labels.shape[1] - first.min().item() + 1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` cover the last ``logits.shape[1]`` positions of ``labels``."""
    keep = logits.shape[1]
    target = labels[:, labels.shape[1] - keep + 1:]
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1).to(pred.device),
                                             ignore_index=IGNORE_INDEX)

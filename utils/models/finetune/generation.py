"""What the fine-tuned backends' answering shares: the answer length cap and the file a fit saves it in, what a
generation that overflowed raises, and the count of generations cut at ``max_new_tokens``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MAX_NEW_TOKENS_LIMIT = 128  # a generous cap: real labels are up to ~30 tokens (ranges, long decimals)
GENERATION_FILE = "generation.json"  # saved beside an adapter by fit: {"max_new_tokens": N, ...}


class NonFiniteError(FloatingPointError):
    """Logits or the loss became NaN/inf (float16 overflow); the message names the remedies."""


FP16_REMEDY = ("float16 overflowed (its range ends at 65,504; random or tiny models never show it). Remedies: "
               "dtype='bfloat16' with allow_emulated_bf16=True (exact range, several times slower on a T4), or "
               "dtype='float32' (twice the memory; inference only on a 16 GB T4), or a lower learning_rate if it "
               "happened during training")


@dataclass
class GenerationStats:
    """What generation did so far: rows answered, generations cut at ``max_new_tokens`` (no end of the answer)."""

    rows: int = 0
    truncated: int = 0
    max_new_tokens: int = 0

    def note(self) -> str | None:
        """A warning line when some answers may be cut, else None."""
        if not self.truncated:
            return None
        return (f"{self.truncated} of {self.rows} generations hit max_new_tokens={self.max_new_tokens} without "
                "ending: their answers may be cut (raise max_new_tokens)")


def saved_max_new_tokens(artifact_dir: str | Path) -> int:
    """The answer length a fit saved beside its artifact (``GENERATION_FILE``), or 0 when there is none."""
    try:
        return int(json.loads((Path(artifact_dir) / GENERATION_FILE).read_text())["max_new_tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0

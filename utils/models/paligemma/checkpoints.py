"""Moved to ``utils.models.finetune.checkpoints`` (shared with the vlm backend); this name stays for existing imports."""

from utils.models.finetune.checkpoints import *  # noqa: F401,F403

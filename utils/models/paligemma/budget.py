"""Moved to ``utils.models.finetune.budget`` (shared with the vlm backend); this name stays for existing imports."""

from utils.models.finetune.budget import *  # noqa: F401,F403

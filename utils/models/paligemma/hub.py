"""Moved to ``utils.models.finetune.hub`` (shared with the vlm backend); this name stays for existing imports."""

from utils.models.finetune.hub import *  # noqa: F401,F403

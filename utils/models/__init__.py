"""The models: the one backend interface (``utils.models.backend``) and its two implementations,
``utils.models.paligemma`` (PaliGemma + LoRA) and ``utils.models.ocr`` (rapidocr + a learned ranker).
Depends on ``utils.data``, ``utils.core`` and ``utils.env``."""

"""The ``paligemma`` backend: ``load`` (settings, dtype per device, quantisation, LoRA, adapters), ``hub`` (where the
weights come from), ``data`` (dataset, collator, answer-window loss), ``train`` (the fine-tune), ``checkpoints`` and
``budget`` (resume and time budget), ``infer`` (batched generation), ``backend`` (the Backend), ``tiny`` (a tiny
local PaliGemma for tests and offline demos)."""

"""The chat VLM's data: the one user turn (the image and the prompt of ``utils.data.tables.make_prompt``) through the
model's own chat template, and a collator that puts the loss on the assistant's answer tokens only.

The prompt ids are exactly what generation sees (the processor on the templated user turn with
``add_generation_prompt``); the answer follows as the tokenised ``answer + end_of_turn`` (the template's own closing
token, read from the template: ``<|im_end|>`` for Qwen, ``<end_of_utterance>`` for Idefics3), labelled; everything
else (system turn, image tokens, prompt, padding) is -100. Rows are padded on the left, like generation's batches.
"""

from __future__ import annotations

from typing import Any

import torch

from utils.models.finetune.loss import IGNORE_INDEX

#: Inputs the processor returns that go to the model as they are (besides input_ids and attention_mask).
IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes")
_MARK = "\x00ANSWER\x00"


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """The chat messages of one question: an image and the prompt text, from the user."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def chat_prompt(processor: Any, prompt: str) -> str:
    """The templated user turn with the assistant's turn opened (what the model continues)."""
    return processor.apply_chat_template(user_turn(prompt), add_generation_prompt=True, tokenize=False)


def end_of_turn(processor: Any) -> str:
    """The text the chat template closes an assistant turn with, up to its first whitespace (``<|im_end|>``)."""
    messages = user_turn("q") + [{"role": "assistant", "content": [{"type": "text", "text": _MARK}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    after = text.split(_MARK, 1)[1]
    return after.strip().split("\n")[0].split(" ")[0] if after.strip() else processor.tokenizer.eos_token


def stop_token_ids(processor: Any) -> list[int]:
    """Token ids that end an answer: the turn's closing token (when it is one token) and the tokenizer's eos."""
    tok = processor.tokenizer
    ids = tok(end_of_turn(processor), add_special_tokens=False)["input_ids"]
    out = [ids[0]] if len(ids) == 1 else []
    if tok.eos_token_id is not None and tok.eos_token_id not in out:
        out.append(tok.eos_token_id)
    return out


def encode_prompts(processor: Any, images: list[Any], prompts: list[str]) -> dict[str, torch.Tensor]:
    """The processor's batch for generation: templated prompts, one image each, left padded."""
    texts = [chat_prompt(processor, p) for p in prompts]
    return processor(images=[[im] for im in images], text=texts, return_tensors="pt", padding=True)


class ChatCollator:
    """Batch (image, prompt, answer) items into model inputs with ``labels`` on ``answer + end_of_turn`` only."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.end = end_of_turn(processor)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        batch = encode_prompts(self.processor, [ex["image"] for ex in examples], [ex["prompt"] for ex in examples])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows, labels = [], []
        for r, ex in enumerate(examples):
            prompt = ids[r][mask[r] == 1].tolist()
            answer = tok(ex["answer"] + self.end, add_special_tokens=False)["input_ids"]
            rows.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out = {
            "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
            "labels": torch.tensor([[IGNORE_INDEX] * (width - len(lab)) + lab for lab in labels]),
        }
        if "mm_token_type_ids" in batch:  # Qwen3-VL / newer Qwen processors: 1 on image tokens
            image_id = getattr(self.processor, "image_token_id", None)
            out["mm_token_type_ids"] = (out["input_ids"] == image_id).long()
        out.update({k: batch[k] for k in IMAGE_INPUTS if k in batch})
        return out

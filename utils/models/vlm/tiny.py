"""Tiny chat VLMs built locally from each family's config (random weights, a small trained tokenizer, the family's
chat template): Qwen2-VL and Idefics3 (the SmolVLM v1 architecture), for tests, benches and offline demos.

Each is saved with ``save_pretrained`` into a folder that loads through exactly the same ``AutoProcessor`` /
``AutoModelForImageTextToText`` path as the real hub model (``utils.models.vlm.load``), so fine-tuning and answering
are proven without a download or a GPU. No hub access: the configs are written here and the tokenizer is trained on
a few lines of prompts, units and numbers (byte-level, so any text encodes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FAMILIES = ("qwen2_vl", "idefics3")

# Each family's chat template, as its hub processor carries it (Qwen2-VL's without the default system turn).
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}{% if message['content'] is string %}"
    "{{ ': ' + message['content'] }}{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}"
    "{{ ': ' }}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")
IDEFICS3_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                    "<global-img>")


def _corpus() -> list[str]:
    """Prompts for every entity, units in full and abbreviated, numbers: what the tiny tokenizer should know."""
    from utils.core.units import ENTITY_UNIT_MAP
    from utils.data.tables import make_prompt

    units = sorted({u for us in ENTITY_UNIT_MAP.values() for u in us})
    short = "g kg mg mcg oz lb lbs cm mm m in ft yd V kV mV W kW l L ml mL cl fl".split()
    lines = [make_prompt(e) for e in sorted(ENTITY_UNIT_MAP)] + [" ".join(units), " ".join(short)]
    lines += [f"{n} {u}" for n in ("0", "1", "12", "7.5", "500", "0.25", "1000") for u in units + short]
    return lines + ["Assistant: User: system user assistant [ ] - x / ( ) % . ,"]


def train_tokenizer(special: tuple[str, ...], vocab_size: int = 500):
    """A byte-level BPE tokenizer (as Qwen's and SmolVLM's are) trained on prompts, units and numbers."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    raw.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size + len(special), special_tokens=list(special), show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=special[0], pad_token=special[0],
                                  unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": list(special[1:])})
    return tok


def _vision(family: str, image_size: int) -> dict:
    if family == "qwen2_vl":
        return dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=8)


def _text(vocab: int, tok, output_gain: float) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False)


def build_tiny_vlm(out_dir: str | Path, family: str = "qwen2_vl", image_size: int | None = None, seed: int = 0,
                   output_gain: float = 8.0) -> Path:
    """Build a tiny ``family`` VLM (model, processor with its chat template) and ``save_pretrained`` both into
    ``out_dir``; returns it. ``image_size``: Qwen2-VL's pixel budget is ``image_size**2`` (its processor resizes to
    multiples of 28: 56 px -> 4 image tokens); Idefics3's square input (8-px patches, merged 2 x 2)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    image_size = image_size or (56 if family == "qwen2_vl" else 64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil, Qwen2VLProcessor

        tok = train_tokenizer(QWEN_SPECIAL)
        images = Qwen2VLImageProcessorPil(min_pixels=image_size * image_size, max_pixels=image_size * image_size)
        from utils.models.vlm.load import images_only_processor

        processor = images_only_processor(Qwen2VLProcessor, images, tok, QWEN_TEMPLATE)
        vocab = -(-len(tok) // 64) * 64
        text = _text(vocab, tok, output_gain)
        config = Qwen2VLConfig(text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
                               vision_config=_vision(family, image_size),
                               image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
                               tie_word_embeddings=False)
        end_of_turn = "<|im_end|>"
    else:
        from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

        tok = train_tokenizer(IDEFICS3_SPECIAL)
        images = Idefics3ImageProcessorPil(size={"longest_edge": image_size},
                                           max_image_size={"longest_edge": image_size}, do_image_splitting=False)
        seq = (image_size // 8) ** 2 // 4
        processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=seq,
                                      chat_template=IDEFICS3_TEMPLATE)
        vocab = -(-len(tok) // 64) * 64
        config = Idefics3Config(text_config={**_text(vocab, tok, output_gain), "model_type": "llama"},
                                vision_config=_vision(family, image_size), scale_factor=2,
                                image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id,
                                tie_word_embeddings=False)
        end_of_turn = "<end_of_utterance>"
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    with torch.no_grad():  # a random 64-wide model's logits span about +-1: LoRA alone could never make them sure
        model.get_output_embeddings().weight.mul_(output_gain)
    eot = tok.convert_tokens_to_ids(end_of_turn)
    model.generation_config.eos_token_id = [eot, tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    save_processor(processor, out)
    (out / "tiny_config.json").write_text(json.dumps({"family": family, "image_size": image_size, "seed": seed}))
    return out


def save_processor(processor, out: Path) -> None:
    """``save_pretrained`` of the processor, or of its image processor and tokenizer (with the chat template) where
    a processor without a video processor cannot save itself (no torchvision)."""
    try:
        processor.save_pretrained(out)
    except Exception:  # noqa: BLE001 - the parts load back through utils.models.vlm.load.load_processor
        processor.tokenizer.chat_template = processor.chat_template
        processor.image_processor.save_pretrained(out)
        processor.tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m utils.models.vlm.tiny OUT_DIR [--family qwen2_vl|idefics3]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args(argv)
    print(f"tiny {args.family} saved to {build_tiny_vlm(args.out_dir, args.family, args.image_size)}")


if __name__ == "__main__":
    main()

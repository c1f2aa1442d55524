"""A tiny PaliGemma built locally (random weights, a small trained tokenizer) for tests, benches and offline demos.

It is saved with ``save_pretrained`` into a folder that loads through exactly the same ``from_pretrained`` code path
as the real hub model (``utils.models.paligemma.load.load_base_model`` / ``load_processor``), so every training and
inference step of the project can be proven without a download or a GPU. The architecture is PaliGemma's own (SigLIP
vision tower, linear projector, Gemma decoder), only much smaller.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.models.finetune.memorise import (  # noqa: F401  (re-exported: tests, benches)
    SYNTHETIC_ANSWERS,
    make_synthetic_set,
    render_text_image,
)

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4, as GemmaTokenizer expects
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))  # byte fallback: any text encodes, nothing is <unk>

# Words the tiny tokenizer should know: prompts, entity names, units and their usual abbreviations.
_UNITS = (
    "gram kilogram microgram milligram ounce pound ton centimetre foot inch metre millimetre yard kilovolt "
    "millivolt volt kilowatt watt centilitre cubic foot inch cup decilitre fluid ounce gallon imperial litre "
    "microlitre millilitre pint quart g kg mg mcg oz lb lbs cm mm m in ft yd V kV mV W kW l L ml mL cl fl "
)
_ENTITIES = (
    "item_weight width depth height voltage wattage item_volume maximum_weight_recommendation "
    "item weight item volume maximum weight recommendation"
)


@dataclass
class TinyConfig:
    """Dimensions of the tiny PaliGemma (defaults: fast enough for unit tests on one CPU core)."""

    image_size: int = 32  # pixels per side; the processor resizes every image to this
    patch_size: int = 8  # (image_size // patch_size) ** 2 image tokens
    vision_hidden: int = 64  # every Linear input >= 64: bitsandbytes CPU 4-bit blocks are 64 wide
    vision_layers: int = 1
    vision_heads: int = 2
    vision_intermediate: int = 128
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 1
    text_head_dim: int = 32  # k/v outputs >= 32: bitsandbytes CPU packs 32 rows
    text_intermediate: int = 128
    tokenizer_vocab: int = 600  # BPE vocabulary before the byte, image and loc/seg tokens are added
    # Gain of the decoder's final RMSNorm. With it at the usual 1 a random 64-wide model's logits (tied to
    # 0.02-std embeddings) span only about ±1, so LoRA, which never touches the norm or the embeddings, cannot make
    # any answer confident; real PaliGemma's weights are trained. A fixed gain only rescales the logits.
    output_gain: float = 16.0
    seed: int = 0

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image, as the processor and the model both count them."""
        return (self.image_size // self.patch_size) ** 2


def _corpus(extra_text: Iterable[str] = ()) -> list[str]:
    """Training text for the tiny tokenizer: prompts, unit words, numbers and any extra text given."""
    try:
        from utils.data.tables import PROMPT_FORMATS, make_prompt

        prompts = [make_prompt(e, f) for e in _ENTITIES.split()[:8] for f in PROMPT_FORMATS]
    except Exception:  # utils.data.tables not importable: the tokenizer still covers the words
        prompts = [f"What is the {e}?" for e in _ENTITIES.split()[:8]]
    lines = prompts + [_UNITS, _ENTITIES, "What is the ? . , [ ] - x × / ( ) %"]
    lines += [f"{n} {u}" for n in ("0", "1", "12", "7.5", "500", "0.25", "1000") for u in _UNITS.split()]
    lines += list(extra_text)
    return lines


def train_tokenizer(vocab_size: int = 600, extra_text: Iterable[str] = ()):
    """Train a small Gemma-style BPE tokenizer (byte fallback, single digits) and wrap it as ``GemmaTokenizer``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import GemmaTokenizer

    raw = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    raw.normalizer = normalizers.Replace(" ", "▁")
    # Digits stay single tokens, like Gemma's vocabulary; "▁" starts a word, as in GemmaTokenizer.
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern="▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size + len(SPECIAL_TOKENS) + len(BYTE_TOKENS),
        special_tokens=[*SPECIAL_TOKENS, *BYTE_TOKENS],
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(extra_text), trainer=trainer)
    merges = json.loads(raw.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return GemmaTokenizer(vocab=raw.get_vocab(), merges=merges)


def build_processor(cfg: TinyConfig, extra_text: Iterable[str] = ()):
    """The PaliGemma processor: the tiny tokenizer plus a PIL-backed SigLIP image processor (no torchvision)."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil

    tokenizer = train_tokenizer(cfg.tokenizer_vocab, extra_text)
    image_processor = SiglipImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size})
    image_processor.image_seq_length = cfg.num_image_tokens
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(cfg: TinyConfig, vocab_size: int, image_token_id: int, pad_token_id: int = 0):
    """A randomly initialised PaliGemmaForConditionalGeneration with the tiny dimensions."""
    import torch
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_intermediate,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_use_head=False,
    )
    text = GemmaConfig(
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        head_dim=cfg.text_head_dim,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=2,
        eos_token_id=1,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vocab_size=vocab_size,
        projection_dim=cfg.text_hidden,
        hidden_size=cfg.text_hidden,
        pad_token_id=pad_token_id,
        bos_token_id=2,
        eos_token_id=1,
    )
    torch.manual_seed(cfg.seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():  # Gemma's RMSNorm multiplies by (1 + weight)
        model.model.language_model.norm.weight.fill_(cfg.output_gain - 1.0)
    return model


def build_tiny_paligemma(
    out_dir: str | Path, cfg: TinyConfig | None = None, extra_text: Iterable[str] = ()
) -> Path:
    """Build the tiny PaliGemma (model + processor) and ``save_pretrained`` both into ``out_dir``; returns it."""
    cfg = cfg or TinyConfig()
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(cfg, extra_text)
    tokenizer = processor.tokenizer
    vocab_size = -(-len(tokenizer) // 64) * 64  # rounded up like the real model's 257216
    model = build_model(cfg, vocab_size, processor.image_token_id, tokenizer.pad_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tiny_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m utils.tiny_model OUT_DIR [--image-size N]`` builds and saves the tiny model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=TinyConfig.image_size)
    parser.add_argument("--patch-size", type=int, default=TinyConfig.patch_size)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_paligemma(
        args.out_dir, TinyConfig(image_size=args.image_size, patch_size=args.patch_size, seed=args.seed)
    )
    print(f"tiny PaliGemma saved to {path}")


if __name__ == "__main__":
    main()

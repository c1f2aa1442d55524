"""The tiny PaliGemma: built locally, saved, and loaded back through the same code path as the hub model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.core.units import ENTITIES
from utils.data.images import image_path, load_image
from utils.data.tables import make_prompt
from utils.models.paligemma.load import ModelConfig, load_base_model, load_processor
from utils.models.paligemma.tiny import TinyConfig, build_tiny_paligemma, main, make_synthetic_set, render_text_image


def test_saved_folder_loads_through_the_project_loaders(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    model = load_base_model(ModelConfig(model_id=str(tiny_dir), quantization="none"))
    cfg = TinyConfig()
    assert type(processor).__name__ == "PaliGemmaProcessor"
    assert type(processor.image_processor).__name__ == "SiglipImageProcessorPil"  # no torchvision needed
    assert processor.image_seq_length == cfg.num_image_tokens == 16
    assert processor.tokenizer.padding_side == "left"
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)
    assert model.config.vision_config.image_size == cfg.image_size
    saved = json.loads((tiny_dir / "tiny_config.json").read_text())
    assert saved["image_size"] == cfg.image_size


def test_tokenizer_has_gemma_specials_and_no_unknowns(tiny_dir: Path) -> None:
    tok = load_processor(tiny_dir).tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    assert tok.convert_tokens_to_ids("<loc0123>") != tok.unk_token_id  # PaliGemma's extra tokens exist
    for text in [make_prompt(e) for e in ENTITIES] + ["7.5 kg", "1,200 W é ½", "[100.0, 240.0] volt"]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, text  # byte fallback covers anything
        assert tok.decode(ids) == text
    assert tok.tokenize("500 gram")[:3] == ["5", "0", "0"]  # digits stay single tokens, like Gemma's


def test_forward_and_generate_shapes(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    model = load_base_model(ModelConfig(model_id=str(tiny_dir), quantization="none"))
    images = [render_text_image("12 V"), render_text_image("30 cm", size=50)]
    batch = processor(images=images, text=["<image>" + make_prompt("voltage"), "<image>" + make_prompt("width")],
                      return_tensors="pt", padding="longest")
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 2 * 16
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= batch["input_ids"].shape[1] + 3


def test_rendered_images_differ_and_land_where_the_loader_looks(tmp_path: Path) -> None:
    a, b = np.asarray(render_text_image("500 g")), np.asarray(render_text_image("12 V"))
    assert a.shape == (96, 96, 3) and (a < 100).any()  # dark text on a light background
    assert (a != b).any()
    rows = make_synthetic_set(tmp_path, size=48)
    assert len(rows) == 16 and rows["index"].is_unique
    assert set(rows["entity_name"]) <= set(ENTITIES)
    for url in rows["image_link"]:
        im = load_image(image_path(tmp_path / "images", url))
        assert im is not None and im.size == (48, 48)


def test_cli_builds_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "m"), "--image-size", "16", "--patch-size", "8"])
    assert "saved" in capsys.readouterr().out
    assert load_processor(tmp_path / "m").image_seq_length == 4
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_tiny_paligemma(tmp_path / "bad", TinyConfig(image_size=30, patch_size=8))

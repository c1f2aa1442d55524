"""utils.models.paligemma.load: settings validation, dtype per device, BitsAndBytes config, LoRA, 4-bit path, adapters, merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utils.data.tables import make_prompt
from utils.models.paligemma import load as M
from utils.models.paligemma.load import (
    LORA_TARGETS,
    ModelConfig,
    bnb_config,
    load_base_model,
    load_for_inference,
    load_processor,
    lora_config,
    prepare_for_training,
    read_settings,
    resolve_dtype,
    save_adapter,
)
from utils.models.paligemma.tiny import render_text_image

from . import fake_gpu as fake_gpu_module


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend one CUDA GPU is present, at torch's own seam; the setter picks a T4 (7.5) or an A100 (8.0)."""
    def choose(native_bf16: bool) -> None:
        fake_gpu_module.install(monkeypatch.setattr, [fake_gpu_module.A100 if native_bf16 else fake_gpu_module.T4])

    choose(False)
    return choose


def _batch(processor, n: int = 2):
    images = [render_text_image(t) for t in ("500 g", "12 V", "30 cm")[:n]]
    prompts = ["<image>" + make_prompt(e) for e in ("item_weight", "voltage", "width")[:n]]
    batch = processor(images=images, text=prompts, return_tensors="pt", padding="longest")
    batch.pop("labels", None)  # the processor adds all -100 labels for backward compatibility
    return batch


# ------------------------------------------------------------------------------------------ settings and dtypes


def test_dtype_per_device(fake_gpu) -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    fake_gpu(False)  # T4: compute capability 7.5, no bf16
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert ModelConfig(device="cuda").torch_dtype == torch.float16
    fake_gpu(True)  # A100/H100/L4
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16


def test_bf16_on_a_gpu_without_bf16_is_a_clear_error(fake_gpu) -> None:
    fake_gpu(False)
    with pytest.raises(ValueError, match=r"bfloat16.*not supported on Tesla T4"):
        ModelConfig(dtype="bfloat16")
    fake_gpu(True)
    assert ModelConfig(dtype="bfloat16").torch_dtype == torch.bfloat16


def test_cpu_defaults_and_bad_settings_rejected() -> None:
    cfg = ModelConfig()
    assert cfg.torch_device.type == "cpu" and cfg.torch_dtype == torch.float32
    assert cfg.model_id == "google/paligemma-3b-ft-docvqa-448" and cfg.quantization == "4bit"
    for bad in ({"quantization": "nf4"}, {"dtype": "half"}, {"lora_r": 0}, {"lora_dropout": 1.0},
                {"lora_targets": ()}, {"model_id": ""}, {"dtype": "float16"}):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ModelConfig(device="cuda")


def test_bnb_config_carries_the_compute_dtype_under_the_real_key(fake_gpu) -> None:
    fake_gpu(False)
    q = bnb_config(ModelConfig(device="cuda"))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == torch.float16
    assert q.to_dict()["bnb_4bit_compute_dtype"] == "float16"  # what bitsandbytes actually reads
    assert "bnb_4bit_compute_type" not in q.to_dict()
    fake_gpu(True)
    assert bnb_config(ModelConfig(device="cuda")).bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(ModelConfig(quantization="8bit")).load_in_8bit
    assert bnb_config(ModelConfig(quantization="none")) is None


def test_lora_defaults_follow_the_reference() -> None:
    lc = lora_config(ModelConfig())
    assert lc.r == 8 and lc.task_type == "CAUSAL_LM"
    assert set(LORA_TARGETS) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(("lora_vision", "vision_expected"), [
    ("qkv", {"q_proj", "k_proj", "v_proj"}),  # what the reference's name list matched in SigLIP
    ("none", set()),
    ("all", {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}),
])
def test_lora_on_the_vision_tower_is_an_explicit_setting(tiny_dir: Path, lora_vision: str,
                                                        vision_expected: set[str]) -> None:
    cfg = ModelConfig(model_id=str(tiny_dir), quantization="none", lora_vision=lora_vision)
    model = prepare_for_training(load_base_model(cfg), cfg)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    vision = {n.rsplit(".", 1)[-1] for n in adapted if ".vision_tower." in n}
    language = {n.rsplit(".", 1)[-1] for n in adapted if ".language_model." in n}
    assert vision == vision_expected
    assert language == set(LORA_TARGETS)
    assert not any("multi_modal_projector" in n for n in adapted)
    with pytest.raises(ValueError, match="lora_vision"):
        ModelConfig(lora_vision="some")


def test_split_settings_routes_names_and_rejects_unknown() -> None:
    from utils.models.paligemma.infer import InferConfig
    from utils.models.settings import split as split_settings

    m, i = split_settings({"lora_r": 4, "batch_size": 2}, ModelConfig, InferConfig)
    assert m == {"lora_r": 4} and i == {"batch_size": 2}
    with pytest.raises(TypeError, match="lora_rank"):
        split_settings({"lora_rank": 4}, ModelConfig, InferConfig)


# ------------------------------------------------------------------------------------------ the model itself


def test_prepare_for_training_makes_only_lora_trainable(tiny_dir: Path) -> None:
    cfg = ModelConfig(model_id=str(tiny_dir), quantization="none")
    model = prepare_for_training(load_base_model(cfg), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for target in ("q_proj", "o_proj", "gate_proj", "down_proj"):
        assert any(f"{target}.lora_A" in n for n in trainable), target
    assert model.base_model.model.is_gradient_checkpointing


def test_4bit_path_trains_and_generates_on_cpu(tiny_dir: Path) -> None:
    import bitsandbytes as bnb

    cfg = ModelConfig(model_id=str(tiny_dir), quantization="4bit")
    base = load_base_model(cfg)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    model = prepare_for_training(base, cfg)
    processor = load_processor(tiny_dir)
    batch = _batch(processor)
    labels = batch["input_ids"].clone()
    labels[:, :-2] = -100
    model.train()
    out = model(**batch, labels=labels)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    gen = model.generate(**_batch(processor), max_new_tokens=2, do_sample=False)
    assert gen.shape[0] == 2


def _nontrivial_adapter(tiny_dir: Path, out: Path) -> tuple[Path, torch.Tensor]:
    """An adapter with random (non-zero) LoRA weights saved to ``out``; returns it and the peft model's logits."""
    cfg = ModelConfig(model_id=str(tiny_dir), quantization="none", gradient_checkpointing=False)
    model = prepare_for_training(load_base_model(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    processor = load_processor(tiny_dir)
    with torch.no_grad():
        logits = model(**_batch(processor)).logits
    return save_adapter(model, processor, cfg, out), logits


def test_save_load_and_merge_adapter_reproduce_the_trained_model(tiny_dir: Path, tmp_path: Path) -> None:
    adapter, expected = _nontrivial_adapter(tiny_dir, tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert read_settings(adapter)["model_id"] == str(tiny_dir)
    processor = load_processor(adapter)  # the processor travels with the adapter
    batch = _batch(processor)
    cfg = ModelConfig(model_id=str(tiny_dir), quantization="none")
    with torch.no_grad():
        base = load_for_inference(cfg, None)(**batch).logits
        unmerged = load_for_inference(cfg, adapter, merge=False)
        merged = load_for_inference(cfg, adapter, merge=True)
        got_unmerged = unmerged(**batch).logits
        got_merged = merged(**batch).logits
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # folded into the weights
    assert any("lora_" in n for n, _ in unmerged.named_parameters())
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got_unmerged, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_merged, expected, atol=1e-4, rtol=1e-4)
    assert not merged.training


def test_load_for_inference_without_an_adapter_folder_fails_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_for_inference(ModelConfig(model_id=str(tiny_dir), quantization="none"), tmp_path)
    with pytest.raises(ValueError, match="quantization"):
        load_base_model(ModelConfig(model_id=str(tiny_dir)), quantization="2bit")
    assert M.is_adapter_dir(tmp_path) is False

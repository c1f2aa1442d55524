"""Chat VLM loading: processor (chat template, image token budget, left padding), base model through
``AutoModelForImageTextToText`` (quantisation, dtype per device), LoRA on the language model, adapters, merging.

One code path for every family transformers serves through the image-text-to-text interface: the Qwen2-VL family
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and Idefics3 / SmolVLM. What differs between families is read from the processor
(its chat template, its image processor's size keys) and the module names (LoRA goes on the decoder's projections,
found by name, never inside the vision tower).

``VlmModelConfig`` holds the settings; the image token budget is ``min_pixels`` / ``max_pixels`` (Qwen's names:
an image is resized so its area lies between them; Qwen2-VL spends one token per 28 x 28 pixels, so the default
401,408 = 512 x 28 x 28 is at most 512 image tokens). For Idefics3 the budget sets the longest side (its square root).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.models.finetune.device import check_dtype, resolve_device, resolve_dtype

DEFAULT_MODEL_ID = "Qwen/Qwen2-VL-2B-Instruct"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Module-name parts of the vision towers: no LoRA inside them (Qwen: visual; Idefics3/SmolVLM: vision_model).
VISION_PARTS = ("visual", "vision_tower", "vision_model", "vision_encoder")
QUANTIZATIONS = ("4bit", "8bit", "none")
SETTINGS_FILE = "vlm_settings.json"  # the VlmModelConfig an adapter was trained with, saved beside it
DEFAULT_MAX_PIXELS = 512 * 28 * 28
DEFAULT_MIN_PIXELS = 64 * 28 * 28


@dataclass
class VlmModelConfig:
    """How to build the chat VLM. Field names are ``**settings`` of the vlm backend's fit and predict."""

    model_id: str = field(default=DEFAULT_MODEL_ID, metadata={
        "help": "Hub id or local folder of a chat VLM served by AutoModelForImageTextToText (Qwen2-VL, Qwen2.5-VL, "
                "Qwen3-VL, SmolVLM/Idefics3, ...); default Qwen2-VL-2B-Instruct (fp16 LoRA fits a T4)."})
    quantization: str = field(default="none", metadata={
        "help": "Base weights for training: 'none' (fp16/bf16: a 2B model on a T4), '4bit' (NF4: 7-8B models on a "
                "T4) or '8bit'."})
    dtype: str = field(default="auto", metadata={
        "help": "Compute dtype: 'auto' (bf16 if the GPU has it, fp16 on a T4, fp32 on CPU) or explicit."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda[:N]'."})
    double_quant: bool = field(default=True, metadata={"help": "Nested 4-bit quantisation (saves ~0.4 bit/param)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, 0 <= p < 1."})
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS, metadata={
        "help": "Projection names in the language model that get LoRA adapters (never the vision tower's)."})
    min_pixels: int = field(default=DEFAULT_MIN_PIXELS, metadata={
        "help": "Smallest image area after resizing (Qwen: 28 x 28 pixels per image token)."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "Largest image area after resizing: the image token budget, which sets speed and memory (default "
                "512 x 28 x 28: at most 512 Qwen image tokens; Idefics3: the square root is the longest side)."})
    allow_emulated_bf16: bool = field(default=False, metadata={
        "help": "Accept dtype='bfloat16' on a GPU without native bf16 (a T4): emulated, several times slower."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "Recompute activations in the backward pass (memory for speed)."})
    attn_implementation: str | None = field(default="sdpa", metadata={
        "help": "Attention kernel: 'sdpa', 'eager', or None for the library default."})

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if not self.model_id:
            raise ValueError("model_id must name a hub model or a local folder")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        check_dtype(self.dtype, resolve_device(self.device), self.allow_emulated_bf16)
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_r must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1)")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


# ----------------------------------------------------------------------------------------------------- processor


def images_only_processor(cls: type, image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
    """``cls(image_processor, tokenizer, video_processor=None)``: Qwen's processors in transformers 5.23 also hold a
    video processor, which needs torchvision; this backend sends images only, so on a machine without torchvision
    the processor is made without it (the class's own ``__call__`` and chat template, nothing else changes)."""

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                      chat_template=chat_template)


def _load_processor_parts(model_id: str) -> Any:
    """The processor assembled from its image processor and tokenizer (``images_only_processor``)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from utils.models.finetune.hub import from_source

    config = from_source(AutoConfig, model_id)
    name = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}.get(
        config.model_type)
    if name is None:
        raise ValueError(f"{model_id}: its processor needs torchvision (pip install torchvision matching torch)")
    tokenizer = from_source(AutoTokenizer, model_id)
    images = from_source(AutoImageProcessor, model_id)
    return images_only_processor(getattr(transformers, name), images, tokenizer, tokenizer.chat_template)


def set_pixel_budget(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Resize every image to an area within ``[min_pixels, max_pixels]`` (Qwen), or to a longest side of
    ``sqrt(max_pixels)`` without splitting into tiles (Idefics3 / SmolVLM)."""
    images = processor.image_processor
    size = dict(getattr(images, "size", None) or {})
    if hasattr(images, "merge_size"):  # the Qwen family: size in pixels of area
        images.size = {**size, "shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
        for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if hasattr(images, name):
                setattr(images, name, int(value))
    elif hasattr(images, "do_image_splitting"):  # Idefics3 / SmolVLM: longest side in pixels, one tile
        tile = int((getattr(images, "max_image_size", None) or {}).get("longest_edge", 364))
        side = max(tile, int(math.sqrt(max_pixels)) // tile * tile)
        images.size = {"longest_edge": side}
        images.do_image_splitting = side > tile


def load_processor(model_id: str | Path, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The model's processor with its chat template, the pixel budget set and left padding (answers end every row,
    as batched generation needs)."""
    from transformers import AutoProcessor

    from utils.models.finetune.hub import from_source

    try:
        processor = from_source(AutoProcessor, model_id)
    except (ValueError, AttributeError, ImportError, TypeError) as exc:
        if "video" not in str(exc).lower() and "torchvision" not in str(exc).lower():
            raise
        processor = _load_processor_parts(str(model_id))
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{model_id}: its processor has no chat template (a base model, not a chat model?)")
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    set_pixel_budget(processor, min_pixels, max_pixels)
    return processor


# ----------------------------------------------------------------------------------------------------- model


def bnb_config(cfg: VlmModelConfig, quantization: str):
    """``BitsAndBytesConfig`` for 4-bit NF4 (fp16/bf16 compute) or 8-bit; None for 'none'. The vision tower and the
    output layer stay unquantised."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = ["lm_head", *VISION_PARTS, "multi_modal_projector", "connector", "merger"]
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=cfg.torch_dtype,
                              bnb_4bit_use_double_quant=cfg.double_quant, llm_int8_skip_modules=skip)


def load_base_model(cfg: VlmModelConfig, quantization: str | None = None):
    """``AutoModelForImageTextToText`` from ``cfg.model_id`` with the configured quantisation and dtype."""
    from transformers import AutoModelForImageTextToText

    from utils.models.finetune.hub import from_source

    device = cfg.torch_device
    quant = cfg.quantization if quantization is None else quantization
    kwargs: dict[str, Any] = {"dtype": cfg.torch_dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant != "none":
        kwargs["quantization_config"] = bnb_config(cfg, quant)
    if quant != "none" or device.type == "cuda":  # straight onto the GPU, never via a CPU copy
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    model = from_source(AutoModelForImageTextToText, cfg.model_id, **kwargs)
    return model.to(device) if quant == "none" else model


def lora_target_pattern(cfg: VlmModelConfig) -> str:
    """The peft ``target_modules`` regex: ``cfg.lora_targets`` anywhere but inside a vision tower."""
    names = "|".join(re.escape(t) for t in cfg.lora_targets)
    vision = "|".join(VISION_PARTS)
    return rf"^(?!.*\b(?:{vision})\b).*\.(?:{names})$"


def prepare_for_training(model, cfg: VlmModelConfig):
    """k-bit preparation when quantised, gradient checkpointing, LoRA adapters on the language model."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_pattern(cfg), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


def save_adapter(model, processor, cfg: VlmModelConfig, out_dir: str | Path) -> Path:
    """The LoRA adapter (peft format), the processor and the model settings, into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    try:
        processor.save_pretrained(out)
    except Exception:  # noqa: BLE001 - a processor without its video part (no torchvision): the base model's is used
        pass
    (out / SETTINGS_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    return out


def read_settings(artifact_dir: str | Path) -> dict[str, Any]:
    """The VlmModelConfig fields saved beside an adapter (empty when there are none)."""
    path = Path(artifact_dir) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_for_inference(cfg: VlmModelConfig, adapter_dir: str | Path | None = None, merge: bool = True,
                       quantization: str = "none"):
    """Base model (+ adapter) for generation: ``merge`` folds the adapter into unquantised weights of the compute
    dtype (fp16 on a T4, fp32 on CPU); otherwise the adapter stays beside a base loaded with ``quantization``."""
    from peft import PeftModel

    if adapter_dir is None:
        model = load_base_model(cfg, quantization=quantization)
    elif merge:
        model = PeftModel.from_pretrained(load_base_model(cfg, quantization="none"), str(adapter_dir))
        model = model.merge_and_unload()
    else:
        model = PeftModel.from_pretrained(load_base_model(cfg, quantization=quantization), str(adapter_dir))
    model.config.use_cache = True
    return model.eval()

"""PaliGemma loading: base model and processor, quantisation, dtype per device, LoRA, adapters and merging.

One place decides how the model is built, so training and inference cannot drift apart:

- ``ModelConfig``: the settings (hub id or local folder, quantisation, dtype, device, LoRA), validated on creation.
- ``resolve_device`` / ``resolve_dtype`` (``utils.models.finetune.device``): fp16 on a T4 and other pre-Ampere
  GPUs (no bf16 there), bf16 where the GPU supports it, fp32 on CPU.
- ``bnb_config``: ``BitsAndBytesConfig`` for 4-bit NF4 or 8-bit, with the compute dtype under its real key
  ``bnb_4bit_compute_dtype`` (a misspelt key is silently ignored by bitsandbytes).
- ``load_processor`` / ``load_base_model``: the same ``from_pretrained`` path for the hub id and a local folder.
- ``prepare_for_training``: ``prepare_model_for_kbit_training``, gradient checkpointing, LoRA adapters.
- ``load_for_inference``: base model + peft adapter, optionally merged into fp16 (fp32 on CPU) weights.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.data.tables import PROMPT_FORMATS
from utils.models.finetune.device import (  # noqa: F401  (describe_device: re-exported for train)
    DTYPES,
    bf16_supported,
    describe_device,
    resolve_device,
    resolve_dtype,
)
from utils.models.finetune.hub import from_source

DEFAULT_MODEL_ID = "google/paligemma-3b-ft-docvqa-448"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Vision-tower (SigLIP) modules that get LoRA adapters, per ``ModelConfig.lora_vision``.
LORA_VISION: dict[str, tuple[str, ...]] = {
    "none": (),
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
QUANTIZATIONS = ("4bit", "8bit", "none")
SETTINGS_FILE = "paligemma_settings.json"  # the ModelConfig an adapter was trained with, saved beside it


@dataclass
class ModelConfig:
    """How to build PaliGemma. Field names are the ``**settings`` accepted by the paligemma backend."""

    model_id: str = field(
        default=DEFAULT_MODEL_ID,
        metadata={"help": "Hub id or local folder of the base PaliGemma (model + processor)."},
    )
    quantization: str = field(
        default="4bit",
        metadata={"help": "Weights for training: '4bit' (NF4, fits a 16 GB T4), '8bit' or 'none'."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Compute dtype: 'auto' (bf16 if the GPU has it, fp16 on a T4, fp32 on CPU) or explicit."},
    )
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda[:N]'."})
    double_quant: bool = field(default=True, metadata={"help": "Nested 4-bit quantisation (saves ~0.4 bit/param)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (reference: 8)."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, 0 <= p < 1."})
    lora_targets: tuple[str, ...] = field(
        default=LORA_TARGETS,
        metadata={"help": "Module names that get LoRA adapters (attention and MLP projections)."},
    )
    lora_vision: str = field(
        default="qkv",
        metadata={"help": "LoRA on the SigLIP vision tower too: 'qkv' (its attention q/k/v projections, which the "
                          "reference's name list also matched), 'all' (q/k/v/out and the MLP) or 'none' (language "
                          "model only). The projector and every non-LoRA weight stay frozen."},
    )
    revision: str = field(
        default="auto",
        metadata={"help": "Hub revision of the base weights: 'auto' (the 'float16'/'bfloat16' branch matching the "
                          "compute dtype for google/paligemma*, half the download of float32 'main'), 'main', or "
                          "any branch/commit. Ignored for a local folder."},
    )
    allow_emulated_bf16: bool = field(
        default=False,
        metadata={"help": "Accept dtype='bfloat16' on a GPU without native bf16 (a T4): emulated, several times "
                          "slower; a remedy when float16 overflows."},
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in the backward pass (needed to fit a T4)."}
    )
    prompt_format: str = field(
        default="docvqa",
        metadata={"help": "How the question is asked, the same in training and inference: 'docvqa' (\"answer en "
                          "What is the item weight?\", the task prefix the docvqa checkpoint was fine-tuned on) or "
                          "'question' (the bare question, the seed's prompt; adapters saved before this setting)."},
    )
    attn_implementation: str | None = field(
        default="sdpa", metadata={"help": "Attention kernel: 'sdpa', 'eager', or None for the library default."}
    )

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if not self.model_id:
            raise ValueError("model_id must name a hub model or a local folder")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {tuple(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.lora_vision not in LORA_VISION:
            raise ValueError(f"lora_vision must be one of {tuple(LORA_VISION)}, got {self.lora_vision!r}")
        if not self.revision:
            raise ValueError("revision must be 'auto', 'main' or a branch/commit name")
        device = resolve_device(self.device)
        if self.dtype == "bfloat16" and not bf16_supported(device) and not self.allow_emulated_bf16:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            raise ValueError(
                f"dtype 'bfloat16' is not supported on {name} (bf16 needs compute capability 8.0+, a T4 has 7.5); "
                "use dtype='auto' or 'float16' (or allow_emulated_bf16=True to accept a slow emulation)"
            )
        if self.dtype == "float16" and device.type == "cpu":
            raise ValueError("dtype 'float16' is not usable for CPU compute; use dtype='auto' (float32 on CPU)")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")

    @property
    def torch_device(self) -> torch.device:
        """The resolved device."""
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The resolved compute dtype."""
        return resolve_dtype(self.dtype, self.torch_device)

    @property
    def hub_revision(self) -> str | None:
        """The hub revision to load (None: main): see the ``revision`` setting."""
        if self.revision == "auto":
            from utils.models.finetune.hub import dtype_revision

            return dtype_revision(self.model_id, str(self.torch_dtype).removeprefix("torch."))
        return None if self.revision == "main" else self.revision

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (for wandb and the saved artifact)."""
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


def bnb_config(cfg: ModelConfig):
    """The ``BitsAndBytesConfig`` for ``cfg.quantization`` (None for 'none'), compute dtype set correctly."""
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=cfg.torch_dtype,
        bnb_4bit_use_double_quant=cfg.double_quant,
    )


def lora_target_pattern(cfg: ModelConfig) -> str:
    """The peft ``target_modules`` regex (matched against full module names): ``cfg.lora_targets`` inside the
    language model, plus the ``cfg.lora_vision`` modules inside the vision tower; nothing else."""
    text = "|".join(re.escape(t) for t in cfg.lora_targets)
    pattern = rf".*\blanguage_model\..*\.(?:{text})"
    vision = LORA_VISION[cfg.lora_vision]
    if vision:
        pattern += rf"|.*\bvision_tower\..*\.(?:{'|'.join(re.escape(t) for t in vision)})"
    return pattern


def lora_config(cfg: ModelConfig):
    """The peft ``LoraConfig`` (rank, alpha, dropout, targets per ``lora_target_pattern``) for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_pattern(cfg),
        task_type="CAUSAL_LM",
        bias="none",
    )


def model_source(cfg: ModelConfig) -> str:
    """One line saying where ``cfg``'s base weights come from (local folder, Kaggle input, cache or download)."""
    from utils.models.finetune.hub import resolve_model_source

    return resolve_model_source(str(cfg.model_id), cfg.hub_revision).describe()


def load_processor(model_id: str | Path, revision: str | None = None):
    """The PaliGemma processor from a hub id or folder; left padding (answers end every row, as generation needs)."""
    from transformers import AutoProcessor

    processor = from_source(AutoProcessor, model_id, revision, fallback_to_main=True)
    if not hasattr(processor, "image_seq_length"):
        raise ValueError(f"{model_id} did not load a PaliGemma processor (got {type(processor).__name__})")
    processor.tokenizer.padding_side = "left"
    return processor


def load_base_model(cfg: ModelConfig, quantization: str | None = None):
    """Load ``PaliGemmaForConditionalGeneration`` from ``cfg.model_id`` with the configured quantisation and dtype
    (weights from the hub branch of that dtype where the repository has one: ``cfg.hub_revision``)."""
    from transformers import PaliGemmaForConditionalGeneration

    device = cfg.torch_device
    quant = cfg.quantization if quantization is None else quantization
    if quant not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quant!r}")
    kwargs: dict[str, Any] = {"dtype": cfg.torch_dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant != "none":
        kwargs["quantization_config"] = bnb_config(_with(cfg, quantization=quant))
    if quant != "none" or device.type == "cuda":  # load straight onto the GPU, never via a CPU copy
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    model = from_source(PaliGemmaForConditionalGeneration, cfg.model_id, cfg.hub_revision,
                        fallback_to_main=cfg.revision == "auto", **kwargs)
    if quant == "none":
        model = model.to(device)
    return model


def _with(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of ``cfg`` with some fields changed (validated again)."""
    return ModelConfig(**{**asdict(cfg), **changes})


def prepare_for_training(model, cfg: ModelConfig):
    """Make ``model`` trainable with LoRA: k-bit preparation when quantised, gradient checkpointing, adapters."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    peft_model = get_peft_model(model, lora_config(cfg))
    return peft_model


def save_adapter(model, processor, cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Save the LoRA adapter in peft format, the processor and the model settings into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / SETTINGS_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    return out


def read_settings(artifact_dir: str | Path) -> dict[str, Any]:
    """The ModelConfig fields saved beside an adapter (empty when the folder has none)."""
    path = Path(artifact_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    data.setdefault("prompt_format", "question")  # adapters saved before the setting were trained on the bare question
    if "lora_targets" in data:
        data["lora_targets"] = tuple(data["lora_targets"])
    return data


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a peft adapter."""
    return (Path(path) / "adapter_config.json").is_file()


def load_for_inference(cfg: ModelConfig, adapter_dir: str | Path | None = None, merge: bool = True,
                       quantization: str = "none"):
    """Base model (+ adapter) ready for generation, in eval mode.

    ``merge=True`` folds the adapter into unquantised weights of the compute dtype (fp16 on a T4, fp32 on CPU):
    faster generation and no quantisation error; ``quantization`` is then ignored. ``merge=False`` keeps the
    adapter separate on a base loaded with ``quantization`` ('none', '4bit' or '8bit').
    """
    from peft import PeftModel

    if adapter_dir is not None and not is_adapter_dir(adapter_dir):
        raise FileNotFoundError(f"no peft adapter (adapter_config.json) in {adapter_dir}")
    if adapter_dir is None:
        model = load_base_model(cfg, quantization=quantization)
    elif merge:
        base = load_base_model(cfg, quantization="none")
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    else:
        if quantization != "none":
            warnings.warn("generating with a quantised base: slower than a merged fp16 model", stacklevel=2)
        base = load_base_model(cfg, quantization=quantization)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.config.use_cache = True
    return model.eval()

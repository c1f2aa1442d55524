"""Where a fine-tuned model computes and in which dtype: fp16 on a T4 and other pre-Ampere GPUs (no native bf16),
bf16 where the GPU has it, fp32 on CPU. Decided from the compute capability (``utils.env.gpu``), never from
``torch.cuda.is_bf16_supported()``, which also says yes where bf16 is only emulated, several times slower.

(The same rules as ``utils.models.paligemma.load``'s, written for every backend; that module can import them from
here once it is free to change.)
"""

from __future__ import annotations

import torch

DTYPES = ("auto", "float16", "bfloat16", "float32")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU when there is one, else the CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available")
    return torch.device("cuda", 0) if dev.type == "cuda" and dev.index is None else dev


def describe_device(device: torch.device) -> str:
    """``cuda:0 Tesla T4 (compute capability 7.5, 15.0 GiB)`` or ``cpu``."""
    if device.type != "cuda":
        return str(device)
    from utils.env.gpu import gpu

    return gpu(device.index or 0).describe()


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: the CPU yes; a GPU from compute capability 8.0, not a T4."""
    if device.type != "cuda":
        return True
    from utils.env.gpu import NATIVE_BF16

    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` → bf16 on bf16 GPUs, fp16 on older GPUs (T4), fp32 on CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return getattr(torch, dtype)


def check_dtype(dtype: str, device: torch.device, allow_emulated_bf16: bool) -> None:
    """``ValueError`` for a dtype this device cannot compute in (bf16 on a T4 unless allowed, fp16 on a CPU)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "bfloat16" and not bf16_supported(device) and not allow_emulated_bf16:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise ValueError(f"dtype 'bfloat16' is not supported on {name} (bf16 needs compute capability 8.0+, a T4 has "
                         "7.5); use dtype='auto' or 'float16' (or allow_emulated_bf16=True to accept a slow emulation)")
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype 'float16' is not usable for CPU compute; use dtype='auto' (float32 on CPU)")


def float_dtype(model) -> torch.dtype:  # noqa: ANN001
    """The dtype of the model's first floating-point parameter (what pixel values must be cast to)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def free_memory() -> None:
    """Collect dropped models and give GPU memory back before the next model is loaded."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from the accelerator."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()

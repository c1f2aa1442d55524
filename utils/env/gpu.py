"""The machine's GPUs as torch reports them, and what follows from them (compute dtype, shards per GPU).

Everything here asks torch's own queries (``torch.cuda.is_available``, ``device_count``, ``get_device_properties``,
``get_device_capability``), so a test fakes a T4 at exactly that seam. bf16 is decided from the compute capability
(8.0 and up: Ampere, Ada, Hopper), never from ``torch.cuda.is_bf16_supported()``, which by default also answers True
where bf16 is only emulated (a T4, capability 7.5): several times slower, without tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
#: The lowest compute capability with native bf16 tensor cores (A100, L4, H100; not a T4 or V100).
NATIVE_BF16 = (8, 0)


@dataclass(frozen=True)
class Gpu:
    """One visible CUDA device."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 runs natively (compute capability 8.0+)."""
        return self.capability >= NATIVE_BF16

    def describe(self) -> str:
        """``cuda:0 Tesla T4 (compute capability 7.5, 15.0 GiB)``."""
        major, minor = self.capability
        return f"cuda:{self.index} {self.name} (compute capability {major}.{minor}, {self.memory_gib:.1f} GiB)"


def gpus() -> list[Gpu]:
    """The visible CUDA GPUs (after ``CUDA_VISIBLE_DEVICES``), in index order; [] without CUDA or without torch."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        capability = tuple(torch.cuda.get_device_capability(i))
        found.append(Gpu(i, str(props.name), (int(capability[0]), int(capability[1])), props.total_memory / GiB))
    return found


def gpu(index: int) -> Gpu:
    """The visible GPU ``index``; ValueError when there is none with that index."""
    for g in gpus():
        if g.index == index:
            return g
    raise ValueError(f"no CUDA GPU with index {index} is visible")

"""Fake CUDA GPUs at torch's own seam (the ``torch.cuda`` queries), for tests on a machine without a GPU.

In-process: ``install(monkeypatch.setattr, [T4, T4])``. In subprocesses (run_all.sh, papermill kernels): put
``tests/fake_gpu_site`` on ``PYTHONPATH`` and set ``FAKE_GPUS`` (``"T4,T4"``); its ``sitecustomize`` installs the fake
at interpreter start. ``CUDA_VISIBLE_DEVICES`` is honoured as the real driver does (``"1"`` shows only the second GPU,
as index 0). Only queries are faked: nothing can compute on these devices.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GiB = 1024**3


@dataclass(frozen=True)
class Spec:
    name: str
    capability: tuple[int, int]
    memory_gib: float


#: Modules that are told there is no GPU (see ``install``).
BLIND = ("bitsandbytes", "peft")
T4 = Spec("Tesla T4", (7, 5), 15.0)
A100 = Spec("NVIDIA A100-SXM4-40GB", (8, 0), 40.0)
KNOWN = {"T4": T4, "A100": A100}


@dataclass(frozen=True)
class _Props:
    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int = 40


def visible(specs: list[Spec], environ: dict[str, str] | None = None) -> list[Spec]:
    """The specs left visible by ``CUDA_VISIBLE_DEVICES`` (unset: all; "": none)."""
    env = os.environ if environ is None else environ
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return list(specs)
    picked = []
    for part in mask.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= len(specs):
            break  # the driver stops at the first invalid entry
        picked.append(specs[int(part)])
    return picked


def install(setattr: Callable[[Any, str, Any], None], specs: list[Spec]) -> list[Spec]:
    """Make ``torch.cuda`` report ``specs`` (after ``CUDA_VISIBLE_DEVICES``); returns the visible ones."""
    import torch

    shown = visible(specs)

    def index(device: Any = None) -> int:
        if device is None:
            return 0
        if isinstance(device, int):
            i = device
        elif isinstance(device, str):
            i = int(device.split(":")[1]) if ":" in device else 0
        else:
            i = device.index or 0
        if not 0 <= i < len(shown):
            raise AssertionError(f"fake GPU {i} is not visible ({len(shown)} visible)")
        return i

    def props(device: Any = None) -> _Props:
        s = shown[index(device)]
        return _Props(s.name, s.capability[0], s.capability[1], int(s.memory_gib * GiB))

    def is_available() -> bool:
        # Libraries that would put tensors on the GPU by themselves cannot use a fake one, so they see none:
        # bitsandbytes (loads CUDA kernels at import) and peft (loads adapter weights onto "cuda" when it sees one).
        caller = sys._getframe(1).f_globals.get("__name__", "")
        return bool(shown) and not caller.startswith(BLIND)

    setattr(torch.cuda, "is_available", is_available)
    setattr(torch.cuda, "device_count", lambda: len(shown))
    setattr(torch.cuda, "current_device", lambda: 0)
    setattr(torch.cuda, "set_device", lambda device: index(device) and None)
    setattr(torch.cuda, "get_device_properties", props)
    setattr(torch.cuda, "get_device_capability", lambda device=None: (props(device).major, props(device).minor))
    setattr(torch.cuda, "get_device_name", lambda device=None: props(device).name)
    # what torch 2.13 answers on a T4: True, because emulation counts by default
    setattr(torch.cuda, "is_bf16_supported",
            lambda including_emulation=True: bool(shown) and (props(0).major >= 8 or including_emulation))
    setattr(torch.cuda, "mem_get_info", lambda device=None: (props(device).total_memory,) * 2)
    # the Trainer saves and restores every device's RNG state with its checkpoints
    states = lambda: [torch.get_rng_state() for _ in shown]  # noqa: E731
    for module in (torch.cuda, torch.cuda.random):
        setattr(module, "get_rng_state_all", states)
        setattr(module, "set_rng_state_all", lambda new_states: None)
        setattr(module, "get_rng_state", lambda device="cuda": torch.get_rng_state())
        setattr(module, "set_rng_state", lambda new_state, device="cuda": None)
    return shown


def install_from_env() -> None:
    """For ``sitecustomize``: install ``FAKE_GPUS`` (comma-separated names from ``KNOWN``) for good."""
    names = [n.strip() for n in os.environ.get("FAKE_GPUS", "").split(",") if n.strip()]
    if names:
        install(setattr, [KNOWN[n] for n in names])

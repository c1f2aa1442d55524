"""bench/gpu_check.py --backend vlm: the full-size Qwen2-VL configs it builds and does arithmetic on are the real
models' (their published parameter counts), and its dry run goes through every step on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_check_vlm

    return gpu_check_vlm


def test_the_configs_are_the_real_models(bench) -> None:
    """Qwen2-VL-2B-Instruct has 2.21 B parameters and Qwen2-VL-7B-Instruct 8.29 B (their model cards); a wrong
    width, depth, vocabulary or a missed tying would change the count. LoRA (r=16 on the seven decoder projections)
    stays out of the vision tower."""
    from utils.models.vlm.load import LORA_TARGETS

    small = bench.count_params(bench.QWEN2_VL_2B, 16, LORA_TARGETS)
    big = bench.count_params(bench.QWEN2_VL_7B, 16, LORA_TARGETS)
    assert round(small["total"] / 1e9, 2) == 2.21 and round(big["total"] / 1e9, 2) == 8.29
    per_layer = 16 * (2 * (1536 + 1536) + 2 * (1536 + 256) + 3 * (1536 + 8960))
    assert small["lora"] == 28 * per_layer
    config = bench.qwen2_vl_config(bench.QWEN2_VL_2B)
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert config.text_config.rope_parameters["rope_theta"] == 1e6


def test_the_t4_arithmetic_flags_a_merged_7b(bench) -> None:
    """A merged fp16 7B (15.4 GiB) does not fit a T4's 15 GiB; the 2B's LoRA step does, in 16 bits."""
    lines = "\n".join(bench.t4_arithmetic("7B", bench.QWEN2_VL_7B, "4bit", 484, 2, [1, 8], 12, 0.25))
    assert "merged fp16 model 15.44 GiB (does NOT fit" in lines
    small = "\n".join(bench.t4_arithmetic("2B", bench.QWEN2_VL_2B, "none", 484, 2, [1, 8], 12, 0.25))
    assert "fp16 4.11 GiB" in small and "(fits)" in small and "NOT" not in small


@pytest.mark.slow
def test_the_dry_run_runs_every_step() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--backend", "vlm", "--dry-run"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "(a) LoRA, 16-bit weights" in text and "per 2-row step" in text
    assert "(a) LoRA, 4bit weights" in text or "(a) 4bit:" in text  # measured, or why not
    assert text.count("(b) fp32 batch") == 2
    assert text.count("(c) Qwen2-VL-") == 3 and "2.21 B parameters" in text

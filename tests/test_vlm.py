"""utils.models.vlm on tiny local chat VLMs of two families (Qwen2-VL, Idefics3): the chat template and the label
mask, the fake-T4 dtype rules, train + die + resume, zero-shot, and answers through the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from utils.data.tables import make_prompt
from utils.models.finetune.checkpoints import last_checkpoint
from utils.models.finetune.loss import IGNORE_INDEX
from utils.models.finetune.memorise import make_synthetic_set, render_text_image
from utils.models.vlm.data import ChatCollator, chat_prompt, end_of_turn
from utils.models.vlm.load import VlmModelConfig, load_processor, lora_target_pattern

from . import fake_gpu
from .session_death import Die

FAST = {"gradient_checkpointing": False, "train_batch_size": 4, "grad_accum": 1, "logging_steps": 1,
        "learning_rate": 1e-3, "min_pixels": 56 * 56, "max_pixels": 64 * 64, "eval_max_rows": 0}


@pytest.fixture(scope="module", params=["qwen2_vl", "idefics3"])
def tiny(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from utils.models.vlm.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp(request.param) / "model", request.param)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_set(root, size=40), root / "images"


def test_the_chat_template_and_only_the_answer_carries_loss(tiny: Path) -> None:
    processor = load_processor(tiny, 56 * 56, 64 * 64)
    tok, end = processor.tokenizer, end_of_turn(processor)
    assert end in ("<|im_end|>", "<end_of_utterance>")
    examples = [{"image": render_text_image("500 g"), "prompt": make_prompt("item_weight"), "answer": "500.0 gram"},
                {"image": render_text_image("?"), "prompt": make_prompt("depth"), "answer": ""}]
    batch = ChatCollator(processor)(examples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # left padding
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()
    for row, ex in enumerate(examples):
        answer = tok(ex["answer"] + end, add_special_tokens=False)["input_ids"]
        assert labels[row][labels[row] != IGNORE_INDEX].tolist() == answer  # exactly answer + end of turn
        n = len(answer)
        prompt_text = tok.decode(ids[row, :-n][mask[row, :-n] == 1])
        assert prompt_text.endswith(chat_prompt(processor, ex["prompt"]).rsplit(ex["prompt"], 1)[1])  # turn opened
        assert ex["prompt"] in prompt_text


def test_lora_stays_out_of_the_vision_tower(tiny: Path) -> None:
    import re

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny)
    pattern = re.compile(lora_target_pattern(VlmModelConfig(model_id=str(tiny))))
    hit = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    assert hit and all("visual" not in n and "vision_model" not in n for n in hit)
    assert any(n.endswith("q_proj") for n in hit) and any(n.endswith("down_proj") for n in hit)


def test_fp16_on_a_fake_t4_and_bf16_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from utils.models.vlm.train import VlmTrainConfig, _arguments

    fake_gpu.install(monkeypatch.setattr, [fake_gpu.T4, fake_gpu.T4])  # Kaggle's "GPU T4 x2"
    cfg = VlmModelConfig(model_id="x")
    assert cfg.torch_device.type == "cuda" and cfg.torch_dtype == torch.float16
    with pytest.raises(ValueError, match="bfloat16.*T4"):
        VlmModelConfig(model_id="x", dtype="bfloat16")
    assert VlmModelConfig(model_id="x", dtype="bfloat16", allow_emulated_bf16=True).torch_dtype == torch.bfloat16
    train_cfg = VlmTrainConfig()
    args = _arguments(cfg, train_cfg, tmp_path, 10, "none", None)
    assert args.fp16 and not args.bf16
    assert args.n_gpu == 1 and args.train_batch_size == train_cfg.train_batch_size  # one GPU, the configured batch
    fake_gpu.install(monkeypatch.setattr, [fake_gpu.A100])
    assert VlmModelConfig(model_id="x").torch_dtype == torch.bfloat16


def test_train_die_resume_and_answer(tiny: Path, data, tmp_path: Path) -> None:
    from utils.models.vlm.backend import VlmBackend

    rows, image_dir = data
    out = tmp_path / "run"
    settings = dict(model_id=str(tiny), max_steps=4, save_steps=2, save_total_limit=1, **FAST)
    with pytest.raises(KeyboardInterrupt):
        VlmBackend().fit(rows.iloc[:8], None, image_dir, out, callbacks=[Die(3)], **settings)
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"
    adapter = VlmBackend().fit(rows.iloc[:8], None, image_dir, out, **settings)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4 and summary["complete"]
    assert [h["step"] for h in summary["log_history"] if "loss" in h][-2:] == [3, 4]
    assert (adapter / "adapter_model.safetensors").is_file()
    saved = json.loads((adapter / "generation.json").read_text())
    assert saved["max_new_tokens"] == saved["longest_answer_tokens"] + 4
    backend = VlmBackend()
    test = rows.head(3).assign(index=[5, 6, 7])
    answers = [pair for batch in backend.predict(test, image_dir, adapter, batch_size=2, max_new_tokens=2)
               for pair in batch]
    assert [i for i, _ in answers] == [5, 6, 7] and backend.stats.rows == 3


def test_zero_shot_needs_no_fit(tiny: Path, data, tmp_path: Path) -> None:
    from utils.models.vlm.backend import VlmBackend

    rows, image_dir = data
    artifact = VlmBackend().fit(rows.head(4), None, image_dir, tmp_path, model_id=str(tiny), num_train_epochs=0,
                                **FAST)
    assert not (artifact / "adapter_model.safetensors").exists()
    assert json.loads((artifact / "fit_status.json").read_text())["complete"] is True
    test = rows.head(2).assign(index=[0, 1])
    answers = [p for b in VlmBackend().predict(test, image_dir, artifact, max_new_tokens=3) for p in b]
    assert [i for i, _ in answers] == [0, 1]


def test_the_vlm_settings_are_checked_like_any_backend_s() -> None:
    from utils.pipeline.params import FitParams, ParamError

    FitParams(backend="vlm", settings={"max_pixels": 200704, "num_train_epochs": 0})
    with pytest.raises(ParamError, match="did you mean 'max_pixels'"):
        FitParams(backend="vlm", settings={"max_pixel": 200704})


@pytest.mark.slow
def test_run_all_with_the_vlm_backend(tmp_path: Path) -> None:
    """--backend vlm through all four notebooks with a tiny local Qwen2-VL (offline, CPU)."""
    import os
    import subprocess

    from utils.core.sanity import check_submission
    from utils.models.vlm.tiny import build_tiny_vlm

    tiny = build_tiny_vlm(tmp_path / "tiny", "qwen2_vl")
    model = {"model_id": str(tiny), "min_pixels": 56 * 56, "max_pixels": 64 * 64}
    fit = {**model, "max_steps": 2, "train_batch_size": 2, "grad_accum": 1, "eval_max_rows": 2}
    out, work = tmp_path / "out", tmp_path / "work"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        ["bash", str(repo / "run_all.sh"), "--backend", "vlm", "--demo-train", "12", "--demo-test", "6", "--shards",
         "2", "--out", str(out), "--work", str(work), "--runs", str(tmp_path / "runs"), "--fit-settings",
         json.dumps(fit), "--infer-settings", json.dumps({**model, "max_new_tokens": 4})],
        capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "artifacts" / "vlm.fitted").is_file()
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert check_submission(pd.read_csv(work / "demo" / "test.csv"), submission) == []
    assert (out / "report.md").is_file()

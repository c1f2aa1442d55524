"""utils.train: label masking, the answer-window loss, settings, train + checkpoint + resume, adapter, F1 eval."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from utils.data import make_prompt
from utils.model import ModelConfig, is_adapter_dir, load_base_model, load_processor
from utils.tiny_model import make_synthetic_set, render_text_image
from utils.train import (
    IGNORE_INDEX,
    AnswerDataset,
    PaliGemmaCollator,
    TrainConfig,
    answer_loss,
    answer_window,
    fit,
    last_checkpoint,
)

FAST = {"quantization": "none", "gradient_checkpointing": False, "train_batch_size": 4, "grad_accum": 1,
        "logging_steps": 1, "learning_rate": 1e-3}


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_set(root, size=40), root / "images"


def _examples() -> list[dict]:
    return [
        {"image": render_text_image("500 g"), "prompt": make_prompt("item_weight"), "answer": "500.0 gram"},
        {"image": render_text_image("12 V"), "prompt": make_prompt("maximum_weight_recommendation"), "answer": "12 volt"},
        {"image": render_text_image("?"), "prompt": make_prompt("depth"), "answer": ""},
    ]


# ------------------------------------------------------------------------------------------ masking and loss


def test_only_answer_tokens_carry_loss(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    tok = processor.tokenizer
    examples = _examples()
    batch = PaliGemmaCollator(processor)(examples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert labels.shape == ids.shape
    assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()  # image tokens
    assert (labels[mask == 0] == IGNORE_INDEX).all()  # padding
    assert (mask[:, 0] == 0).any()  # rows differ in length: left padding was used
    for row, ex in enumerate(examples):
        answer_ids = tok(ex["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert labels[row][labels[row] != IGNORE_INDEX].tolist() == answer_ids  # exactly answer + <eos>
        # everything before the answer (image, <bos>, prompt, "\n") is masked and is the inference prompt
        n = len(answer_ids)
        assert (labels[row, :-n] == IGNORE_INDEX).all()
        prefix = tok.decode(ids[row, :-n][mask[row, :-n] == 1], skip_special_tokens=True)
        assert prefix.strip() == ex["prompt"]
    # positions count real tokens only (1-based), exactly as generate() computes them under left padding
    assert batch["position_ids"][mask == 1].min() == 1
    assert (batch["position_ids"][:, -1] == mask.sum(1)).all()


def test_answer_window_loss_equals_the_full_sequence_loss(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    model = load_base_model(ModelConfig(model_id=str(tiny_dir), quantization="none"))
    batch = PaliGemmaCollator(processor)(_examples())
    labels = batch.pop("labels")
    keep = answer_window(labels)
    assert keep < labels.shape[1]  # far fewer logits than positions
    with torch.no_grad():
        full = model(**batch, labels=labels).loss
        window = answer_loss(model(**batch, logits_to_keep=keep).logits, labels)
    torch.testing.assert_close(window, full, atol=1e-5, rtol=1e-5)


def test_answer_window_edge_cases() -> None:
    labels = torch.full((2, 6), IGNORE_INDEX)
    assert answer_window(labels) == 1
    labels[0, 4:] = 7
    assert answer_window(labels) == 3  # logits at positions 3, 4, 5


# ------------------------------------------------------------------------------------------ settings, data


def test_train_config_sanity_checks() -> None:
    assert TrainConfig().learning_rate == pytest.approx(2e-4)
    with pytest.warns(UserWarning, match="far below"):
        TrainConfig(learning_rate=5e-6)  # the reference's value
    for bad in ({"learning_rate": 0}, {"learning_rate": 1.0}, {"learning_rate": float("nan")},
                {"train_batch_size": 0}, {"max_steps": 0}, {"warmup_ratio": 1.0}, {"save_steps": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(TypeError, match="unknown setting"):
        fit(pd.DataFrame(), None, ".", ".", learning_rat=1e-4)


def test_dataset_reads_lazily_and_skips_missing_images(data, tmp_path: Path) -> None:
    rows, image_dir = data
    extra = rows.head(2).assign(image_link=["https://x.invalid/nope.jpg", "not a url"])
    ds = AnswerDataset(pd.concat([rows, extra]), image_dir, max_side=32)
    assert len(ds) == len(rows) and ds.n_missing == 2
    item = ds[0]
    assert item["prompt"] == make_prompt(rows["entity_name"][0]) and item["answer"] == rows["entity_value"][0]
    assert max(item["image"].size) <= 32
    with pytest.raises(ValueError, match="no training images"):
        fit(extra, None, image_dir, tmp_path, model_id="unused", **FAST)


# ------------------------------------------------------------------------------------------ the training run


class _Die:
    """A callback that kills the run at a given step (after the Trainer saved the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str):
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            raise KeyboardInterrupt("session died")


def test_train_checkpoint_die_resume_save_adapter_and_eval_f1(tiny_dir: Path, data, tmp_path: Path) -> None:
    rows, image_dir = data
    train, val = rows.iloc[:12], rows.iloc[12:]
    out = tmp_path / "run"
    settings = dict(model_id=str(tiny_dir), max_steps=4, save_steps=2, save_total_limit=1, eval_max_rows=3,
                    max_new_tokens=4, batch_size=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        fit(train, val, image_dir, out, callbacks=[_Die(3)], **settings)
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"
    assert not (out / "adapter").exists()

    adapter = fit(train, val, image_dir, out, **settings)  # same call again: resumes
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2"
    assert summary["global_step"] == 4
    steps = [h["step"] for h in summary["log_history"] if "loss" in h]
    assert steps[-2:] == [3, 4]  # only the steps after the checkpoint were run again
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit
    assert 0.0 <= summary["metrics"]["eval_f1"] <= 1.0  # generated-answer F1 on val, logged
    assert "eval_loss" in summary["metrics"]
    assert any("eval_f1" in h for h in summary["log_history"])

    assert adapter == out / "adapter" and is_adapter_dir(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (adapter / "processor_config.json").is_file()


def test_training_lowers_the_answer_loss(tiny_dir: Path, data, tmp_path: Path) -> None:
    rows, image_dir = data
    settings = dict(FAST, learning_rate=5e-3, lora_r=16, lora_alpha=32)
    fit(rows.head(8), None, image_dir, tmp_path, model_id=str(tiny_dir), max_steps=15, save_steps=100,
        **{**settings, "train_batch_size": 8, "logging_steps": 5})
    losses = [h["loss"] for h in json.loads((tmp_path / "train_summary.json").read_text())["log_history"]
              if "loss" in h]
    assert len(losses) == 3
    assert losses[-1] < 0.75 * losses[0], losses

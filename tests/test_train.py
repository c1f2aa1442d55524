"""utils.models.paligemma.train: label masking, the answer-window loss, settings, train + checkpoint + resume, adapter, F1 eval."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from utils.data.tables import make_prompt
from utils.models.finetune.checkpoints import last_checkpoint
from utils.models.paligemma.data import IGNORE_INDEX, AnswerDataset, PaliGemmaCollator, answer_loss, answer_window
from utils.models.paligemma.load import ModelConfig, is_adapter_dir, load_base_model, load_processor
from utils.models.paligemma.tiny import make_synthetic_set, render_text_image
from utils.models.paligemma.train import TrainConfig, fit

from .session_death import Die

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


def test_train_checkpoint_die_resume_save_adapter_and_eval_f1(tiny_dir: Path, data, tmp_path: Path) -> None:
    rows, image_dir = data
    train, val = rows.iloc[:12], rows.iloc[12:]
    out = tmp_path / "run"
    settings = dict(model_id=str(tiny_dir), max_steps=4, save_steps=2, save_total_limit=1, eval_max_rows=3,
                    max_new_tokens=4, batch_size=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        fit(train, val, image_dir, out, callbacks=[Die(3)], **settings)
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"
    assert not (out / "adapter").exists()

    adapter = fit(train, val, image_dir, out, **settings)  # same call again: resumes
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2"
    assert summary["global_step"] == 4
    steps = [h["step"] for h in summary["log_history"] if "loss" in h]
    assert steps[-2:] == [3, 4]  # only the steps after the checkpoint were run again
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit
    assert 0.0 <= summary["metrics"]["final_f1_merged"] <= 1.0  # the merged model's F1 on the eval sample
    assert summary["n_eval_sample"] == 3 and summary["complete"] is True

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


# ------------------------------------------------------------------------------------------ real sessions


def _log_steps(out: Path) -> list[int]:
    summary = json.loads((out / "train_summary.json").read_text())
    return [h["step"] for h in summary["log_history"] if "loss" in h]


def test_a_refit_with_other_rows_starts_fresh_and_keeps_the_old_checkpoints_aside(tiny_dir: Path, data,
                                                                                  tmp_path: Path) -> None:
    rows, image_dir = data
    out = tmp_path / "run"
    settings = dict(model_id=str(tiny_dir), max_steps=2, save_steps=2, **FAST)
    fit(rows.iloc[:8], None, image_dir, out, **settings)
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"

    fit(rows.iloc[4:16], None, image_dir, out, **{**settings, "max_steps": 4})  # other rows, more steps
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] is None and summary["global_step"] == 4
    assert _log_steps(out) == [1, 2, 3, 4]  # every step trained on the new rows, none at LR 0
    (stale,) = out.glob("checkpoints.stale-*")
    assert (stale / "checkpoint-2").is_dir()  # kept, never deleted

    fit(rows.iloc[4:16], None, image_dir, out, **{**settings, "max_steps": 4, "learning_rate": 5e-4})
    assert len(list(out.glob("checkpoints.stale-*"))) == 2  # other settings: fresh again


def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(tiny_dir: Path, data, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rows, image_dir = data
    settings = dict(model_id=str(tiny_dir), max_steps=1, save_steps=10, **FAST)

    def lora_a(seed: int, name: str) -> dict[str, torch.Tensor]:
        adapter = fit(rows.head(4), None, image_dir, tmp_path / name, seed=seed, **settings)
        return {k: v for k, v in load_file(adapter / "adapter_model.safetensors").items() if "lora_A" in k}

    first, again, other = lora_a(0, "a"), lora_a(0, "b"), lora_a(1, "c")
    torch.manual_seed(123)  # whatever the global RNG holds, the seed setting decides the LoRA init
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_the_eval_sample_is_capped_shuffled_and_scored_with_the_merged_model(tiny_dir: Path, data,
                                                                            tmp_path: Path) -> None:
    from utils.models.paligemma.infer import InferConfig, eval_sample, generated_f1, load_predictor

    rows, image_dir = data
    train, val = rows.iloc[:8], rows.iloc[8:]
    sample = eval_sample(val, 5, seed=3)
    assert len(sample) == 5 and set(sample["image_link"]) <= set(val["image_link"])
    assert list(sample["image_link"]) != list(val["image_link"].head(5))  # drawn, not the first rows
    adapter = fit(train, val, image_dir, tmp_path / "run", model_id=str(tiny_dir), max_steps=2, save_steps=10,
                  eval_max_rows=5, seed=3, **FAST)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["n_eval_sample"] == 5
    cfg = InferConfig(max_new_tokens=summary["max_new_tokens"])
    merged, processor, model_cfg = load_predictor(adapter, cfg)  # exactly what stage 03 loads
    assert summary["metrics"]["final_f1_merged"] == generated_f1(merged, processor, sample, image_dir, cfg,
                                                                 prompt_format=model_cfg.prompt_format)
    assert json.loads((adapter / "fit_status.json").read_text())["complete"] is True


def test_max_new_tokens_is_derived_from_the_answers_saved_and_truncation_counted(tiny_dir: Path, data,
                                                                                tmp_path: Path) -> None:
    from utils.models.paligemma.backend import PaliGemmaBackend
    from utils.models.paligemma.train import answer_token_budget

    rows, image_dir = data
    long_label = "[100.0, 240.0] volt"
    train = rows.head(6).assign(entity_value=["1.0 gram"] * 5 + [long_label])
    adapter = fit(train, None, image_dir, tmp_path / "run", model_id=str(tiny_dir), max_steps=1, save_steps=10,
                  answer_margin_tokens=3, **FAST)
    tok = load_processor(adapter).tokenizer
    longest = len(tok(long_label, add_special_tokens=False).input_ids) + 1  # + <eos>
    saved = json.loads((adapter / "generation.json").read_text())
    assert saved == {"max_new_tokens": longest + 3, "longest_answer_tokens": longest}
    assert answer_token_budget(tok, ["1 g", long_label], 3) == (longest, longest + 3)

    backend = PaliGemmaBackend()
    test_rows = rows.head(4).assign(index=range(4))
    list(backend.predict(test_rows, image_dir, adapter, batch_size=2))
    assert backend.stats.max_new_tokens == longest + 3 and backend.stats.rows == 4
    cut = PaliGemmaBackend()
    list(cut.predict(test_rows, image_dir, adapter, batch_size=2, max_new_tokens=1))
    assert cut.stats.truncated == 4 and "max_new_tokens=1" in cut.stats.note()


def test_a_killed_session_resumes_from_a_read_only_checkpoint_folder(tiny_dir: Path, data, tmp_path: Path) -> None:
    import os
    import shutil
    import stat

    from utils.models.finetune.checkpoints import CheckpointMismatch

    rows, image_dir = data
    train = rows.iloc[:12]
    settings = dict(model_id=str(tiny_dir), max_steps=4, save_steps=2, save_total_limit=1, **FAST)
    with pytest.raises(KeyboardInterrupt):
        fit(train, None, image_dir, tmp_path / "session1", callbacks=[Die(3)], **settings)
    (tmp_path / "session1" / "checkpoints" / "wandb_run.json").write_text('{"id": "abc123", "project": "p"}')
    kept = tmp_path / "kaggle_dataset"  # what the user saved from session 1, mounted read-only in session 2
    shutil.copytree(tmp_path / "session1" / "checkpoints", kept)
    for root, dirs, files in os.walk(kept):
        for name in files:
            os.chmod(os.path.join(root, name), stat.S_IRUSR)
    for root, dirs, files in sorted(os.walk(kept), reverse=True):
        os.chmod(root, stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(CheckpointMismatch, match="learning_rate"):
            fit(train, None, image_dir, tmp_path / "other", resume_from=str(kept),
                **{**settings, "learning_rate": 5e-4})
        adapter = fit(train, None, image_dir, tmp_path / "session2", resume_from=str(kept), **settings)
    finally:
        for root, dirs, files in os.walk(kept):
            os.chmod(root, stat.S_IRWXU)
    summary = json.loads((tmp_path / "session2" / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4
    assert _log_steps(tmp_path / "session2")[-2:] == [3, 4]
    assert json.loads((tmp_path / "session2" / "checkpoints" / "wandb_run.json").read_text())["id"] == "abc123"
    assert is_adapter_dir(adapter)


class _StepTime:
    """A callback that makes each step take ``seconds`` longer, ``later`` seconds after step ``after`` (a big model
    on a GPU that then throttles): step times that do not depend on how fast this machine is."""

    def __init__(self, seconds: float, after: int = 10**9, later: float = 0.0) -> None:
        self.seconds, self.after, self.later = seconds, after, later

    def __getattr__(self, name: str):
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        import time

        time.sleep(self.later if state.global_step > self.after else self.seconds)


def test_the_time_budget_plans_the_steps_and_stops_with_a_saved_adapter(tiny_dir: Path, data,
                                                                        tmp_path: Path) -> None:
    rows, image_dir = data
    settings = dict(model_id=str(tiny_dir), max_steps=400, save_steps=1000, calibration_steps=2,
                    save_margin_minutes=0, **{**FAST, "logging_steps": 2})
    out = tmp_path / "planned"
    adapter = fit(rows.head(8), None, image_dir, out, time_budget_hours=8 / 3600, callbacks=[_StepTime(0.2)],
                  **settings)  # 8 seconds for 400 steps of 0.2 s
    plan = json.loads((out / "checkpoints" / "plan.json").read_text())
    status = json.loads((adapter / "fit_status.json").read_text())
    assert plan["configured_steps"] == 400 and plan["max_steps"] < 40  # planned to fit the budget
    assert status["planned_steps"] == plan["max_steps"] and status["global_step"] <= plan["max_steps"]
    assert (adapter / "adapter_model.safetensors").is_file()
    logged = [h for h in json.loads((out / "train_summary.json").read_text())["log_history"] if "loss" in h]
    assert all("eta_minutes" in h and h["planned_steps"] == plan["max_steps"] for h in logged[2:])

    # steps that slow down after the plan: the budget stops training, with a checkpoint and the adapter saved
    out = tmp_path / "stopped"
    adapter = fit(rows.head(8), None, image_dir, out, time_budget_hours=20 / 3600,
                  callbacks=[_StepTime(0.2, after=3, later=2.0)], **settings)
    status = json.loads((adapter / "fit_status.json").read_text())
    assert status["complete"] is False and status["stopped_by"] == "time budget"
    assert status["global_step"] < status["planned_steps"] < 400
    assert (adapter / "adapter_model.safetensors").is_file()
    assert last_checkpoint(out / "checkpoints").name == f"checkpoint-{status['global_step']}"  # saved at the stop
    # the next session: the same plan (and LR schedule), resumed, finished
    fit(rows.head(8), None, image_dir, out, time_budget_hours=0, **settings)
    done = json.loads((out / "adapter" / "fit_status.json").read_text())
    assert done["complete"] is True and done["global_step"] == status["planned_steps"]


def test_a_nan_loss_stops_training_with_the_remedy(tmp_path: Path, data) -> None:
    from utils.models.paligemma.infer import NonFiniteError
    from utils.models.paligemma.tiny import TinyConfig, build_tiny_paligemma

    rows, image_dir = data
    overflowing = build_tiny_paligemma(tmp_path / "inf", TinyConfig(output_gain=float("inf")))  # logits overflow
    with pytest.raises(NonFiniteError, match="allow_emulated_bf16"):
        fit(rows.head(4), None, image_dir, tmp_path / "run", model_id=str(overflowing), max_steps=2, **FAST)
    from utils.models.paligemma.backend import PaliGemmaBackend

    with pytest.raises(NonFiniteError, match="first batch"):
        list(PaliGemmaBackend().predict(rows.head(2).assign(index=[0, 1]), image_dir, overflowing,
                                        max_new_tokens=2))


def test_the_vision_towers_lora_learns_at_its_own_lower_rate_and_a_nan_final_f1_stops_the_fit(
        tiny_dir: Path, data, tmp_path: Path) -> None:
    """The vision tower's LoRA at the full LR let the tiny model lose what the image says (bench/tiny_overfit.py:
    1/16); it learns at ``learning_rate * vision_lr_scale``, every other LoRA weight at ``learning_rate``. And the final
    F1 of the merged model checks NaN/inf as stage 03 does (it scored an fp16 overflow as F1 ~ 0)."""
    from transformers import TrainerCallback

    from utils.models.paligemma.infer import NonFiniteError

    rows, image_dir = data
    seen: dict[str, list[float]] = {}

    class Inspect(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):  # noqa: ANN001
            names = {id(p): n for n, p in model.named_parameters()}
            for group in optimizer.param_groups:
                where = {"vision" if ".vision_tower." in names[id(p)] else "text" for p in group["params"]}
                assert len(where) == 1  # no group mixes the two
                seen.setdefault(where.pop(), []).append(group["lr"])

        def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            with torch.no_grad():  # what an fp16 overflow leaves in the weights the adapter saves
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("inf"))

    settings = {**FAST, "model_id": str(tiny_dir), "max_steps": 2, "save_steps": 10, "learning_rate": 1e-3,
                "vision_lr_scale": 0.1, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        fit(rows.head(4), rows.iloc[4:6], image_dir, tmp_path / "run", callbacks=[Inspect()], **settings)
    assert seen["text"] and seen["vision"]
    assert all(lr == pytest.approx(1e-4) for lr in seen["vision"])
    assert all(lr == pytest.approx(1e-3) for lr in seen["text"])

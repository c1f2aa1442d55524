"""utils.models.paligemma.infer: settings, batching with missing images, OOM halving, generation, the paligemma backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from utils.data.tables import make_prompt
from utils.models.backend import get_backend
from utils.models.paligemma.backend import PaliGemmaBackend
from utils.models.paligemma.infer import InferConfig, generate_answers, iter_answers
from utils.models.paligemma.load import ModelConfig, load_base_model, load_processor, prepare_for_training, save_adapter
from utils.models.paligemma.tiny import make_synthetic_set
from utils.models.paligemma.train import PaliGemmaCollator


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("data")
    rows = make_synthetic_set(root, size=40).head(6)
    rows["index"] = [101, 5, 77, 3, 40, 12]  # not contiguous, not sorted: always carried through
    rows.loc[2, "image_link"] = "https://example.invalid/images/missing.jpg"
    return rows, root / "images"


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(model_id=str(tiny_dir), quantization="none", gradient_checkpointing=False)
    model = prepare_for_training(load_base_model(cfg), cfg)
    return save_adapter(model, load_processor(tiny_dir), cfg, tmp_path_factory.mktemp("art") / "adapter")


def test_infer_config_defaults_and_validation() -> None:
    cfg = InferConfig()
    assert cfg.max_new_tokens == 0 and cfg.merge_adapter  # 0: the length saved with the adapter
    for bad in ({"max_new_tokens": 500}, {"max_new_tokens": -1}, {"batch_size": 0},
                {"infer_quantization": "fp8"}, {"max_side": 0}):
        with pytest.raises(ValueError):
            InferConfig(**bad)


def test_batches_keep_order_and_answer_empty_for_missing_images(data) -> None:
    rows, image_dir = data
    seen: list[list[str]] = []

    def answer_fn(images, prompts):
        seen.append(prompts)
        return [f"{len(p)}" for p in prompts]

    batches = list(iter_answers(rows, image_dir, answer_fn, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    got = dict(pair for b in batches for pair in b)
    assert [i for b in batches for i, _ in b] == rows["index"].tolist()
    assert got[77] == ""  # missing image: no model call for it
    assert sum(len(s) for s in seen) == 5
    assert got[101] == str(len(make_prompt(rows["entity_name"][0])))


def test_out_of_memory_halves_the_batch_and_goes_on(data) -> None:
    rows, image_dir = data
    sizes: list[int] = []

    def answer_fn(images, prompts):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ["1 volt"] * len(images)

    batches = list(iter_answers(rows, image_dir, answer_fn, batch_size=8))
    answered = [pair for b in batches for pair in b]
    assert sorted(i for i, _ in answered) == sorted(rows["index"])  # nothing lost, nothing twice
    assert sizes[:3] == [5, 3, 2]  # 6 rows (5 images) -> first 4 rows (3 images) -> 2 rows
    assert all(len(b) <= 2 for b in batches)

    def always_oom(images, prompts):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        list(iter_answers(rows, image_dir, always_oom, batch_size=2))

    def broken(images, prompts):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # only OOM is retried
        list(iter_answers(rows, image_dir, broken, batch_size=2))


def test_training_and_inference_send_the_same_prompt(tiny_dir: Path, data) -> None:
    rows, image_dir = data
    processor = load_processor(tiny_dir)
    model = load_base_model(ModelConfig(model_id=str(tiny_dir), quantization="none"))
    texts: list[list[str]] = []

    class Recorder:
        def __init__(self, inner):
            self.inner, self.tokenizer = inner, inner.tokenizer

        def __call__(self, *args, **kwargs):
            texts.append(list(kwargs["text"]))
            return self.inner(*args, **kwargs)

    from utils.data.images import image_path, load_image

    image = load_image(image_path(image_dir, rows["image_link"][0]))
    prompt = make_prompt(rows["entity_name"][0])
    PaliGemmaCollator(Recorder(processor))([{"image": image, "prompt": prompt, "answer": "500.0 gram"}])
    generate_answers(model, Recorder(processor), [image], [prompt], max_new_tokens=2)
    assert texts[0] == texts[1] and prompt in texts[0][0]


def test_generate_answers_respects_max_new_tokens(tiny_dir: Path, data) -> None:
    rows, image_dir = data
    from utils.data.images import image_path, load_image

    processor = load_processor(tiny_dir)
    model = load_base_model(ModelConfig(model_id=str(tiny_dir), quantization="none"))
    images = [load_image(image_path(image_dir, u)) for u in rows["image_link"][:2]]
    prompts = [make_prompt(e) for e in rows["entity_name"][:2]]
    answers = generate_answers(model, processor, images, prompts, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    for a in answers:
        assert len(processor.tokenizer(a, add_special_tokens=False).input_ids) <= 3
    assert generate_answers(model, processor, [], [], 3) == []
    with pytest.raises(ValueError, match="images for"):
        generate_answers(model, processor, images, prompts[:1], 3)


def test_backend_predicts_from_an_adapter_and_from_a_plain_model(tiny_dir: Path, adapter_dir: Path, data) -> None:
    rows, image_dir = data
    backend = get_backend("paligemma")
    assert isinstance(backend, PaliGemmaBackend) and backend.name == "paligemma"
    batches = list(backend.predict(rows, image_dir, adapter_dir, batch_size=4, max_new_tokens=4))
    pairs = [p for b in batches for p in b]
    assert [i for i, _ in pairs] == rows["index"].tolist()
    assert dict(pairs)[77] == ""
    model_before = backend._loaded[1]
    list(backend.predict(rows.head(2), image_dir, adapter_dir, batch_size=4, max_new_tokens=4))
    assert backend._loaded[1] is model_before  # loaded once, reused for the next shard
    # unmerged adapter on the base gives the same greedy answers (the adapter here is the zero LoRA init)
    unmerged = dict(p for b in backend.predict(rows, image_dir, adapter_dir, merge_adapter=False,
                                               max_new_tokens=4) for p in b)
    assert unmerged == dict(pairs)
    zero_shot = dict(p for b in PaliGemmaBackend().predict(rows, image_dir, tiny_dir, max_new_tokens=4) for p in b)
    assert zero_shot == dict(pairs)
    with pytest.raises(TypeError, match="unknown setting"):
        list(backend.predict(rows, image_dir, adapter_dir, beams=3))
    with pytest.raises(FileNotFoundError):
        list(PaliGemmaBackend().predict(rows, image_dir, image_dir))


def test_pipeline_runs_a_shard_through_the_backend(adapter_dir: Path, data, tmp_path: Path) -> None:
    from utils.pipeline.predict import run_shard
    from utils.pipeline.shards import shard_path

    rows, image_dir = data
    test = rows[["index", "image_link", "group_id", "entity_name"]]
    path = run_shard("paligemma", test, 0, 2, image_dir, adapter_dir, tmp_path, show_progress=False,
                     batch_size=2, max_new_tokens=4)
    assert path == shard_path(tmp_path, 0, 2)
    written = pd.read_csv(path, keep_default_na=False)
    assert sorted(written["index"]) == sorted(test.sort_values("index")["index"].tolist()[0::2])
    assert Path(str(path) + ".done").is_file()

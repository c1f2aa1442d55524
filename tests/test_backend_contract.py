"""Every backend against the one interface (``utils.models.backend.Backend``): the two real ones on real inputs (the
tiny PaliGemma, rapidocr on the rendered demo images) and the fake the pipeline tests use, so a fake that drifts
from the real backends is caught here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from utils.core.units import normalize_prediction
from utils.data.demo import make_demo_data
from utils.models import backend as backends
from utils.models.backend import Backend, get_backend, register_backend

from .fake_backends import AnswerBackend


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    made = make_demo_data(tmp_path_factory.mktemp("contract"), n_train=16, n_test=7, seed=11)
    train = pd.read_csv(made.train_csv, keep_default_na=False)
    test = pd.read_csv(made.test_csv)
    test.loc[len(test)] = [999, "https://demo.invalid/images/not_there.jpg", 101697, "voltage"]  # no image
    return made, train, test


def _settings(kind: str, tiny_dir: Path, made) -> tuple[dict, dict]:
    if kind == "paligemma":
        model = {"model_id": str(tiny_dir), "quantization": "none"}
        return {**model, "max_steps": 1, "train_batch_size": 4, "grad_accum": 1, "save_steps": 10,
                "gradient_checkpointing": False}, {**model, "batch_size": 3}
    if kind == "ocr":
        return {"folds": 2, "workers": 1}, {"batch_size": 3, "workers": 1}
    return {}, {"answers_csv": str(made.labels_csv)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["answers", "paligemma", "ocr"])
def test_a_backend_keeps_the_contract(kind: str, demo, tiny_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    made, train, test = demo
    if kind == "answers":
        monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))  # the registration ends with the test
        register_backend("answers", "tests.fake_backends:AnswerBackend")
    backend = get_backend(kind)
    assert isinstance(backend, Backend) and backend.name == kind
    fit_settings, predict_settings = _settings(kind, tiny_dir, made)
    val = train.iloc[12:]
    artifact = backend.fit(train.iloc[:12], val, made.image_dir, tmp_path / "artifact", **fit_settings)
    assert isinstance(artifact, Path) and artifact.exists()

    seen: list[int] = []
    for batch in backend.predict(test, made.image_dir, artifact, **predict_settings):
        assert isinstance(batch, list) and batch, "each batch is a non-empty list"
        for index, raw in batch:
            assert isinstance(index, int) and isinstance(raw, str)
            normalize_prediction(test.set_index("index").loc[index, "entity_name"], raw)  # cleanable
            seen.append(index)
    assert sorted(seen) == sorted(test["index"].tolist())  # every row once, nothing else
    if kind != "answers":
        missing = test.tail(1)
        answers = dict(pair for b in backend.predict(missing, made.image_dir, artifact, **predict_settings)
                       for pair in b)
        expected = ""  # a row whose image is missing answers "" ...
        if kind == "ocr":  # ... or, from a backend that guesses from priors, the guess (ocr: prior_answer)
            from utils.models.ocr.ranker import load_ranker

            row = missing.iloc[0]
            expected = load_ranker(artifact).priors.prior_answer(str(row.get("group_id", "")), row["entity_name"])[0]
            assert expected  # the demo's labels give one
        assert answers == {999: expected}


def test_the_fake_follows_the_real_signatures() -> None:
    import inspect

    from utils.models.ocr.backend import OcrBackend
    from utils.models.paligemma.backend import PaliGemmaBackend

    for method, positional in (("fit", 5), ("predict", 4)):
        signatures = [inspect.signature(getattr(cls, method)) for cls in (OcrBackend, PaliGemmaBackend, AnswerBackend)]
        heads = [list(sig.parameters)[:positional] for sig in signatures]
        assert heads[0] == heads[1] == heads[2], method
        assert all(any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) for sig in signatures)

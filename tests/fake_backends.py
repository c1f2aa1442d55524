"""Backends for tests of the runner: fast, answering from a labels CSV, optionally slow and recording when they run.

They reach the notebook kernels that ``run_all.sh`` starts through ``PRODUCT_VALUES_BACKENDS`` (``utils.models.backend``),
the product's own plug-in seam, so the runner, papermill and the stages run for real around them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

PLUGIN = ("answers=tests.fake_backends:AnswerBackend,gpu_answers=tests.fake_backends:GpuAnswerBackend,"
          "warm_answers=tests.fake_backends:WarmAnswerBackend,counting=tests.fake_backends:CountingBackend")


class AnswerBackend:
    """Fit writes a small artifact (after ``sleep`` seconds); predict answers each row from ``answers_csv`` in
    batches of two, sleeping ``sleep`` seconds per batch, and records its process and time span in ``record_dir``
    (one JSON per process), with a digest (never the value) of each secret its process sees in the environment
    (``secrets``)."""

    name = "answers"

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, sleep: float = 0.0,
            **settings: Any) -> Path:
        time.sleep(sleep)  # a long fit, to be killed in the middle
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "fit.json").write_text(json.dumps({"train": len(train), **settings}))
        return Path(out_dir)

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, answers_csv: str = "",
                sleep: float = 0.0, record_dir: str = "", **settings: Any) -> Iterator[list[tuple[int, str]]]:
        labels = pd.read_csv(answers_csv, keep_default_na=False).set_index("index")["entity_value"] \
            if answers_csv else pd.Series(dtype=str)
        record = Path(record_dir) / f"predict-{os.getpid()}.json" if record_dir else None
        start = time.time()
        seen = {name: hashlib.sha256(os.environ[name].encode()).hexdigest() if os.environ.get(name) else None
                for name in ("HF_TOKEN", "WANDB_API_KEY")}
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"pid": os.getpid(), "start": start, "end": None,
                                          "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "secrets": seen}))
        for s in range(0, len(rows), 2):
            time.sleep(sleep)
            yield [(int(i), str(labels.get(int(i), ""))) for i in rows["index"].iloc[s:s + 2]]
        if record is not None:
            record.write_text(json.dumps({"pid": os.getpid(), "start": start, "end": time.time(),
                                          "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "secrets": seen}))


class WarmAnswerBackend(AnswerBackend):
    """The same, with ``warm``: it records which rows it prepared, in which order (``record_dir/warm-<pid>.json``)."""

    name = "warm_answers"

    def warm(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, record_dir: str = "",
             sleep: float = 0.0, **settings: Any) -> None:
        record = Path(record_dir) / f"warm-{os.getpid()}.json"
        warmed: list[int] = []
        for index in rows["index"]:
            warmed.append(int(index))
            record.write_text(json.dumps({"warmed": warmed, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}))
            time.sleep(sleep / 4)


class GpuAnswerBackend(AnswerBackend):
    """The same, declared as a GPU backend: the runner gives each shard its own GPU."""

    name = "gpu_answers"
    uses_gpu = True


class CountingBackend(AnswerBackend):
    """The same, counting what it is asked: before answering a batch it appends one line ``pid index`` per row to
    ``record_dir/asked-<pid>.txt`` (flushed), so a test sees every row a process predicted, and which process."""

    name = "counting"

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, answers_csv: str = "",
                sleep: float = 0.0, record_dir: str = "", **settings: Any) -> Iterator[list[tuple[int, str]]]:
        log = Path(record_dir) / f"asked-{os.getpid()}.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        inner = super().predict(rows, image_dir, artifact_dir, answers_csv, 0.0, "", **settings)
        for batch in inner:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{os.getpid()} {i}\n" for i, _ in batch))
            time.sleep(sleep)
            yield batch

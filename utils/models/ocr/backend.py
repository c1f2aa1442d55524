"""The ``ocr`` backend: rapidocr reads each image (through a cache), the learned ranker picks the answer.

``OcrBackend`` implements ``utils.models.backend.Backend``: ``fit`` reads every training image once, fits the ranker
(``utils.models.ocr.ranker``) and saves it; ``predict`` answers batch by batch; ``warm`` reads images ahead into the
cache for a running shard.

OCR (``ocr_lookup``) is upright first; an image whose boxes read no quantity at all is OCR'd again turned 90
degrees (``RankerConfig.rotate_fallback``): vertical print, and a second reading of lines the upright pass misread
("10//5A" read again as "100W/5A"). +0.011 dev F1 (3 seeds), dims_dev unchanged. A third pass turned 270 degrees
added nothing the 180-degree classifier does not already turn: without it, dev F1 0.855 -> 0.856, dims_real_dev
and dims_dev unchanged (6 seeds; one dev row fewer with its answer among the candidates), for half the cost of the
turned pass.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.core.units import ENTITY_UNIT_MAP
from utils.data.images import cached_image
from utils.env.console import Every, duration, progress_line, say
from utils.env.fileio import atomic_write_bytes
from utils.models.backend import FIT_SUMMARY
from utils.models.ocr.candidates import extract_candidates
from utils.models.ocr.config import OCR_KEYS, OCR_KEYS_BEFORE, RankerConfig
from utils.models.ocr.engine import DEFAULT_CACHE_ENV, OcrResult
from utils.models.ocr.features import build_table_oof_priors
from utils.models.ocr.policy import f1_counts
from utils.models.ocr.priors import Priors
from utils.models.ocr.ranker import fit_ranker, group_folds, load_ranker, read_meta, row_correct, save_ranker
from utils.models.ocr.reading import Progress, ocr_many, tqdm_progress

# ---- OCR lookups -------------------------------------------------------------------------------------------------

FALLBACK_ROTATIONS = (90,)  # 270 too: nothing more (the 180-degree classifier turns such lines)


def reads_a_quantity(ocr: OcrResult) -> bool:
    """Whether the boxes hold any candidate for any entity (a number with a unit some entity allows)."""
    one_per_unit_set = {units: ent for ent, units in sorted(ENTITY_UNIT_MAP.items())}.values()
    return any(extract_candidates(ocr, ent) for ent in one_per_unit_set)


def ocr_lookup(links: list[str], image_dir: Path, cfg: RankerConfig, progress: Progress | None = None
               ) -> dict[str, OcrResult | None]:
    """OCR (through the cache) every distinct image of ``links``; a dict link -> result (None = no image).

    With ``cfg.rotate_fallback``, an image whose upright boxes read no quantity at all (``reads_a_quantity``) is
    OCR'd again turned by each of ``FALLBACK_ROTATIONS``, and its result holds the boxes of all passes (in upright
    coordinates). The decision rests on the image alone, so a row's answer never depends on which rows share its
    batch or shard. On dev, 71 of 494 images were OCR'd again, and the share of rows whose answer is among the
    candidates rose from 82.4% to 83.4%. ``progress(done, total)`` follows the upright pass's cache misses (see
    ``utils.models.ocr.reading.ocr_many``; ``utils.models.ocr.reading.tqdm_progress()`` draws a bar on stderr).
    """
    uniq = list(dict.fromkeys(links))
    paths = {u: cached_image(image_dir, u) for u in uniq}  # None: a link naming no usable file
    usable = [p for p in paths.values() if p is not None]
    settings = cfg.ocr_settings()
    res = dict(ocr_many(usable, cfg.cache_path(), settings, cfg.workers, cfg.threads, progress))
    out = {u: (None if p is None else res[p]) for u, p in paths.items()}
    again = [u for u, r in out.items() if r is not None and not reads_a_quantity(r)] if cfg.rotate_fallback else []
    if not again:
        return out
    turned = [dict(ocr_many([paths[u] for u in again], cfg.cache_path(), replace(settings, rotate=r), cfg.workers,
                            cfg.threads)) for r in FALLBACK_ROTATIONS]
    for u in again:
        first, more = out[u], [t[paths[u]] for t in turned]
        boxes = first.boxes + [b for m in more if m is not None for b in m.boxes]
        out[u] = OcrResult(first.width, first.height, boxes, first.seconds + sum(m.seconds for m in more if m))
    return out


def console_progress(tag: str, unit: str) -> Progress:
    """A ``progress(done, total)`` callback: a tqdm bar on stderr, and a console line (``say``) every 30 s and at
    the end, which ``run_all.sh`` echoes while the stage runs."""
    bar = tqdm_progress(tag)
    every = Every(30.0)
    started = time.monotonic()

    def update(done: int, total: int) -> None:
        bar(done, total)
        if every(force=done >= total):
            say(progress_line(tag, done, total, started, unit))

    return update


# ---- the backend -------------------------------------------------------------------------------------------------

def _check_rows(df: pd.DataFrame, need: list[str], what: str) -> None:
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise ValueError(f"{what} lacks columns {miss}; has {list(df.columns)}")


class OcrBackend:
    """The CPU backend: rapidocr + learned candidate ranking (see ``utils.models.backend``)."""

    name = "ocr"
    label_table_setting = "prior_csv"  # stage 02 passes train.csv: priors and unit habits from every label
    fit_settings = (RankerConfig,)  # every setting of fit and predict, with its type, default and help
    infer_settings = (RankerConfig,)
    threads_setting = "workers"  # a shard's --threads: OCR processes of one inference thread each
    speed_settings = frozenset({"workers", "cache_dir", "batch_size"})  # how fast, not which answers

    @staticmethod
    def run_environment(work_dir: Path) -> dict[str, str]:
        """One OCR cache for every notebook of a run (``$OCR_CACHE_DIR`` unless set): the fit's reads serve the
        shards, and an idle slot's reading ahead serves the shard it helps."""
        return {DEFAULT_CACHE_ENV: str(Path(work_dir) / "ocr_cache")}

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path,
            progress: Progress | None = None, **settings: Any) -> Path:
        """Fit the ranker on ``train`` (abstain policy per ``empty_share``), report ``val``, refit on both, save.

        The OCR of the training images shows ``progress(done, total)`` (default: a tqdm bar on stderr); the saved
        metrics hold ``fit_images``, ``fit_ocr_seconds``, ``fit_images_per_s`` and ``fit_seconds`` (the total), and
        ``fit_summary.json`` holds them for stage 02's display (``val_f1`` among them)."""
        cfg = RankerConfig.from_settings(**settings)
        need = ["image_link", "group_id", "entity_name", "entity_value"]
        _check_rows(train, need, "train")
        val = val if val is not None else train.iloc[:0]
        if len(val):
            _check_rows(val, need, "val")
        t0 = time.perf_counter()
        train = train.assign(entity_value=train["entity_value"].fillna("").astype(str)).reset_index(drop=True)
        val = val.assign(entity_value=val["entity_value"].fillna("").astype(str)).reset_index(drop=True)
        cols = ["group_id", "entity_name", "entity_value"]
        extra = None
        if cfg.prior_csv:  # the extra label table, minus the images we fit on
            extra = pd.read_csv(cfg.prior_csv, dtype=str).fillna("")
            _check_rows(extra, ["entity_name", "entity_value"], f"prior_csv {cfg.prior_csv}")
            extra = extra[~extra["image_link"].isin(set(train["image_link"]) | set(val["image_link"]))] \
                if "image_link" in extra else extra
            extra = extra[[c for c in cols if c in extra]]
        extra_l = [extra] if extra is not None else []
        priors = Priors.from_labels(pd.concat([train[cols]] + extra_l, ignore_index=True))  # val labels unseen
        t_ocr = time.perf_counter()
        ocr = ocr_lookup(list(train["image_link"]) + list(val["image_link"]), Path(image_dir), cfg,
                         progress=progress if progress is not None else console_progress("02 fit OCR", "images"))
        ocr_seconds = time.perf_counter() - t_ocr
        say(f"[02] OCR of {len(ocr)} training images: {duration(ocr_seconds)} ({len(ocr) / max(ocr_seconds, 1e-9):.2f} "
            "images/s, cache hits included); fitting the ranker")
        lookup = ocr.get
        k = max(2, min(cfg.folds, train["group_id"].nunique()))
        folds = group_folds(train["group_id"].to_numpy(), k, cfg.seed)
        ranker = fit_ranker(train, lookup, cfg, priors, table=build_table_oof_priors(train, lookup, extra, folds))
        metrics = {f"train/{name}": v for name, v in ranker.metrics.items()}
        if len(val):
            ans = ranker.predict_rows(val, lookup)
            correct = row_correct(val, ans)
            pred = np.array([bool(a) for a in ans])
            has = val["entity_value"].astype(bool).to_numpy()
            metrics["val/f1"] = f1_counts(correct, pred, has)
            metrics["val/rows"] = float(len(val))
            both = pd.concat([train, val], ignore_index=True)
            priors = Priors.from_labels(pd.concat([both[cols]] + extra_l, ignore_index=True))
            folds = group_folds(both["group_id"].to_numpy(), k, cfg.seed)
            final = fit_ranker(both, lookup, RankerConfig(**{**asdict(cfg), "threshold": ranker.threshold}), priors,
                               table=build_table_oof_priors(both, lookup, extra, folds))
            final.metrics = {**ranker.metrics}
            ranker = final
        metrics["fit_seconds"] = time.perf_counter() - t0
        # each training image is read once (the lookup above); images/s over the OCR step, cache hits included
        metrics.update(fit_images=float(len(ocr)), fit_ocr_seconds=ocr_seconds,
                       fit_images_per_s=len(ocr) / max(ocr_seconds, 1e-9))
        ranker.metrics = {name: float(v) for name, v in metrics.items()}
        out_dir = save_ranker(ranker, Path(out_dir), {"backend": self.name})
        summary = {"settings": asdict(cfg), "metrics": {
            **({"val_f1": metrics["val/f1"]} if "val/f1" in metrics else {}),
            **{name: v for name, v in ranker.metrics.items() if name != "val/f1"}}}
        atomic_write_bytes(out_dir / FIT_SUMMARY, json.dumps(summary, indent=2).encode("utf-8"))
        _log_run(cfg, ranker.metrics, out_dir)
        return out_dir

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
                ) -> Iterator[list[tuple[int, str]]]:
        """Yield ``(index, raw answer)`` per batch; ``""`` for a missing image or when the ranker abstains."""
        ranker = load_ranker(artifact_dir)
        cfg = RankerConfig.from_settings(**{**_saved_ocr_settings(ranker.config), **settings})
        _check_rows(rows, ["index", "image_link", "entity_name"], "rows")
        for s in range(0, len(rows), max(1, cfg.batch_size)):
            batch = rows.iloc[s: s + cfg.batch_size]
            ocr = ocr_lookup(list(batch["image_link"]), Path(image_dir), cfg)
            ans = ranker.predict_rows(batch, ocr.get)
            yield [(int(i), a) for i, a in zip(batch["index"], ans)]

    def warm(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any) -> None:
        """OCR ``rows``' images into the cache, in their order, batch by batch, the way ``predict`` with these
        settings reads them (turned pass included), so that a shard reaching them finds them read
        (``utils.pipeline.warm``: an idle slot helps a running shard from its last rows)."""
        saved = read_meta(artifact_dir)["settings"]  # the OCR settings only: no models, no priors
        cfg = RankerConfig.from_settings(**{**_saved_ocr_settings(saved), **settings})
        for s in range(0, len(rows), max(1, cfg.batch_size)):
            ocr_lookup(list(rows["image_link"].iloc[s: s + cfg.batch_size]), Path(image_dir), cfg)


def _saved_ocr_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The OCR settings a ranker was fitted with (so predict and warm OCR the same way unless overridden)."""
    return {**OCR_KEYS_BEFORE, **{k: config[k] for k in OCR_KEYS if k in config}}


def _log_run(cfg: RankerConfig, metrics: dict[str, float], out_dir: Path) -> None:
    """Log config and metrics with utils.env.tracking (mode from the environment; never hangs or fails the fit)."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return
    try:
        from utils.env.tracking import init_run

        run = init_run(cfg.wandb_project, asdict(cfg), "fit-ocr", dir=str(out_dir))
    except Exception as e:  # tracking must never break a fit
        print(f"wandb logging skipped: {e}")
        return
    if run is None:
        return
    try:
        run.log(metrics)
        for k, v in metrics.items():
            run.summary[k] = v
    finally:
        run.finish()

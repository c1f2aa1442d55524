"""The ocr backend's settings: one dataclass whose fields are the ``**settings`` of its fit and predict.

The same names are the stage parameters' ``settings`` for ``--backend ocr`` (``run_all.sh --settings '{...}'``).
The OCR ones (``max_side`` ... ``use_cls``) are saved with a fitted ranker so that predict reads images the way the
fit did; the rest shape the ranker (``utils.models.ocr.ranker``) and its abstain policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.models.ocr.engine import DEFAULT_ENGINE, DEFAULT_MAX_SIDE, OcrSettings
from utils.models.ocr.reading import default_cache_dir

#: The settings that say how images are read: saved with the ranker, predict uses them unless told otherwise.
OCR_KEYS = ("max_side", "det_side", "rotate_fallback", "cache_dir", "engine", "precision", "rec_batch", "use_cls",
            "charset")
#: What an OCR setting was before it existed, for a ranker saved then (it read images that way).
OCR_KEYS_BEFORE = {"charset": "all"}


@dataclass
class RankerConfig:
    """Settings of the OCR backend (``**settings`` of fit/predict are these field names)."""

    cache_dir: str | None = field(
        default=None, metadata={"help": "OCR cache folder (outside the repo); default $OCR_CACHE_DIR, else none"}
    )
    max_side: int = field(
        default=DEFAULT_MAX_SIDE, metadata={"help": "longest image side before OCR (0 = full resolution)"}
    )
    det_side: int = field(
        default=0, metadata={"help": "longest side the text detector sees (0 = max_side); recognition still reads "
                                     "the max_side image"}
    )
    workers: int = field(default=2, metadata={"help": "OCR processes"})
    threads: int = field(default=1, metadata={"help": "inference threads per OCR process"})
    engine: str = field(default=DEFAULT_ENGINE, metadata={"help": "OCR inference engine: 'openvino' or "
                                                                   "'onnxruntime' (same shipped models)"})
    precision: str = field(default=OcrSettings.precision, metadata={"help": "openvino's inference precision: "
                                                                           "'f32' (onnxruntime's texts) or 'bf16' "
                                                                           "(faster on CPUs with AMX)"})
    rec_batch: int = field(default=OcrSettings.rec_batch, metadata={"help": "text lines per recognition batch"})
    charset: str = field(default=OcrSettings.charset, metadata={"help": "characters recognition reads: 'no-cjk' "
                                                                         "(12% faster; Chinese, Japanese, Korean "
                                                                         "and emoji left out) or 'all'"})
    use_cls: bool = field(default=OcrSettings.use_cls, metadata={"help": "rapidocr's 180-degree text classifier"})
    rotate_fallback: bool = field(
        default=True, metadata={"help": "OCR an image again turned 90 degrees when its upright OCR reads no "
                                        "quantity at all; its rows then read the boxes of both passes (vertical "
                                        "print, and a second reading of misread lines)"}
    )
    model: str = field(default="hgb", metadata={"help": "'hgb' (HistGradientBoosting) or 'logreg'"})
    per_family: bool = field(
        default=True, metadata={"help": "one model per entity family (dimensions / the rest) besides the joint one: "
                                        "a fit on mixed entities then serves each as well as a fit on it alone"}
    )
    folds: int = field(default=5, metadata={"help": "group folds for out-of-fold threshold tuning"})
    threshold: float | None = field(
        default=None, metadata={"help": "fixed abstain threshold; None = fitted to empty_share (see there)"}
    )
    empty_share: float | None = field(
        default=None, metadata={"help": "share of rows with an empty truth expected where the backend is used; "
                                        "None = the training labels' share (0 for the challenge's labels). 0: "
                                        "never abstain (an empty answer costs as much as a wrong one when the "
                                        "truth has a value); above 0: the abstain threshold is tuned for F1 on "
                                        "out-of-fold scores with the empty-labelled rows weighted to this share"}
    )
    prior_answer: bool = field(
        default=True, metadata={"help": "a row with no candidate (nothing read, no image) answers the commonest "
                                        "label of its product group and entity in the training labels (of the "
                                        "entity alone for a group with few labels), when its share passes the "
                                        "abstain threshold"}
    )
    prior_csv: str | None = field(
        default=None, metadata={"help": "extra labels (train.csv) for value-plausibility priors; rows of fit's "
                                        "own train set are always used"}
    )
    batch_size: int = field(default=32, metadata={"help": "rows per predicted batch"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    pair_model: bool = field(
        default=True, metadata={"help": "when the pick has a printed conversion among the row's candidates ('100 g "
                                        "(3.53 oz)'), let a small model fitted on the training rows' pairs choose "
                                        "the unit (product group's unit habit, print order, brackets, metric)"}
    )
    net_rule: bool = field(
        default=True, metadata={"help": "answer the amount declared right after 'Net Wt' (when the image declares "
                                        "one amount) instead of the ranker's pick, unless that pick is the same "
                                        "amount in another unit"}
    )
    wandb_project: str = field(default="amazon-ml-ocr", metadata={"help": "wandb project for the fit run"})

    @classmethod
    def from_settings(cls, **settings: Any) -> RankerConfig:
        """Build from keyword settings; unknown names raise with the valid list."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(settings) - names)
        if bad:
            raise TypeError(f"unknown OCR backend settings {bad}; valid: {sorted(names)}")
        return cls(**settings)

    def ocr_settings(self) -> OcrSettings:
        return OcrSettings(max_side=self.max_side or None, det_side=self.det_side or None, engine=self.engine,
                           precision=self.precision, rec_batch=self.rec_batch, use_cls=self.use_cls,
                           charset=self.charset)

    def cache_path(self) -> Path | None:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

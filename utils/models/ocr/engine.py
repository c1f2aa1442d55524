"""OCR with rapidocr 3.x (models shipped in the wheel, run by OpenVINO or onnxruntime): text boxes with positions
and scores.

The engine: OpenVINO (``OcrSettings.engine``, default) runs the same ONNX models as onnxruntime, read as they are,
at f32 the same texts (20 of 20 dev images) for half the CPU (0.94 vs 1.80 CPU s per image on this project's Xeon;
the detector 0.52 vs 1.41 s, the recogniser the same 0.37 s). Its threads must not be pinned to cores, or two
worker processes share one. ``precision`` "bf16-det" / "bf16" are faster still on CPUs with AMX / AVX512-BF16 at
slightly different texts (``_openvino_precision``). Measured on the rest (``bench/ocr_speed.py --cpu-time``, CPU
per image relative to the default): no 180-degree classifier 0.95x (no gain), recognition batches of 1 / 16 / 32
lines 0.80x / 0.77x / 0.76x of rapidocr's 6, ``det_side`` 1120 / 960 1.06x / 1.31x (fewer answers read, below);
two workers of one thread beat one worker of two threads and two of two. Lines padded to 160 px instead of
rapidocr's 320 read 25% faster but other texts (dims_real_dev -0.020 on 3 seeds); the recogniser in bf16 loses
more than the detector in bf16 (dev -0.007, dims_dev -0.013). Around rapidocr's detector,
``utils.models.ocr.speedups`` normalises the input in float32 (the same bits, 61 -> 4 ms) and compiles the model
for each recurring input shape (0.42 -> 0.35 s): 0.96 -> 0.81 CPU s per image, the same texts and boxes.

Images are downscaled to ``max_side`` (1280) before OCR: on the 494 dev images the OCR oracle was 76.4% at 1280 vs
75.8% at full resolution and 73.4% at 1024, with the ranker's F1 unchanged vs full resolution, while the median OCR
time per image fell from 4.9 s to 1.0 s (shared machine). Many images are read through the cache and a process pool
by ``utils.models.ocr.reading.ocr_many``. onnxruntime runs with its memory arena on (rapidocr turns it off; on, the
same output 1.34x faster on 2 workers). ``det_side`` lets only the text detector see a smaller image (960: 1.4x
faster again, but the dev oracle fell from 82.0% to 78.4%, so it is off by default). ``rotate`` OCRs the image
turned by 90/180/270 degrees and maps the boxes back into the upright image (``utils.models.ocr.backend.ocr_lookup``
uses it as a fallback for images whose upright OCR reads no quantity).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utils.data.images import load_image

DEFAULT_MAX_SIDE = 1280
ENGINES = ("openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16", "bf16-det")
CHARSETS = ("no-cjk", "all")
#: (detector, classifier and recogniser) precision per ``OcrSettings.precision``
PRECISION_PER_MODEL = {"f32": ("f32", "f32"), "bf16": ("bf16", "bf16"), "bf16-det": ("bf16", "f32")}
DEFAULT_ENGINE = "openvino"
DEFAULT_CACHE_ENV = "OCR_CACHE_DIR"
CACHE_VERSION = 1


@dataclass(frozen=True)
class OcrSettings:
    """What changes OCR output; part of the cache key."""

    max_side: int | None = DEFAULT_MAX_SIDE  # longest image side before OCR; None = full resolution
    text_score: float = 0.5  # rapidocr's minimum recognition score to keep a box
    use_cls: bool = True  # rapidocr's 180-degree text classifier
    det_side: int | None = None  # longest side the text detector sees (recognition still reads max_side crops)
    rotate: int = 0  # degrees (0, 90, 180, 270) the image is turned counter-clockwise before OCR; boxes come back
    # in the upright image's pixels
    engine: str = DEFAULT_ENGINE  # inference engine of the shipped models: "openvino" or "onnxruntime"
    rec_batch: int = 6  # text lines per recognition batch (rapidocr's rec_batch_num; lines are padded per batch)
    charset: str = "no-cjk"  # the characters recognition reads: "no-cjk" (12% faster, the same texts but where an
    # image shows Chinese, Japanese or Korean characters: utils.models.ocr.speedups.narrow_recogniser) or "all"
    # (rapidocr's 18,709)
    precision: str = "f32"  # openvino's inference precision: "f32" (the texts onnxruntime reads), "bf16-det"
    # (the detector in bf16) or "bf16" (all models): faster where the CPU has AMX / AVX512-BF16, slightly different
    # texts (see PRECISION_PER_MODEL); onnxruntime always runs f32

    def __post_init__(self) -> None:
        if self.rotate not in (0, 90, 180, 270):
            raise ValueError(f"rotate must be 0, 90, 180 or 270, not {self.rotate!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if int(self.rec_batch) < 1:
            raise ValueError(f"rec_batch must be >= 1, not {self.rec_batch!r}")
        if self.charset not in CHARSETS:
            raise ValueError(f"charset must be one of {CHARSETS}, not {self.charset!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")

    def key(self) -> str:
        """A short stable hash of the settings (and the cache format version)."""
        d = asdict(self)
        for name, value in _KEY_LEGACY.items():  # a field at the value it had before it existed keeps the old key
            if d[name] == value:
                del d[name]
        if self.engine == "onnxruntime":  # precision is openvino's setting (and always named in its key)
            d.pop("precision", None)
        raw = json.dumps({**d, "v": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha1(raw.encode()).hexdigest()[:10]


#: Fields added after the cache format was fixed, with the behaviour they had before: left out of the key there.
_KEY_LEGACY: dict[str, Any] = {"rotate": 0, "engine": "onnxruntime", "rec_batch": 6, "charset": "all"}


@dataclass
class OcrBox:
    """One recognised text line: its text, recognition score and quadrilateral (pixels of the OCR'd image)."""

    text: str
    score: float
    quad: list[list[float]]  # 4 points (x, y), clockwise from top-left as rapidocr returns them

    @property
    def x0(self) -> float:
        return min(p[0] for p in self.quad)

    @property
    def x1(self) -> float:
        return max(p[0] for p in self.quad)

    @property
    def y0(self) -> float:
        return min(p[1] for p in self.quad)

    @property
    def y1(self) -> float:
        return max(p[1] for p in self.quad)

    @property
    def angle(self) -> float:
        """Angle of the text baseline in degrees (0 = horizontal, +-90 = vertical)."""
        (ax, ay), (bx, by) = self.quad[0], self.quad[1]
        return math.degrees(math.atan2(by - ay, bx - ax))

    @property
    def height(self) -> float:
        """Text line height in pixels (the quad's short side, so rotated text measures right)."""
        (bx, by), (cx, cy) = self.quad[1], self.quad[2]
        return math.hypot(cx - bx, cy - by)

    @property
    def length(self) -> float:
        """Length of the text line along its baseline, in pixels."""
        (ax, ay), (bx, by) = self.quad[0], self.quad[1]
        return math.hypot(bx - ax, by - ay)


@dataclass
class OcrResult:
    """All boxes of one image, with the size of the image as it was OCR'd (for relative positions)."""

    width: int
    height: int
    boxes: list[OcrBox] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 4),
            "boxes": [{"text": b.text, "score": round(b.score, 4), "quad": b.quad} for b in self.boxes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OcrResult:
        boxes = [OcrBox(b["text"], float(b["score"]), [list(map(float, p)) for p in b["quad"]]) for b in data["boxes"]]
        return cls(int(data["width"]), int(data["height"]), boxes, float(data.get("seconds", 0.0)))

    @property
    def text(self) -> str:
        """All box texts joined by newlines, in reading order."""
        return "\n".join(b.text for b in self.boxes)


class OcrEngine:
    """A lazily built rapidocr instance with fixed settings and thread count."""

    def __init__(self, settings: OcrSettings | None = None, threads: int = 1) -> None:
        self.settings = settings or OcrSettings()
        self.threads = int(threads)
        self._engine = None
        self.calls = 0  # number of images actually OCR'd (not served from cache)

    def _get(self):
        if self._engine is None:
            # rapidocr (and the speedups built on it) load here, when an image is read, not when the module is imported
            from rapidocr import RapidOCR

            from utils.models.ocr.speedups import install as install_speedups
            from utils.models.ocr.speedups import narrow_recogniser, outside_cjk

            engine = RapidOCR(params=rapidocr_params(self.settings, self.threads))
            openvino = self.settings.engine == "openvino"
            # every model compiled now, not at the first image that needs it; on openvino each with the precision
            # asked (onnxruntime always runs f32)
            det, rec = PRECISION_PER_MODEL[self.settings.precision] if openvino else (None, None)
            with _openvino_precision(det):
                engine._load_det_model()
            with _openvino_precision(rec):
                if self.settings.use_cls:
                    engine._load_cls_model()
                engine._load_rec_model()
            install_speedups(engine, openvino=openvino)
            if self.settings.charset == "no-cjk":
                narrow_recogniser(engine.text_rec, outside_cjk, openvino=openvino)
            self._engine = engine
        return self._engine

    def run_image(self, image) -> OcrResult:
        """OCR a PIL image (already scaled) and return its boxes."""
        import numpy as np

        t0 = time.perf_counter()
        arr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()  # rapidocr expects BGR like cv2
        out = self._get()(arr)
        self.calls += 1
        boxes: list[OcrBox] = []
        if out.boxes is not None and out.txts:
            for quad, txt, sc in zip(out.boxes, out.txts, out.scores):
                boxes.append(OcrBox(str(txt), float(sc), [[float(x), float(y)] for x, y in quad]))
        return OcrResult(image.width, image.height, boxes, time.perf_counter() - t0)

    def run_path(self, path: Path, rotate: int | None = None) -> OcrResult | None:
        """Load (with downscale) and OCR one image file, turned by ``rotate`` (default ``settings.rotate``: turning
        needs no other model, so one engine serves every rotation); None when the image is missing or
        undecodable."""
        image = load_image(Path(path), max_side=self.settings.max_side)
        if image is None:
            return None
        rotate = self.settings.rotate if rotate is None else rotate
        if not rotate:
            return self.run_image(image)
        res = self.run_image(image.rotate(rotate, expand=True))
        return unrotate(res, image.width, image.height, rotate)


def shipped_models() -> dict[str, Path]:
    """The ONNX models inside the rapidocr wheel, by task ("det", "cls", "rec"): OpenVINO reads them as they are
    (no download, no conversion), the recogniser's character list included (ONNX metadata)."""
    import rapidocr

    root = Path(rapidocr.__file__).parent / "models"
    out: dict[str, Path] = {}
    for task in ("det", "cls", "rec"):
        found = sorted(root.glob(f"*_{task}_*.onnx")) or sorted(root.glob(f"*{task}*.onnx"))
        if len(found) != 1:
            raise RuntimeError(f"expected one shipped {task} model in {root}, found {[f.name for f in found]}")
        out[task] = found[0]
    return out


@contextmanager
def _openvino_precision(precision: str | None) -> Iterator[None]:
    """While open, rapidocr's OpenVINO sessions compile with ``INFERENCE_PRECISION_HINT`` = ``precision`` (None:
    nothing changes).

    rapidocr passes no precision to OpenVINO, whose CPU plugin then picks bf16 on CPUs with AMX / AVX512-BF16. On
    this project's Xeon (one thread, 20 dev images at 1280 px, CPU seconds per image): onnxruntime 1.80, openvino
    f32 0.94 (the same texts as onnxruntime on 20 of 20 images), detector bf16 0.70 (15 of 20), all bf16 0.56 (10
    of 20). Against f32, 6 fold seeds: bf16-det dev +0.003, dims_real_dev -0.003, dims_dev -0.007; bf16 dev
    +0.003, dims_real_dev -0.002, dims_dev -0.009 (dims_dev's oracle unchanged)."""
    if precision is None:
        yield
        return
    import rapidocr.inference_engine.openvino.main as ov_main

    plain = ov_main.CPUConfig

    class WithPrecision(plain):  # type: ignore[misc, valid-type]
        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "INFERENCE_PRECISION_HINT": precision}

    ov_main.CPUConfig = WithPrecision
    try:
        yield
    finally:
        ov_main.CPUConfig = plain


def rapidocr_params(settings: OcrSettings, threads: int = 1) -> dict[str, Any]:
    """rapidocr's ``params`` for ``settings``, run on ``threads`` threads."""
    params: dict[str, Any] = {
        "Global.log_level": "error",
        "Global.text_score": settings.text_score,
        "Global.use_cls": settings.use_cls,
        "Rec.rec_batch_num": int(settings.rec_batch),
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        # rapidocr turns onnxruntime's memory arena off; on: the same boxes and texts (checked on 20 dev
        # images), detection 1.8x and OCR 1.4x faster, about 0.4 GB more memory per worker
        "EngineConfig.onnxruntime.enable_cpu_mem_arena": True,
    }
    if settings.det_side:
        params.update({"Det.limit_type": "max", "Det.limit_side_len": int(settings.det_side)})
    if settings.engine == "openvino":
        if importlib.util.find_spec("openvino") is None:
            raise ImportError("OcrSettings(engine='openvino') needs the openvino package (pip install openvino); "
                              "engine='onnxruntime' runs without it")
        from rapidocr.utils.typings import EngineType

        params["EngineConfig.openvino.inference_num_threads"] = threads
        # OpenVINO pins its inference threads to cores; two worker processes would then share one core (2 workers
        # on 2 cores ran at 56% of the CPU they could use: 0.86 images/s for 1.30 CPU s per image)
        params["EngineConfig.openvino.enable_cpu_pinning"] = False
        for task, path in shipped_models().items():
            params[f"{task.capitalize()}.engine_type"] = EngineType.OPENVINO
            params[f"{task.capitalize()}.model_path"] = str(path)
    return params


def unrotate(res: OcrResult, width: int, height: int, rotate: int) -> OcrResult:
    """Map the boxes of an image turned ``rotate`` degrees counter-clockwise (PIL ``rotate(.., expand=True)``) back
    into the upright ``width`` x ``height`` image. Each quad keeps its point order, so a line read along the turned
    image's rows comes back with its true angle (+-90 for text printed vertically)."""
    def back(u: float, v: float) -> list[float]:
        if rotate == 90:
            return [width - v, u]
        if rotate == 180:
            return [width - u, height - v]
        if rotate == 270:
            return [v, height - u]
        return [u, v]

    boxes = [OcrBox(b.text, b.score, [back(u, v) for u, v in b.quad]) for b in res.boxes]
    return OcrResult(width, height, boxes, res.seconds)


_ENGINES: dict[tuple[OcrSettings, int], OcrEngine] = {}


def get_engine(settings: OcrSettings, threads: int = 1) -> OcrEngine:
    """A shared engine per (settings, threads) in this process, so models load once per process."""
    key = (settings, int(threads))
    if key not in _ENGINES:
        _ENGINES[key] = OcrEngine(settings, threads)
    return _ENGINES[key]

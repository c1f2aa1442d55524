"""The memorisation check, for any fine-tuned backend: the one honest proof, without real weights, that a fit learns
and its answers come back through ``predict`` and the cleaning step.

A tiny random model of the backend's family (built locally: ``utils.models.paligemma.tiny``, ``utils.models.vlm.tiny``)
is fine-tuned with the backend's own ``fit`` on rendered labels ("500 g", "12 V", "30 cm", ...; ``make_synthetic_set``),
then answers the same rows through the backend's ``predict`` (the merged model stage 03 runs), and every answer is
cleaned by ``utils.core.units.normalize_prediction`` and compared with the label's cleaned form. "The loss went down"
does not prove this: a label off by one token, a mask that hides the answer, a prompt that differs between training
and inference, or an image the answer no longer sees all still lower the loss but fail here.

``utils.models.paligemma.memorise`` and the vlm tests call ``memorise``; the benches (``bench/tiny_overfit*.py``) run
the longer versions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYNTHETIC_ANSWERS: tuple[tuple[str, str, str], ...] = (
    # (entity_name, text printed on the image, label as in train.csv)
    ("item_weight", "500 g", "500.0 gram"),
    ("voltage", "12 V", "12.0 volt"),
    ("width", "30 cm", "30.0 centimetre"),
    ("item_weight", "2 kg", "2.0 kilogram"),
    ("wattage", "60 W", "60.0 watt"),
    ("height", "15 mm", "15.0 millimetre"),
    ("item_volume", "750 ml", "750.0 millilitre"),
    ("depth", "8 in", "8.0 inch"),
    ("voltage", "220 V", "220.0 volt"),
    ("item_weight", "16 oz", "16.0 ounce"),
    ("wattage", "1200 W", "1200.0 watt"),
    ("width", "45 cm", "45.0 centimetre"),
    ("maximum_weight_recommendation", "150 kg", "150.0 kilogram"),
    ("item_volume", "2 l", "2.0 litre"),
    ("height", "3 ft", "3.0 foot"),
    ("item_weight", "250 mg", "250.0 milligram"),
)


def render_text_image(text: str, size: int = 96, seed: int = 0):
    """A product-label-like picture: ``text`` in black on a light background (Pillow's scalable default font)."""
    import random

    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(f"{text}|{seed}")
    shade = rng.randint(215, 255)
    im = Image.new("RGB", (size, size), (shade, rng.randint(215, 255), rng.randint(215, 255)))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(8, size // 4))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max(0, (size - (right - left)) // 2 - left)
    y = max(0, (size - (bottom - top)) // 2 - top)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return im


def make_synthetic_set(out_dir: str | Path, answers=SYNTHETIC_ANSWERS, size: int = 96):
    """Write one rendered image per answer into ``out_dir/images``; return train-style rows with an ``index``.

    Rows carry ``index, image_link, group_id, entity_name, entity_value`` like ``train.csv``; the image for
    ``image_link`` sits where ``utils.data.images.image_path(out_dir / "images", image_link)`` looks for it.
    """
    import pandas as pd

    images = Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (entity, printed, label) in enumerate(answers):
        name = f"synthetic_{i:03d}.png"
        render_text_image(printed, size, seed=i).save(images / name)
        rows.append(
            {
                "index": i,
                "image_link": f"https://example.invalid/images/{name}",
                "group_id": 1000 + i,
                "entity_name": entity,
                "entity_value": label,
            }
        )
    return pd.DataFrame(rows)


@dataclass
class Memorised:
    """What the check found: exact matches among the rows, one line per row, and the times."""

    right: int
    rows: int
    lines: list[str] = field(default_factory=list)
    train_s: float = 0.0
    predict_s: float = 0.0

    def summary(self) -> str:
        """``right/rows`` as the benches print it."""
        return f"{self.right}/{self.rows}"


def memorise(backend: Any, model_dir: str | Path, work: str | Path, rows: int = 16, **settings: Any) -> Memorised:
    """Fine-tune ``backend`` (a ``utils.models.backend.Backend``) from ``model_dir`` on the first ``rows`` rendered
    labels with ``settings``, answer the same rows and count exact matches after cleaning."""
    from utils.core.units import normalize_prediction

    work = Path(work)
    start = time.perf_counter()
    table = make_synthetic_set(work / "data", answers=SYNTHETIC_ANSWERS[:rows], size=96)
    image_dir = work / "data" / "images"
    artifact = backend.fit(table, None, image_dir, work / "run", model_id=str(model_dir), **settings)
    trained = time.perf_counter()
    answers: dict[int, str] = {}
    for batch in backend.predict(table, image_dir, artifact, batch_size=16):
        answers.update(batch)
    result = Memorised(right=0, rows=len(table), train_s=trained - start, predict_s=time.perf_counter() - trained)
    for index, entity, label in zip(table["index"], table["entity_name"], table["entity_value"]):
        pred = normalize_prediction(entity, answers[index])
        ok = pred != "" and pred == normalize_prediction(entity, label)
        result.right += ok
        result.lines.append(f"{'ok  ' if ok else 'MISS'} {entity:30s} raw={answers[index]!r:24s} -> {pred!r} "
                            f"(label {label!r})")
    return result

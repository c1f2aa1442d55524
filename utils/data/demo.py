"""The built-in demo data set: product-like images rendered with known answers.

``make_demo_data`` draws small "product photos" with Pillow: a coloured background, a label or box, the asked value
printed somewhere among distractor text ("Net Wt. 16 oz (454 g)", "220-240V~ 50Hz", "1200 W", "Max load 150 kg",
"500 ml", dimension drawings with arrows for width, height and depth), a slight rotation and pixel noise. It writes
the same files the challenge ships (``train.csv``, ``test.csv``) plus the answers for the test rows
(``test_labels.csv``) and the images named by the base name of their ``image_link``
(``https://demo.invalid/images/d0001.jpg`` -> ``images/d0001.jpg``). Everything is deterministic given the seed.

CLI: ``python -m utils.demo OUT_DIR [--n-train N] [--n-test N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from utils.env.fileio import atomic_write_bytes

DEMO_URL_PREFIX = "https://demo.invalid/images/"
DEFAULT_N_TRAIN = 240  # measured: the whole default demo runs in about 3 minutes on 2 busy cores
DEFAULT_N_TEST = 100
IMAGE_SIZE = (480, 480)
EMPTY_FRACTION = 0.12  # rows whose image does not state the asked entity
GROUP_IDS = (101697, 187128, 241591, 281678, 459516, 752266)

DEMO_ENTITIES = (
    "item_weight",
    "item_volume",
    "voltage",
    "wattage",
    "maximum_weight_recommendation",
    "width",
    "height",
    "depth",
)

DISTRACTORS = (
    "PREMIUM QUALITY", "Made in Germany", "Model X-200", "Batch 2024-07", "Best before 12/2027",
    "Keep dry", "100% natural", "ACME Corp.", "Item No. 48213", "Recyclable", "Since 1987",
    "New formula", "Pack of 3", "Lot 5521", "Dishwasher safe", "CE", "Made in China",
)
BRANDS = ("ACME", "NORDA", "Vitalo", "KRAFTON", "Lumo", "ORBIS", "Zenit", "Pureva")


@dataclass(frozen=True)
class DemoData:
    """Where the demo files are, and how many rows each table has."""

    root: Path
    train_csv: Path
    test_csv: Path
    labels_csv: Path
    image_dir: Path
    n_train: int
    n_test: int


@dataclass(frozen=True)
class _Item:
    """One rendered product: its entity, the truth for it ("" when absent) and how to draw it."""

    entity_name: str
    entity_value: str
    lines: list[str]  # text lines on the label; the value is among them (unless absent)
    drawing: dict[str, str] | None = None  # dimension drawing labels: {"width": "30 cm", ...}


def _num(value: float) -> str:
    """A printed number: integers without decimals, else up to one decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _label(value: float, unit: str, rng: random.Random) -> str:
    """The ground-truth spelling, mixing "500.0 gram" and "500 gram" like the real labels."""
    if float(value).is_integer() and rng.random() < 0.3:
        return f"{int(value)} {unit}"
    return f"{float(value)} {unit}"


def _weight(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        oz = rng.choice([4, 6, 8, 12, 16, 24, 32])
        return f"Net Wt. {oz} oz ({round(oz * 28.35)} g)", _label(oz, "ounce", rng)
    if kind == 1:
        g = rng.choice([50, 100, 125, 200, 250, 400, 500, 750])
        return f"NET WEIGHT {g}g", _label(g, "gram", rng)
    kg = rng.choice([1, 1.5, 2, 2.5, 5, 10])
    return f"Net weight: {_num(kg)} kg", _label(kg, "kilogram", rng)


def _volume(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        ml = rng.choice([100, 250, 330, 500, 750])
        return f"{ml} ml", _label(ml, "millilitre", rng)
    if kind == 1:
        litre = rng.choice([1, 1.5, 2, 5])
        return f"Contents {_num(litre)} L", _label(litre, "litre", rng)
    floz = rng.choice([8, 12, 16, 20])
    return f"{floz} fl oz", _label(floz, "fluid ounce", rng)


def _voltage(rng: random.Random) -> tuple[str, str]:
    volts = rng.choice([3.7, 5, 9, 12, 24, 110, 120, 230])
    return rng.choice(["Input: {v}V DC", "Rated voltage {v}V", "{v} V"]).format(v=_num(volts)), _label(
        volts, "volt", rng
    )


def _wattage(rng: random.Random) -> tuple[str, str]:
    watts = rng.choice([40, 60, 100, 500, 800, 1000, 1200, 1500, 2000])
    return rng.choice(["{w} W", "Power: {w}W", "{w} Watt"]).format(w=watts), _label(watts, "watt", rng)


def _max_weight(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.6:
        kg = rng.choice([50, 100, 120, 150, 200, 300])
        return f"Max load {kg} kg", _label(kg, "kilogram", rng)
    lb = rng.choice([100, 250, 330, 400])
    return f"Max. capacity {lb} lbs", _label(lb, "pound", rng)


_TEXT_MAKERS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "item_weight": _weight,
    "item_volume": _volume,
    "voltage": _voltage,
    "wattage": _wattage,
    "maximum_weight_recommendation": _max_weight,
}

# What else a product of each kind prints (never the asked entity's value itself).
_SIDE_TEXT: dict[str, tuple[str, ...]] = {
    "item_weight": ("Serving size 30 g", "Calories 120", "Protein 8 g"),
    "item_volume": ("Alc. 5% vol", "Best served cold", "Serves 4"),
    "voltage": ("2000 mAh", "Output 2.1 A", "50/60 Hz"),
    "wattage": ("220-240V~ 50/60Hz", "AC 230V", "Class II"),
    "maximum_weight_recommendation": ("Weight 12 kg", "Steel frame", "Height 90 cm"),
}


def _dimension_item(entity: str, rng: random.Random, absent: bool) -> _Item:
    """A dimension drawing: arrows with labels for width and height, depth only sometimes."""
    unit_short, unit_full = rng.choice([("cm", "centimetre"), ("mm", "millimetre"), ("in", "inch")])
    scale = {"cm": [10, 15, 20, 25, 30, 40, 45, 60], "mm": [80, 120, 150, 200, 250, 320], "in": [4, 6, 8, 10, 12, 18]}
    w, h, d = (rng.choice(scale[unit_short]) for _ in range(3))
    values = {"width": w, "height": h, "depth": d}
    drawing = {name: f"{value} {unit_short}" for name, value in values.items()}
    if entity != "depth" and rng.random() < 0.5:
        drawing.pop("depth")  # many drawings show no depth
    if absent:
        drawing.pop(entity, None)  # the asked dimension is not drawn: the answer is ""
    truth = "" if entity not in drawing else _label(values[entity], unit_full, rng)
    lines = [rng.choice(BRANDS), rng.choice(DISTRACTORS)]
    return _Item(entity, truth, lines, drawing)


def _text_item(entity: str, rng: random.Random, absent: bool) -> _Item:
    """A label with the value among distractors; when ``absent`` another entity's text stands in its place."""
    if absent:
        other = rng.choice([e for e in _TEXT_MAKERS if e != entity])
        shown, _ = _TEXT_MAKERS[other](rng)
        truth = ""
    else:
        shown, truth = _TEXT_MAKERS[entity](rng)
    lines = [rng.choice(BRANDS), rng.choice(DISTRACTORS), shown, rng.choice(_SIDE_TEXT[entity])]
    if rng.random() < 0.5:
        lines.append(rng.choice(DISTRACTORS))
    head, tail = lines[:2], lines[2:]
    rng.shuffle(tail)
    return _Item(entity, truth, head + tail)


def _make_item(entity: str, rng: random.Random) -> _Item:
    absent = rng.random() < EMPTY_FRACTION
    if entity in ("width", "height", "depth"):
        return _dimension_item(entity, rng, absent)
    return _text_item(entity, rng, absent)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def _colour(rng: random.Random, light: bool) -> tuple[int, int, int]:
    lo, hi = (170, 255) if light else (0, 90)
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


Point = tuple[float, float]


def _arrow(draw: ImageDraw.ImageDraw, a: Point, b: Point, colour: tuple[int, int, int]) -> None:
    """A double-headed arrow from ``a`` to ``b``."""
    draw.line([a, b], fill=colour, width=2)
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    for tip, direction in ((b, angle), (a, angle + math.pi)):
        for side in (-0.45, 0.45):
            back = (tip[0] - 11 * math.cos(direction + side), tip[1] - 11 * math.sin(direction + side))
            draw.line([tip, back], fill=colour, width=2)


def _render(item: _Item, rng: random.Random, np_rng: np.random.Generator) -> Image.Image:
    """Draw one product image for ``item``."""
    width, height = IMAGE_SIZE
    light = item.drawing is not None or rng.random() < 0.8  # drawings: dark ink on light ground
    image = Image.new("RGB", IMAGE_SIZE, _colour(rng, light=light))
    draw = ImageDraw.Draw(image)
    ink = (20, 20, 20)
    if item.drawing is None:
        box = (40, 40, width - 40, height - 40)
        draw.rounded_rectangle(box, radius=24, fill=_colour(rng, light=True), outline=_colour(rng, False), width=3)
        y = 70
        for number, line in enumerate(item.lines):
            size = 40 if number == 0 else rng.choice([24, 26, 28, 30])
            font = _font(size)
            x = rng.randint(60, 110)
            draw.text((x, y), line, fill=ink, font=font)
            y += size + rng.randint(18, 30)
    else:
        left, top, right, bottom = 120, 140, 300, 320
        skew = 55
        draw.rectangle((left, top, right, bottom), fill=_colour(rng, light=True), outline=ink, width=3)
        draw.polygon([(left, top), (left + skew, top - skew), (right + skew, top - skew), (right, top)], outline=ink)
        side = [(right, top), (right + skew, top - skew), (right + skew, bottom - skew), (right, bottom)]
        draw.polygon(side, outline=ink)
        font = _font(24)
        if "width" in item.drawing:
            _arrow(draw, (left, bottom + 28), (right, bottom + 28), ink)
            draw.text(((left + right) / 2 - 30, bottom + 38), item.drawing["width"], fill=ink, font=font)
        if "height" in item.drawing:
            _arrow(draw, (left - 28, top), (left - 28, bottom), ink)
            draw.text((8, (top + bottom) / 2 - 12), item.drawing["height"], fill=ink, font=font)
        if "depth" in item.drawing:
            _arrow(draw, (right + 22, bottom + 10), (right + skew + 22, bottom - skew + 10), ink)
            draw.text((right + skew + 4, bottom - skew + 22), item.drawing["depth"], fill=ink, font=font)
        draw.text((30, 24), item.lines[0], fill=ink, font=_font(36))
        draw.text((30, height - 52), item.lines[1], fill=ink, font=_font(22))
    image = image.rotate(rng.uniform(-4.0, 4.0), resample=Image.BICUBIC, fillcolor=_colour(rng, light=True))
    pixels = np.asarray(image, dtype=np.int16) + np_rng.normal(0.0, 6.0, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _entities(n: int, rng: random.Random) -> list[str]:
    """``n`` entity names, as evenly spread over the demo entities as ``n`` allows, in random order."""
    names = [DEMO_ENTITIES[i % len(DEMO_ENTITIES)] for i in range(n)]
    rng.shuffle(names)
    return names


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless ``path`` already holds exactly it: rendering the same demo again leaves the files (and
    their modification times) alone, so the shards predicted from them stay valid."""
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data, fsync=False)


def make_demo_data(
    out_dir: str | Path, n_train: int = DEFAULT_N_TRAIN, n_test: int = DEFAULT_N_TEST, seed: int = 0
) -> DemoData:
    """Render the demo data set into ``out_dir``; same seed and sizes, same files."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be at least 1, got n_train={n_train}, n_test={n_test}")
    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)

    def build(prefix: str, count: int) -> list[dict[str, object]]:
        rows = []
        for number, entity in enumerate(_entities(count, rng), start=1):
            item = _make_item(entity, rng)
            name = f"{prefix}{number:04d}.jpg"
            _write_if_changed(image_dir / name, _jpeg(_render(item, rng, np_rng)))
            rows.append(
                {
                    "image_link": DEMO_URL_PREFIX + name,
                    "group_id": rng.choice(GROUP_IDS),
                    "entity_name": item.entity_name,
                    "entity_value": item.entity_value,
                }
            )
        return rows

    train = pd.DataFrame(build("d", n_train), columns=["image_link", "group_id", "entity_name", "entity_value"])
    test_rows = pd.DataFrame(build("t", n_test))
    # Non-contiguous, like the real test index: carry it through, never use row numbers.
    test_rows.insert(0, "index", sorted(rng.sample(range(3 * n_test + 10), n_test)))
    train_csv, test_csv, labels_csv = root / "train.csv", root / "test.csv", root / "test_labels.csv"
    _write_if_changed(train_csv, train.to_csv(index=False).encode())
    test_columns = ["index", "image_link", "group_id", "entity_name"]
    _write_if_changed(test_csv, test_rows[test_columns].to_csv(index=False).encode())
    _write_if_changed(labels_csv, test_rows[["index", "entity_name", "entity_value"]].to_csv(index=False).encode())
    return DemoData(root, train_csv, test_csv, labels_csv, image_dir, n_train, n_test)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="Render the built-in demo data set.")
    parser.add_argument("out_dir", help="folder for train.csv, test.csv, test_labels.csv and images/")
    parser.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN, help="training rows (one image each)")
    parser.add_argument("--n-test", type=int, default=DEFAULT_N_TEST, help="test rows (one image each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data")
    args = parser.parse_args(argv)
    demo = make_demo_data(args.out_dir, args.n_train, args.n_test, args.seed)
    print(f"demo data: {demo.n_train} train rows, {demo.n_test} test rows in {demo.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

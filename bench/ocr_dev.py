"""Benchmark of the OCR backend on the real labelled images (``../shared/data/amazon/dev`` and ``dims_dev``).

Prints: F1 overall and per entity on dev (cross-validated by group_id); for dims_dev F1 on all rows and on the rows
whose hand label has a value (cross-validated by group_id within dims_dev, every training part also holding all dev
rows); the OCR oracle (share of labelled rows whose answer is among the candidates); the plain rules for comparison
(largest / first candidate); and images per second of OCR on 2 workers (uncached, on a sample, the turned second
pass for images that read no quantity included).

OCR results are cached (``--cache-dir``, default ``$OCR_CACHE_DIR`` or ``.cache/ocr`` in the repo, git-ignored): a
rerun is cheap.

    nice python bench/ocr_dev.py [--data ../shared/data/amazon] [--max-side 1280] [--speed-sample 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.models.ocr.candidates import extract_candidates, same_answer  # noqa: E402
from utils.core.metrics import score  # noqa: E402
from utils.models.ocr.ranker import FALLBACK_ROTATIONS, Priors, RankerConfig, cross_validate, ocr_lookup  # noqa: E402


def rule_answers(rows: pd.DataFrame, lookup, rule: str) -> list[str]:
    """The plain rules: the largest or the first fitting candidate."""
    out = []
    for link, ent in zip(rows["image_link"], rows["entity_name"]):
        c = extract_candidates(lookup(link), ent)
        if not c:
            out.append("")
        elif rule == "first":
            out.append(c[0].answer)
        else:
            out.append(max(c, key=lambda x: x.value).answer)
    return out


def f1_of(rows: pd.DataFrame, answers: list[str]) -> tuple[float, pd.DataFrame]:
    pred = pd.DataFrame({"index": rows["index"].to_numpy(), "prediction": answers})
    lab = rows[["index", "entity_name", "entity_value"]].assign(entity_value=rows["entity_value"].fillna(""))
    rep = score(pred, lab)
    return rep.f1, rep.table


def oracle(rows: pd.DataFrame, lookup) -> float:
    """Share of rows with a value whose value is among the candidates."""
    has = rows[rows["entity_value"].fillna("") != ""]
    hit = [any(same_answer(c.answer, t) for c in extract_candidates(lookup(l), e))
           for l, e, t in zip(has["image_link"], has["entity_name"], has["entity_value"])]
    return float(np.mean(hit)) if hit else float("nan")


def speed(rows: pd.DataFrame, image_dir: Path, n: int, cfg: RankerConfig) -> tuple[float, float]:
    """(images/s, share of images OCR'd again turned) of uncached OCR of n of the rows' images spread by name (every
    k-th), as ``ocr_lookup`` runs it: the turned fallback passes and worker start-up (model loading) included."""
    links = sorted(set(rows["image_link"]), key=lambda link: link.rsplit("/", 1)[-1])
    links = links[:: max(1, len(links) // n)][:n]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ocr = ocr_lookup(links, image_dir, replace(cfg, cache_dir=tmp))
        sec = time.perf_counter() - t0
        upright = cfg.ocr_settings().key()
        turned = sum(1 for d in Path(tmp).iterdir() if d.name != upright for _ in d.iterdir())
    return len(ocr) / sec, turned / len(FALLBACK_ROTATIONS) / max(1, len(ocr))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("AMAZON_DATA_DIR", REPO.parent / "shared/data/amazon"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--cache-dir", default=os.environ.get("OCR_CACHE_DIR", str(REPO / ".cache" / "ocr")))
    ap.add_argument("--max-side", type=int, default=1280, help="0 = full resolution")
    ap.add_argument("--det-side", type=int, default=0, help="longest side the text detector sees (0 = max_side)")
    ap.add_argument("--model", default="hgb")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment seed (CV varies about +-0.01 by seed)")
    ap.add_argument("--speed-sample", type=int, default=120, help="images timed uncached (0 = skip)")
    ap.add_argument("--no-rotate-fallback", action="store_true",
                    help="no second OCR, turned, of images whose upright OCR reads no quantity")
    ap.add_argument("--dev-only", action="store_true", help="skip dims_dev (e.g. to compare resolutions on dev)")
    ap.add_argument("--no-train-priors", action="store_true", help="priors only from the CV training labels")
    a = ap.parse_args(argv)

    dev = pd.read_csv(a.data / "dev/labels.csv", dtype={"entity_value": str}).fillna({"entity_value": ""})
    dims = pd.read_csv(a.data / "dims_dev/labels.csv", dtype={"entity_value": str}).fillna({"entity_value": ""})
    cfg = RankerConfig(cache_dir=a.cache_dir, max_side=a.max_side, det_side=a.det_side, model=a.model,
                       folds=a.folds, workers=2, seed=a.seed, rotate_fallback=not a.no_rotate_fallback)
    t0 = time.perf_counter()
    ocr = ocr_lookup(list(dev["image_link"]), a.data / "dev/images", cfg)
    if a.dev_only:
        dims = dims.iloc[:0]
    else:
        ocr.update(ocr_lookup(list(dims["image_link"]), a.data / "dims_dev/images", cfg))
    print(f"OCR (cache {a.cache_dir}, max_side {a.max_side or 'full'}): {len(ocr)} images in "
          f"{time.perf_counter() - t0:.1f}s")
    lookup = ocr.get

    # value priors: the train labels minus every image of dev and dims_dev (no leak), plus CV rows inside fits
    prior_rows = [dev, dims]
    if not a.no_train_priors and (a.data / "train.csv").is_file():
        tr = pd.read_csv(a.data / "train.csv", dtype=str).fillna("")
        tr = tr[~tr["image_link"].isin(set(dev["image_link"]) | set(dims["image_link"]))]
        prior_rows = [tr]
        print(f"priors from train.csv: {len(tr)} labels (dev/dims_dev images excluded)")
    priors = Priors.from_labels(pd.concat(prior_rows, ignore_index=True)[["entity_name", "entity_value"]]
                                if a.no_train_priors else prior_rows[0])
    if a.no_train_priors:
        print("priors from dev+dims_dev labels (leaks value frequencies across folds: optimistic)")

    # dev
    t0 = time.perf_counter()
    ans = cross_validate(dev, lookup, cfg, priors)
    f1, table = f1_of(dev, ans)
    print(f"\n== dev ({len(dev)} rows, {cfg.folds}-fold CV by group_id, trained on dev folds only)")
    print(table[["n", "tp", "fp", "fn", "precision", "recall", "f1"]].round(3).to_string())
    print(f"dev F1 ranker {f1:.3f} | rule largest {f1_of(dev, rule_answers(dev, lookup, 'largest'))[0]:.3f} "
          f"| rule first {f1_of(dev, rule_answers(dev, lookup, 'first'))[0]:.3f} | oracle {oracle(dev, lookup):.3f}"
          f" | CV {time.perf_counter() - t0:.0f}s")

    # dims_dev
    has = dims["entity_value"] != ""
    for name, extra in [] if a.dev_only else (("dims_dev folds + all dev rows", dev), ("dims_dev folds only", None)):
        ans = cross_validate(dims, lookup, cfg, priors, train_only=extra)
        f_all, table = f1_of(dims, ans)
        f_has, _ = f1_of(dims[has], [x for x, h in zip(ans, has) if h])
        print(f"\n== dims_dev ({len(dims)} rows, {int(has.sum())} with a value; trained on {name})")
        print(table[["n", "tp", "fp", "fn", "precision", "recall", "f1"]].round(3).to_string())
        print(f"dims_dev F1 all rows {f_all:.3f} | rows with a value {f_has:.3f}")
    for rule in () if a.dev_only else ("largest", "first"):
        r = rule_answers(dims, lookup, rule)
        print(f"rule {rule}: dims_dev F1 all {f1_of(dims, r)[0]:.3f} | with a value "
              f"{f1_of(dims[has], [x for x, h in zip(r, has) if h])[0]:.3f}")
    if not a.dev_only:
        print(f"dims_dev oracle (rows with a value) {oracle(dims, lookup):.3f}")

    if a.speed_sample:
        s, again = speed(dev, a.data / "dev/images", a.speed_sample, cfg)
        print(f"\nOCR speed: {s:.2f} images/s on 2 workers (uncached, {a.speed_sample} dev images spread by name, "
              f"max_side {a.max_side or 'full'}, {again:.0%} OCR'd again turned; machine shared, so a lower bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

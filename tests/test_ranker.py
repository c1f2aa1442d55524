"""Tests for the ocr backend's ranking (utils.models.ocr: priors, features, policy, ranker, pairs, backend): priors,
threshold tuning, group folds, the saved artifact, and the OcrBackend fit/predict round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from utils.models.ocr.backend import OcrBackend
from utils.models.ocr.candidates import extract_candidates, same_answer
from utils.models.ocr.config import RankerConfig
from utils.models.ocr.engine import DEFAULT_MAX_SIDE, OcrBox, OcrResult
from utils.models.ocr.features import build_table, declared_features
from utils.models.ocr.policy import f1_counts, tune_threshold
from utils.models.ocr.priors import Priors
from utils.models.ocr.ranker import ARTIFACT_JSON, MODELS_DIR, apply_net_rule, group_folds, load_ranker

URL = "https://m.media-amazon.com/images/I/{}.jpg"


def render(path: Path, big: str | None, small: str | None) -> None:
    """A label: the asked value in large type, a distractor in small type below."""
    im = Image.new("RGB", (280, 280), "white")  # square: rapidocr upscales the short side to 736 for detection
    d = ImageDraw.Draw(im)
    if big:
        d.text((10, 40), big, fill="black", font=ImageFont.load_default(size=36))
    if small:
        d.text((10, 180), small, fill="black", font=ImageFont.load_default(size=20))
    im.save(path, quality=95)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train/val/test rows over rendered images; ``entity_value`` "" where the image shows no weight."""
    root = tmp_path_factory.mktemp("synth")
    img = root / "images"
    img.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(20):
        name = f"s{i:03d}"
        if i % 5 == 4:  # abstain: only a nutrition line
            render(img / f"{name}.jpg", "Serving size", f"Protein {int(rng.integers(2, 30))} g")
            truth = ""
        else:
            v = int(rng.integers(2, 40))
            render(img / f"{name}.jpg", f"Net Wt {v} oz", f"Serving {int(rng.integers(2, 30))} g")
            truth = f"{float(v)} ounce"
        rows.append({"index": i, "image_link": URL.format(name), "group_id": i // 3, "entity_name": "item_weight",
                     "entity_value": truth})
    df = pd.DataFrame(rows)
    return {"dir": img, "train": df.iloc[:12], "val": df.iloc[12:16], "test": df.iloc[16:], "cache": root / "cache"}


def test_priors_prefer_plausible_values() -> None:
    labels = pd.DataFrame({"entity_name": ["item_weight"] * 50 + ["voltage"] * 5,
                           "entity_value": ["500.0 gram"] * 30 + ["16.0 ounce"] * 20 + ["12.0 volt"] * 5})
    p = Priors.from_labels(labels)
    share_g, dens_g, _ = p.features("item_weight", "gram", 450.0)
    share_mg, dens_far, _ = p.features("item_weight", "milligram", 450.0)
    assert share_g > share_mg
    assert dens_g > p.features("item_weight", "gram", 0.002)[1]
    assert p.features("voltage", "volt", 12.0)[2] > p.features("voltage", "volt", 13.0)[2]


def test_tune_threshold_abstains_on_low_scoring_wrong_answers() -> None:
    best = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    correct = np.array([True, True, True, False, False])
    has = np.array([True, True, True, False, True])
    t, f = tune_threshold(best, correct, has)
    assert 0.2 < t <= 0.7
    assert f == pytest.approx(f1_counts(correct, best >= t, has))
    assert f > f1_counts(correct, best >= 0, has)


def test_f1_counts_matches_the_challenge_definition() -> None:
    correct = np.array([True, False, False, False])
    pred = np.array([True, True, False, True])
    has = np.array([True, True, True, False])
    # tp 1; fp: wrong non-empty (1) + answer where truth empty (1); fn: empty with truth (1)
    assert f1_counts(correct, pred, has) == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))


def test_group_folds_keep_groups_together() -> None:
    groups = np.repeat(np.arange(20), 3)
    folds = group_folds(groups, 4, seed=1)
    for g in range(20):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == {0, 1, 2, 3} and np.bincount(folds).min() >= 12


def test_config_rejects_unknown_settings() -> None:
    with pytest.raises(TypeError, match="unknown OCR backend settings"):
        RankerConfig.from_settings(lora_rank=8)
    assert RankerConfig.from_settings(max_side=960).max_side == 960


def test_fit_predict_round_trip(synth: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.models.backend import get_backend

    backend = get_backend("ocr")
    assert isinstance(backend, OcrBackend)
    settings = {"cache_dir": str(synth["cache"]), "workers": 1, "folds": 3, "batch_size": 4}
    seen: list[tuple[int, int]] = []
    out = backend.fit(synth["train"], synth["val"], synth["dir"], tmp_path / "art",
                      progress=lambda done, total: seen.append((done, total)), **settings)
    assert (out / MODELS_DIR).is_dir() and (out / ARTIFACT_JSON).is_file()
    meta = json.loads((out / ARTIFACT_JSON).read_text())
    assert meta["settings"]["max_side"] == DEFAULT_MAX_SIDE and "val/f1" in meta["metrics"] and "threshold" in meta
    # each training image OCR'd once, with progress; the fit's images/s and total time in the metrics
    n_images = synth["train"]["image_link"].nunique() + synth["val"]["image_link"].nunique()
    assert seen and seen[-1] == (n_images, n_images)
    m = meta["metrics"]
    assert m["fit_images"] == n_images and m["fit_images_per_s"] > 0 and m["fit_seconds"] >= m["fit_ocr_seconds"] > 0
    # the training labels have empty values (images that show no weight): the abstain policy expects that share
    assert m["train/empty_share"] == pytest.approx((synth["train"]["entity_value"] == "").mean())
    assert meta["metrics"]["train/oracle"] > 0.6

    test = pd.concat([synth["test"], pd.DataFrame([
        {"index": 99, "image_link": URL.format("missing"), "group_id": 0, "entity_name": "item_weight"},
        {"index": 98, "image_link": "ftp://host/a/..", "group_id": 0, "entity_name": "item_weight"},  # no usable file
    ])])
    batches = list(backend.predict(test.drop(columns="entity_value"), synth["dir"], out, **settings))
    # a rerun is served from the OCR cache: no OCR call, same answers
    import utils.models.ocr.engine

    calls = []
    monkeypatch.setattr(utils.models.ocr.engine.OcrEngine, "run_image", lambda self, im: calls.append(1))
    again = list(backend.predict(test.drop(columns="entity_value"), synth["dir"], out, **settings))
    assert calls == [] and again == batches
    assert [len(b) for b in batches] == [4, 2]
    got = dict(x for b in batches for x in b)
    assert set(got) == set(test["index"]) and got[99] == "" and got[98] == ""
    truth = dict(zip(synth["test"]["index"], synth["test"]["entity_value"]))
    right = sum(got[i] == t or (t and got[i] and float(got[i].split()[0]) == float(t.split()[0])
                                and got[i].split()[1] == t.split()[1]) for i, t in truth.items())
    assert right >= len(truth) - 1
    assert all(got[i] == "" for i, t in truth.items() if t == "")  # no weight shown: abstain (no ounce/gram fits)


def test_threshold_controls_abstention(synth: dict, tmp_path: Path) -> None:
    settings = {"cache_dir": str(synth["cache"]), "workers": 1, "batch_size": 50}
    be = OcrBackend()
    out = be.fit(synth["train"], synth["val"].iloc[:0], synth["dir"], tmp_path / "a", threshold=1.01, **settings)
    assert load_ranker(out).threshold == pytest.approx(1.01)
    rows = synth["test"].drop(columns="entity_value")
    assert all(a == "" for b in be.predict(rows, synth["dir"], out, **settings) for _, a in b)
    out0 = be.fit(synth["train"], synth["val"].iloc[:0], synth["dir"], tmp_path / "b", threshold=0.0, **settings)
    answered = [a for b in be.predict(rows, synth["dir"], out0, **settings) for _, a in b]
    assert sum(bool(a) for a in answered) >= 3


def test_predict_without_artifact_says_what_to_do(tmp_path: Path) -> None:
    rows = pd.DataFrame({"index": [1], "image_link": [URL.format("x")], "entity_name": ["voltage"]})
    with pytest.raises(FileNotFoundError, match="fit stage"):
        list(OcrBackend().predict(rows, tmp_path, tmp_path))


def test_real_rows_round_trip(amazon_dir: Path, tmp_path: Path) -> None:
    dev = pd.read_csv(amazon_dir / "dev" / "labels.csv", dtype={"entity_value": str}).head(4)
    settings = {"cache_dir": str(tmp_path / "c"), "workers": 1, "folds": 2}
    be = OcrBackend()
    out = be.fit(dev.iloc[:3], dev.iloc[3:], amazon_dir / "dev" / "images", tmp_path / "art", **settings)
    got = [x for b in be.predict(dev.iloc[3:].drop(columns="entity_value"), amazon_dir / "dev" / "images", out,
                                 **settings) for x in b]
    assert [i for i, _ in got] == list(dev["index"].iloc[3:])
    assert all(a == "" or len(a.split(" ", 1)) == 2 for _, a in got)


def _box(text: str, y: float) -> OcrBox:
    return OcrBox(text, 0.95, [[10, y], [300, y], [300, y + 20], [10, y + 20]])


def test_declared_features_mark_the_first_mention_after_net_wt() -> None:
    ocr = OcrResult(400, 400, [_box("Protein 25g per serving", 10), _box("NET WT. 3 kg (6.6 lb)", 60),
                               _box("Cabinet 5 kg", 110)])
    cands = extract_candidates(ocr, "item_weight")
    f = {c.answer: row for c, row in zip(cands, declared_features(cands))}
    assert f["3.0 kilogram"].tolist() == [1.0, 1.0, 1.0]  # declared, first after the declaration, one such answer
    assert f["6.6 pound"][:2].tolist() == [1.0, 0.0]  # near the declaration but not the first mention after it
    assert f["25.0 gram"][:2].tolist() == [0.0, 0.0]
    assert f["5.0 kilogram"][:2].tolist() == [0.0, 0.0]  # "net" inside a word is no declaration
    assert declared_features([]).shape == (0, 3)


def test_net_rule_overrides_a_different_amount_but_not_a_conversion() -> None:
    boxes = {"a": [_box("18g PROTEIN", 10), _box("Net Weight 750 g", 60)],
             "b": [_box("Net Wt 3.53 oz", 10), _box("100 g", 60)],
             "c": [_box("18g PROTEIN", 10), _box("25 g", 60)]}
    rows = pd.DataFrame({"image_link": list(boxes), "entity_name": "item_weight", "group_id": "1",
                         "entity_value": ""})
    table = build_table(rows, lambda k: OcrResult(400, 400, boxes[k]), Priors())
    got = apply_net_rule(table, ["18.0 gram", "100.0 gram", "18.0 gram"])
    assert got == ["750.0 gram", "100.0 gram", "18.0 gram"]  # a: declared amount; b: same amount, kept; c: none
    assert apply_net_rule(table, ["", "", ""]) == ["", "", ""]  # an abstention stays one


def _family_set(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Candidates where the right one is the FIRST printed for dimensions and the SECOND for weights: the opposite
    conventions seen in dims_dev and dev. Column ``read_order`` carries it; the entity columns name the family."""
    from utils.models.ocr.features import feature_names

    X = pd.DataFrame(0.0, index=range(2 * n), columns=feature_names())
    y = np.zeros(2 * n, dtype=int)
    for i in range(n):
        ent = "width" if i % 2 else "item_weight"
        for j, first in enumerate((1.0, 0.0)):
            r = 2 * i + j
            X.loc[r, f"ent_{ent}"] = 1.0
            X.loc[r, "read_order"] = 0.2 if first else 0.8
            X.loc[r, "height_rel"] = rng.random()
            y[r] = int(first == (ent == "width"))
    return X, y


def test_family_model_routes_each_family_to_its_own_member() -> None:
    from utils.models.ocr.ranker import MIN_FAMILY_CANDIDATES, FamilyModel, _fit_model

    rng = np.random.default_rng(0)
    X, y = _family_set(200, rng)
    model = _fit_model(X, y, "hgb", 0, per_family=True)
    assert isinstance(model, FamilyModel) and set(model.members) == {"dimension", "other"} and model.joint is None
    fam = FamilyModel.family_of(X)
    p = model.predict_proba(X)[:, 1]
    for f, member in model.members.items():
        np.testing.assert_allclose(p[fam == f], member.predict_proba(X[fam == f])[:, 1])
    # each family's convention is learned: the right candidate of every pair scores higher
    assert ((p[0::2] > p[1::2]) == (y[0::2] == 1)).all()
    # a family with too few candidates is scored by the joint model, which is then fitted
    keep = (fam == "other") | (np.arange(len(X)) < 2 * (MIN_FAMILY_CANDIDATES // 4))
    small = _fit_model(X[keep], y[keep], "hgb", 0, per_family=True)
    assert set(small.members) == {"other"} and small.joint is not None
    dims = FamilyModel.family_of(X[keep]) == "dimension"
    np.testing.assert_allclose(small.predict_proba(X[keep])[dims, 1], small.joint.predict_proba(X[keep][dims])[:, 1])
    # one family only: a plain joint model, no members
    only = _fit_model(X[fam == "other"], y[fam == "other"], "hgb", 0, per_family=True)
    assert only.members == {} and only.joint is not None


def test_per_family_setting_picks_the_model(synth: dict, tmp_path: Path) -> None:
    from utils.models.ocr.ranker import FamilyModel

    settings = {"cache_dir": str(synth["cache"]), "workers": 1, "folds": 3}
    be = OcrBackend()
    plain = load_ranker(be.fit(synth["train"], None, synth["dir"], tmp_path / "p", per_family=False, **settings))
    fam = load_ranker(be.fit(synth["train"], None, synth["dir"], tmp_path / "f", **settings))
    assert not isinstance(plain.model, FamilyModel) and isinstance(fam.model, FamilyModel)
    assert RankerConfig().per_family


def test_images_that_read_no_quantity_get_a_turned_second_ocr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Only an image whose upright boxes read no quantity for any entity is OCR'd again, once per fallback
    rotation, and its rows then read the boxes of every pass."""
    import utils.models.ocr.backend as ranker_mod

    for name in ("weight", "length", "vertical", "blank"):
        Image.new("RGB", (60, 60), "white").save(tmp_path / f"{name}.jpg")
    upright = {"weight": [_box("Net Wt 16 oz", 10)], "length": [_box("30 cm", 10)], "vertical": [_box("NET WT", 10)],
               "blank": []}
    turned = {"vertical": [_box("12 oz", 40)], "blank": []}
    calls: list[tuple[int, list[str]]] = []

    def fake_ocr_many(paths, cache_dir, settings, workers, *_, **__):
        names = [Path(p).stem for p in paths]
        calls.append((settings.rotate, names))
        src = turned if settings.rotate else upright
        return [(p, OcrResult(60, 60, list(src[n])) if Path(p).is_file() else None) for p, n in zip(paths, names)]

    monkeypatch.setattr(ranker_mod, "ocr_many", fake_ocr_many)
    links = [URL.format(n) for n in ("weight", "length", "vertical", "vertical", "blank", "missing")]
    out = ranker_mod.ocr_lookup(links, tmp_path, RankerConfig(workers=1))
    assert calls[0] == (0, ["weight", "length", "vertical", "blank", "missing"])
    # "30 cm" is a quantity (for a dimension), so asking that image for a weight does not turn it
    assert calls[1:] == [(90, ["vertical", "blank"])]  # one turned pass (270 as well read nothing more)
    assert [b.text for b in out[links[2]].boxes] == ["NET WT"] + ["12 oz"] * len(ranker_mod.FALLBACK_ROTATIONS)
    assert [c.answer for c in extract_candidates(out[links[2]], "item_weight")][0] == "12.0 ounce"
    assert [b.text for b in out[links[0]].boxes] == ["Net Wt 16 oz"] and out[links[5]] is None
    calls.clear()
    ranker_mod.ocr_lookup(links, tmp_path, RankerConfig(workers=1, rotate_fallback=False))
    assert [r for r, _ in calls] == [0]


def _pair_rows(n: int) -> tuple[pd.DataFrame, dict[str, list[OcrBox]]]:
    """Weights labelled in their product group's habit whatever the print order; dimensions labelled with the
    first printed unit whatever it is (the two conventions of the real labels)."""
    rows, boxes = [], {}
    for k in range(n):
        g = 50 + 10 * k
        oz = round(g / 28.3495, 2)
        cm = 5 + 2 * k
        inch = round(cm / 2.54, 1)
        for name, ent, group, text, label in (
            (f"oz_first{k}", "item_weight", "us", f"Net Wt {oz} oz ({g} g)", f"{oz} ounce"),
            (f"g_first{k}", "item_weight", "us", f"Net Wt {g} g ({oz} oz)", f"{oz} ounce"),
            (f"eu_g_first{k}", "item_weight", "eu", f"Net Wt {g} g ({oz} oz)", f"{g} gram"),
            (f"eu_oz_first{k}", "item_weight", "eu", f"Net Wt {oz} oz ({g} g)", f"{g} gram"),
            (f"cm_first{k}", "width", "us", f"Width {cm} cm / {inch} in", f"{cm} centimetre"),
            (f"in_first{k}", "width", "eu", f"Width {inch} in / {cm} cm", f"{inch} inch"),
        ):
            boxes[name] = [_box(text, 10), _box("Made with care", 60)]
            rows.append({"image_link": name, "entity_name": ent, "group_id": group, "entity_value": label})
    return pd.DataFrame(rows), boxes


def test_pair_model_learns_each_familys_unit_convention() -> None:
    from utils.models.ocr.pairs import PairModel

    rows, boxes = _pair_rows(8)
    habits = pd.DataFrame({"group_id": ["us"] * 20 + ["eu"] * 20, "entity_name": "item_weight",
                           "entity_value": ["8.0 ounce"] * 20 + ["250.0 gram"] * 20})
    priors = Priors.from_labels(habits)
    lookup = lambda k: OcrResult(400, 400, boxes[k])  # noqa: E731
    table = build_table(rows, lookup, priors)
    pm = PairModel().fit(table)
    assert pm.n_pairs == len(rows) and pm.model is not None
    test_rows, test_boxes = _pair_rows(3)
    test_rows["image_link"] = "t_" + test_rows["image_link"]
    boxes.update({"t_" + k: v for k, v in test_boxes.items()})
    test = build_table(test_rows, lookup, priors)
    truth = test_rows["entity_value"].tolist()
    partner = [next(a for a in test.answers if a != t and a in {test.answers[k] for k in np.where(test.row == r)[0]})
               for r, t in enumerate(truth)]
    # whichever member the ranker picked, the pair model answers the labelled one
    for picks in (truth, partner):
        got = pm.resolve(test, np.ones(len(test.answers)), list(picks))
        assert [same_answer(a, t) for a, t in zip(got, truth)] == [True] * len(truth)
    # an abstention stays one; a pick without a conversion partner stands
    assert pm.resolve(test, np.ones(len(test.answers)), [""] * len(truth)) == [""] * len(truth)
    lone = build_table(pd.DataFrame([{"image_link": "lone", "entity_name": "item_weight", "group_id": "eu",
                                      "entity_value": ""}]),
                       lambda k: OcrResult(400, 400, [_box("Net Wt 3 oz", 10), _box("Serving 28 g", 60)]), priors)
    assert pm.resolve(lone, np.ones(len(lone.answers)), ["3.0 ounce"]) == ["3.0 ounce"]
    # too few labelled pairs: no model, picks stand
    few = PairModel().fit(build_table(rows.head(PairModel.MIN_PAIRS - 1), lookup, priors))
    assert few.model is None and few.resolve(test, np.ones(len(test.answers)), partner) == partner


def test_abstain_policy_follows_the_expected_share_of_empty_truths() -> None:
    from utils.models.ocr.policy import abstain_threshold, empty_weight_for

    rng = np.random.default_rng(0)
    n = 400
    has = rng.random(n) > 0.25  # a quarter of the rows show nothing: empty truth
    best = np.where(has, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.6, n))
    correct = has & (rng.random(n) < best)
    # nothing expected empty: never abstain (an empty answer to a row with a value costs as much as a wrong one)
    assert abstain_threshold(best, correct, has, 0.0)[0] == 0.0
    # challenge-like rows (every label has a value): never abstain, whatever share is asked for
    assert abstain_threshold(best[has], correct[has], has[has], 0.3)[0] == 0.0
    low = abstain_threshold(best, correct, has, 0.05)[0]
    mid = abstain_threshold(best, correct, has, float((~has).mean()))[0]
    high = abstain_threshold(best, correct, has, 0.6)[0]
    assert 0.0 <= low <= mid <= high and high > low  # the more empty truths expected, the more it abstains
    assert mid == tune_threshold(best, correct, has)[0]  # the training share: the plain tuning
    assert empty_weight_for(has, float((~has).mean())) == pytest.approx(1.0)
    assert f1_counts(correct, best >= 0, has, 2.0) < f1_counts(correct, best >= 0, has, 1.0)  # empties weigh more


def test_empty_share_defaults_to_the_training_labels_share() -> None:
    from utils.models.ocr.policy import expected_empty_share

    rows = pd.DataFrame({"entity_value": ["1.0 volt", "", "2.0 volt", "3.0 volt"]})
    assert expected_empty_share(rows, None) == 0.25
    assert expected_empty_share(rows.iloc[[0, 2]], None) == 0.0
    assert expected_empty_share(rows, 0.0) == 0.0
    with pytest.raises(ValueError, match="empty_share"):
        expected_empty_share(rows, 1.0)


def test_prior_answer_is_the_groups_commonest_label_else_the_entitys() -> None:
    labels = pd.DataFrame({
        "group_id": ["g1"] * 6 + ["g2"] * 2 + ["g3"] * 10,
        "entity_name": ["width"] * 8 + ["voltage"] * 10,
        "entity_value": ["10.0 centimetre"] * 4 + ["4.0 inch"] * 2 + ["2.0 inch"] * 2 + ["12.0 volt"] * 10,
    })
    p = Priors.from_labels(labels)
    assert p.prior_answer("g1", "width") == ("10.0 centimetre", pytest.approx(4 / 6))
    # g2 has fewer than MIN_GROUP_ANSWERS width labels: the entity's commonest over all groups
    assert p.prior_answer("g2", "width") == ("10.0 centimetre", pytest.approx(4 / 8))
    assert p.prior_answer("unknown", "voltage")[0] == "12.0 volt"
    assert p.prior_answer("g1", "wattage") == ("", 0.0)


def test_rows_without_a_candidate_answer_from_the_prior() -> None:
    from utils.models.ocr.ranker import ConstantScorer, Ranker

    labels = pd.DataFrame({"group_id": ["7"] * 6, "entity_name": "depth", "entity_value": ["3.0 inch"] * 6})
    priors = Priors.from_labels(labels)
    boxes = {"read": [_box("Depth 5 cm", 10)], "blank": [], "missing": None}
    rows = pd.DataFrame({"image_link": list(boxes), "entity_name": "depth", "group_id": 7})
    table = build_table(rows, lambda k: None if boxes[k] is None else OcrResult(400, 400, boxes[k]), priors)
    cfg = {"prior_answer": True}
    ranker = Ranker(ConstantScorer(0.4), 0.0, priors, cfg, {})
    assert ranker.predict_table(table) == ["5.0 centimetre", "3.0 inch", "3.0 inch"]
    # the prior's share must pass the abstain threshold like any answer; the setting turns it off
    assert Ranker(ConstantScorer(0.4), 0.3, priors, cfg, {}).predict_table(table) == ["5.0 centimetre", "3.0 inch",
                                                                                "3.0 inch"]
    assert Ranker(ConstantScorer(0.9), 1.01, priors, cfg, {}).predict_table(table) == ["", "", ""]
    assert Ranker(ConstantScorer(0.4), 0.0, priors, {"prior_answer": False}, {}).predict_table(table)[1:] == ["", ""]


def test_amount_features_rank_amounts_across_units() -> None:
    from utils.models.ocr.features import AMOUNT_FEATURES, amount_features, feature_names

    ocr = OcrResult(400, 400, [_box("Height 30 cm (11.8 in)", 10), _box("Width 10 in", 60), _box("Depth 5 cm", 110)])
    cands = extract_candidates(ocr, "height")
    f = {c.answer: dict(zip(AMOUNT_FEATURES, row)) for c, row in zip(cands, amount_features(cands))}
    # 30 cm and its printed conversion are one amount, the largest; 10 in (25.4 cm) is the middle one, 5 cm the least
    assert f["30.0 centimetre"] == f["11.8 inch"] == {"amt_rank": 0.0, "amt_rank_rev": 1.0, "amt_is_max": 1.0,
                                                      "amt_is_min": 0.0, "amt_n": 3.0}
    assert f["10.0 inch"]["amt_rank"] == 0.5 and not f["10.0 inch"]["amt_is_max"] and not f["10.0 inch"]["amt_is_min"]
    assert f["5.0 centimetre"]["amt_is_min"] == 1.0
    # within one unit "11.8 inch" ranks above "10 inch" and "30 cm" above "5 cm", but nothing compares 10 in to 30 cm
    names = feature_names()
    assert names[-len(AMOUNT_FEATURES):] == AMOUNT_FEATURES
    assert amount_features([]).shape == (0, len(AMOUNT_FEATURES))


def test_pair_model_tells_a_one_line_pair_from_a_two_line_pair() -> None:
    """Challenge dimensions: the first unit of "10 cm / 3.9 in" printed in one line, the second when the two are
    printed in two lines. Print order alone cannot say both; print order within one line can."""
    from utils.models.ocr.pairs import PairModel

    rows, boxes = [], {}
    for k in range(12):
        cm = 10 + 2 * k
        inch = round(cm / 2.54, 1)
        for name, first, second, label in (
            (f"one_cm{k}", f"{cm} cm", f"{inch} in", f"{cm} centimetre"),
            (f"one_in{k}", f"{inch} in", f"{cm} cm", f"{inch} inch"),
            (f"two_cm{k}", f"{cm} cm", f"{inch} in", f"{inch} inch"),
            (f"two_in{k}", f"{inch} in", f"{cm} cm", f"{cm} centimetre"),
        ):
            one = name.startswith("one")
            boxes[name] = ([_box(f"Width {first} / {second}", 10)] if one else
                           [_box(f"Width {first}", 10), _box(second, 200)])
            rows.append({"image_link": name, "entity_name": "width", "group_id": "g", "entity_value": label})
    rows = pd.DataFrame(rows)
    lookup = lambda k: OcrResult(400, 400, boxes[k])  # noqa: E731
    table = build_table(rows, lookup, Priors())
    pm = PairModel().fit(table)
    assert pm.n_pairs == len(rows)
    truth = rows["entity_value"].tolist()
    for picks in (truth, [next(a for a in set(table.answers[k] for k in np.where(table.row == r)[0]) if a != t)
                          for r, t in enumerate(truth)]):
        got = pm.resolve(table, np.ones(len(table.answers)), list(picks))
        assert [same_answer(a, t) for a, t in zip(got, truth)] == [True] * len(truth)


def test_the_artifact_is_sklearn_models_and_json_and_loads_to_the_same_answers(synth: dict, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    from utils.models.backend import read_fit_summary
    from utils.models.ocr.backend import ocr_lookup
    from utils.models.ocr.ranker import ARTIFACT_FORMAT, PRIORS_JSON, ArtifactFormatError, save_ranker

    settings = {"cache_dir": str(synth["cache"]), "workers": 1, "folds": 3}
    out = OcrBackend().fit(synth["train"], synth["val"], synth["dir"], tmp_path / "art", **settings)
    meta = json.loads((out / ARTIFACT_JSON).read_text())
    assert meta["format"] == ARTIFACT_FORMAT and meta["scorer"]["kind"] in {"family", "model", "constant"}
    assert json.loads((out / PRIORS_JSON).read_text())["unit_counts"]["item_weight"]
    for f in (out / MODELS_DIR).glob("*.joblib"):  # scikit-learn objects only: no class of this project pickled
        assert b"utils." not in f.read_bytes(), f.name
    # stage 02 shows the fit's summary: validation F1, OCR speed; the console hears how the OCR went
    summary = read_fit_summary(out)
    assert 0.0 <= summary["metrics"]["val_f1"] <= 1.0 and summary["metrics"]["fit_images_per_s"] > 0
    assert "» [02] OCR of 16 training images" in capsys.readouterr().out

    ranker = load_ranker(out)
    rows = synth["test"]
    lookup = ocr_lookup(list(rows["image_link"]), synth["dir"], RankerConfig(**settings)).get
    saved_again = load_ranker(save_ranker(ranker, tmp_path / "again"))
    assert saved_again.predict_rows(rows, lookup) == ranker.predict_rows(rows, lookup)
    assert saved_again.priors.to_json() == ranker.priors.to_json()

    # an artifact of the format before (a pickle of the ranker class) or another format: refit, said plainly
    old = tmp_path / "old"
    old.mkdir()
    (old / "ranker.joblib").write_bytes(b"\x80\x04old pickle")
    with pytest.raises(ArtifactFormatError, match="older format.*refit"):
        load_ranker(old)
    meta["format"] = 1
    (tmp_path / "again" / ARTIFACT_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactFormatError, match="format 1.*refit"):
        load_ranker(tmp_path / "again")
    meta["format"], meta["features"] = ARTIFACT_FORMAT, meta["features"][:-1]
    (tmp_path / "again" / ARTIFACT_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactFormatError, match="other features.*refit"):
        load_ranker(tmp_path / "again")


def test_warm_reads_ahead_into_the_cache_the_shard_then_hits(synth: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``warm`` (an idle slot helping a running shard) OCRs the rows' images the way predict will: predict then
    reads every image, turned pass included, from the cache."""
    import utils.models.ocr.engine

    settings = {"cache_dir": str(synth["cache"]), "workers": 1, "folds": 3}
    be = OcrBackend()
    out = be.fit(synth["train"], synth["val"], synth["dir"], tmp_path / "art", **settings)
    rows = synth["test"].drop(columns="entity_value")
    fresh = {**settings, "cache_dir": str(tmp_path / "fresh")}
    calls: list[int] = []
    real = utils.models.ocr.engine.OcrEngine.run_image
    monkeypatch.setattr(utils.models.ocr.engine.OcrEngine, "run_image",
                        lambda self, im: calls.append(1) or real(self, im))
    be.warm(rows.iloc[::-1], synth["dir"], out, **fresh)
    assert len(calls) >= rows["image_link"].nunique()  # each image read (and the ones that read nothing, turned)
    calls.clear()
    answers = [x for b in be.predict(rows, synth["dir"], out, **fresh) for x in b]
    assert calls == [] and [i for i, _ in answers] == list(rows["index"])


def test_the_fit_ocr_progress_reaches_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    """The default progress of the fit's OCR: a bar on stderr and ``» `` lines (which run_all.sh echoes) on stdout,
    the first at once, the last at the end."""
    from utils.models.ocr.backend import console_progress

    update = console_progress("02 fit OCR", "images")
    for done in range(1, 6):
        update(done, 5)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("» [02 fit OCR]")]
    assert lines[0].startswith("» [02 fit OCR] 1/5 images") and lines[-1].startswith("» [02 fit OCR] 5/5 images")
    assert len(lines) == 2  # throttled: nothing between the first and the last within 30 s


def test_predict_reads_images_with_the_characters_the_fit_read(synth: dict, tmp_path: Path) -> None:
    """The recogniser's characters are an OCR setting saved with the ranker; a ranker saved before the setting
    existed read with all of rapidocr's characters, and predict reads that way for it."""
    from utils.models.ocr.engine import OcrSettings

    be = OcrBackend()
    out = be.fit(synth["train"], synth["val"], synth["dir"], tmp_path / "art",
                 **{"cache_dir": str(synth["cache"]), "workers": 1, "folds": 3})
    meta = json.loads((out / ARTIFACT_JSON).read_text())
    assert meta["settings"]["charset"] == "no-cjk"  # the default, saved
    rows = synth["test"].drop(columns="entity_value")

    def keys_read(cache: Path) -> set[str]:
        list(be.predict(rows, synth["dir"], out, cache_dir=str(cache), workers=1))
        return {d.name for d in cache.iterdir()}

    assert OcrSettings().key() in keys_read(tmp_path / "now")
    del meta["settings"]["charset"]  # as a ranker saved before the setting
    (out / ARTIFACT_JSON).write_text(json.dumps(meta))
    read = keys_read(tmp_path / "before")
    assert OcrSettings(charset="all").key() in read and OcrSettings().key() not in read

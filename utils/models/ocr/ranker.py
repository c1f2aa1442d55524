"""Learned ranking of OCR candidates: the models, the fitted ``Ranker``, and its artifact on disk.

A small scikit-learn classifier scores each candidate (its features: ``utils.models.ocr.features``) as "is the
label"; the row's answer is its best candidate when that score reaches the abstain threshold
(``utils.models.ocr.policy``; 0 for the challenge's labels), else ``""``. Training rows with an empty
``entity_value`` are abstain labels: all their candidates are negatives. With ``per_family`` one model per entity
family (dimensions / the rest) is fitted beside the joint one (``FamilyModel``). After the pick:

- when the image declares one amount right after "Net Wt" (or a translation) and the ranker picked another amount,
  the declared one is answered (``RankerConfig.net_rule``; a pick that is the declared amount in another unit is
  kept): +0.007 / +0.011 dev F1 on two CV seeds, dims_dev unchanged;
- when the answer has a printed conversion among the row's candidates ("100 g (3.53 oz)"), ``PairModel``
  (``utils.models.ocr.pairs``) chooses the unit;
- a row with no candidate at all answers its group's commonest label (``RankerConfig.prior_answer``).

The artifact (``save_ranker`` / ``load_ranker``) is the scikit-learn models as joblib files under ``models/``, the
priors as ``priors.json`` and ``ranker.json`` (format version, settings, threshold, metrics, feature names, which
model file is which), written last. No class of this project is pickled, so moving code never breaks a saved ranker;
an artifact of an older format fails with a message that says to refit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from utils.env.fileio import atomic_write_bytes
from utils.models.ocr.candidates import same_answer
from utils.models.ocr.config import RankerConfig
from utils.models.ocr.features import (
    DIMS,
    CandidateTable,
    OcrLookup,
    build_table,
    feature_names,
)
from utils.models.ocr.pairs import PairModel, same_amount_any_unit
from utils.models.ocr.policy import abstain_threshold, expected_empty_share, f1_counts
from utils.models.ocr.priors import Priors

ARTIFACT_JSON = "ranker.json"  # written last: its presence means the artifact is whole
PRIORS_JSON = "priors.json"
MODELS_DIR = "models"
#: 2: scikit-learn models + JSON. 1 (before): ``ranker.joblib``, a pickle of the project's own ``Ranker`` class.
ARTIFACT_FORMAT = 2
OLD_ARTIFACT = "ranker.joblib"


class ArtifactFormatError(RuntimeError):
    """A saved ranker this version cannot read (another format, other features): refit."""


# ---- models ------------------------------------------------------------------------------------------------------

def _make_model(kind: str, seed: int):
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=120, learning_rate=0.06, max_leaf_nodes=15,
                                              min_samples_leaf=8, l2_regularization=1.0, random_state=seed)
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    raise ValueError(f"model must be 'hgb' or 'logreg', got {kind!r}")


def _fit_model(X: pd.DataFrame, y: np.ndarray, kind: str, seed: int, per_family: bool = False):
    """Fit; with a single class present, a constant scorer (so tiny sets still round-trip). ``per_family``: a
    ``FamilyModel`` (one model per entity family where the family has enough rows, the joint one elsewhere)."""
    if len(set(y.tolist())) < 2:
        return ConstantScorer(float(y.mean()) if len(y) else 0.0)
    m = FamilyModel(kind, seed) if per_family else _make_model(kind, seed)
    with threadpool_limits(1):  # small data: one thread is faster than two fighting over a shared machine
        m.fit(X, y)
    return m


#: Entity families that get a model of their own: the label conventions differ (dimensions: the first printed of
#: "10 cm (3.9 in)"; weights: often the second), so one joint model fitted on a mix serves neither well.
FAMILIES: dict[str, tuple[str, ...]] = {"dimension": DIMS}
MIN_FAMILY_CANDIDATES = 50  # fewer candidates (or one class only): the family is scored by the joint model


class FamilyModel:
    """A joint model plus one model per entity family (``FAMILIES``, and "other" for the rest), each fitted on
    its family's candidates; rows are routed by the entity columns of the features (``ent_width`` ...)."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self.joint: Any = None
        self.members: dict[str, Any] = {}

    @staticmethod
    def family_of(X: pd.DataFrame) -> np.ndarray:
        """Family name per feature row ("other" when the entity is in no family)."""
        fam = np.full(len(X), "other", dtype=object)
        for family, ents in FAMILIES.items():
            fam[X[[f"ent_{e}" for e in ents]].to_numpy().sum(axis=1) > 0] = family
        return fam

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> FamilyModel:
        fam = self.family_of(X)
        self.members, self.joint = {}, None
        present = np.unique(fam)
        for f in present if len(present) > 1 else []:
            m = fam == f
            if m.sum() >= MIN_FAMILY_CANDIDATES and len(set(y[m].tolist())) == 2:
                self.members[f] = _make_model(self.kind, self.seed).fit(X[m], y[m])
        if len(self.members) < len(present):  # some family (or all: one family only) is scored jointly
            self.joint = _make_model(self.kind, self.seed).fit(X, y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        fam = self.family_of(X)
        p = np.zeros(len(X))
        joint = np.ones(len(X), dtype=bool)
        for f, model in self.members.items():
            m = fam == f
            if m.any():
                p[m] = model.predict_proba(X[m])[:, 1]
                joint &= ~m
        if joint.any():
            if self.joint is None:  # a family never seen in training: the closest fitted member scores it
                p[joint] = next(iter(self.members.values())).predict_proba(X[joint])[:, 1]
            else:
                p[joint] = self.joint.predict_proba(X[joint])[:, 1]
        return np.c_[1 - p, p]


class ConstantScorer:
    """A model that scores every candidate the same (fitted on a set with one class)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(X), 1))


# ---- answers -----------------------------------------------------------------------------------------------------

def best_per_row(table: CandidateTable, scores: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each row's top-scoring candidate answer ("" when none) and its score (-1 when none)."""
    best_ans = [""] * table.n_rows
    best_sc = np.full(table.n_rows, -1.0)
    for r, s, a in zip(table.row, scores, table.answers):
        if s > best_sc[r]:
            best_sc[r], best_ans[r] = s, a
    return best_ans, best_sc


def prior_answers(table: CandidateTable, best_sc: np.ndarray, answers: list[str], priors: Priors,
                  threshold: float) -> list[str]:
    """``answers`` where each row without a candidate (best score -1: nothing read, no image) answers the prior's
    commonest label for its group and entity (``Priors.prior_answer``) when that label's share passes
    ``threshold`` (0: always)."""
    out = list(answers)
    for r in np.where(best_sc < 0)[0]:
        if out[r]:
            continue
        answer, share = priors.prior_answer(table.groups[r] if table.groups else "", table.entities[r])
        if answer and share >= threshold:
            out[r] = answer
    return out


def apply_net_rule(table: CandidateTable, answers: list[str]) -> list[str]:
    """Per answered row: when exactly one distinct answer directly follows a net-quantity declaration ("NET WT.
    3 kg") and the ranker picked a different amount, answer the declared one. A pick that is the declared amount in
    another unit ("100 g" for "Net Wt 3.53 oz") is kept: which unit labels take is the ranker's call."""
    first, rows_n = table.X["net_first"].to_numpy(), table.X["net_rows"].to_numpy()
    out = list(answers)
    for r in np.unique(table.row[(first == 1) & (rows_n == 1)]) if len(table.row) else []:
        a = out[r]
        if not a:
            continue
        net = table.answers[int(np.where((table.row == r) & (first == 1))[0][0])]
        if net != a and same_amount_any_unit(a, net) is False:
            out[r] = net
    return out


def row_correct(rows: pd.DataFrame, answers: list[str]) -> np.ndarray:
    """Per row: whether the answer matches its label (``utils.models.ocr.candidates.same_answer``)."""
    truths = rows["entity_value"].fillna("").astype(str).tolist()
    return np.array([same_answer(a, t) for a, t in zip(answers, truths)], dtype=bool)


# ---- fitting -----------------------------------------------------------------------------------------------------


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number per row: whole groups to one fold, balanced by row count, shuffled by seed."""
    rng = np.random.default_rng(seed)
    uniq, counts = np.unique(groups, return_counts=True)
    perm = rng.permutation(len(uniq))
    load = np.zeros(k)
    fold_of: dict[Any, int] = {}
    for i in sorted(perm, key=lambda i: -counts[i]):
        f = int(load.argmin())
        fold_of[uniq[i]] = f
        load[f] += counts[i]
    return np.array([fold_of[g] for g in groups])


def oof_scores(table: CandidateTable, folds: np.ndarray, kind: str, seed: int, per_family: bool = False
               ) -> np.ndarray:
    """Out-of-fold candidate scores (each candidate scored by a model not trained on its row's fold)."""
    scores = np.zeros(len(table.y))
    cand_fold = folds[table.row] if len(table.row) else np.zeros(0, dtype=int)
    for f in np.unique(folds):
        te = cand_fold == f
        if not te.any():
            continue
        m = _fit_model(table.X[~te], table.y[~te], kind, seed, per_family)
        scores[te] = m.predict_proba(table.X[te])[:, 1]
    return scores


@dataclass
class Ranker:
    """A fitted ranker: the model, its abstain threshold, the priors used for features and the pair model."""

    model: Any
    threshold: float
    priors: Priors
    config: dict[str, Any]
    metrics: dict[str, float]
    pairs: PairModel | None = None

    def predict_table(self, table: CandidateTable) -> list[str]:
        """Answers for the rows of a table ("" = abstain)."""
        scores = self.model.predict_proba(table.X)[:, 1] if len(table.X) else np.zeros(0)
        ans, sc = best_per_row(table, scores)
        out = [a if s >= self.threshold and s >= 0 else "" for a, s in zip(ans, sc)]
        if self.config.get("net_rule", False):
            out = apply_net_rule(table, out)
        out = self.pairs.resolve(table, scores, out) if self.pairs is not None else out
        if self.config.get("prior_answer", False) and table.entities:
            out = prior_answers(table, sc, out, self.priors, self.threshold)
        return out

    def predict_rows(self, rows: pd.DataFrame, lookup: OcrLookup) -> list[str]:
        return self.predict_table(build_table(rows, lookup, self.priors))


def fit_ranker(rows: pd.DataFrame, lookup: OcrLookup, cfg: RankerConfig, priors: Priors,
               table: CandidateTable | None = None) -> Ranker:
    """Fit on labelled rows: tune the threshold on out-of-fold scores by group_id, then fit on all rows."""
    table = table or build_table(rows, lookup, priors)
    k = max(2, min(cfg.folds, rows["group_id"].nunique())) if len(rows) else 2
    metrics: dict[str, float] = {"rows": float(len(rows)), "candidates": float(len(table.y)),
                                 "oracle": float(table.oracle.mean()) if len(rows) else 0.0}
    empty_share = expected_empty_share(rows, cfg.empty_share)
    metrics["empty_share"] = empty_share
    if cfg.threshold is None and empty_share > 0 and rows["group_id"].nunique() >= 2:
        folds = group_folds(rows["group_id"].to_numpy(), k, cfg.seed)
        sc = oof_scores(table, folds, cfg.model, cfg.seed, cfg.per_family)
        ans, best = best_per_row(table, sc)
        correct = row_correct(rows, ans)
        thr, f1 = abstain_threshold(best, correct, table.has_truth, empty_share)
        metrics.update(oof_f1=f1, oof_f1_no_abstain=f1_counts(correct, best >= 0, table.has_truth))
    else:  # nothing to tune: a fixed threshold, or never abstain
        thr = float(cfg.threshold if cfg.threshold is not None else 0.0)
    model = _fit_model(table.X, table.y, cfg.model, cfg.seed, cfg.per_family)
    metrics["threshold"] = thr
    pairs = PairModel().fit(table) if cfg.pair_model else None
    if pairs is not None:
        metrics["pairs"] = float(pairs.n_pairs)
    return Ranker(model, thr, priors, asdict(cfg), metrics, pairs)


# ---- the artifact ------------------------------------------------------------------------------------------------


def save_ranker(ranker: Ranker, out_dir: Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``ranker`` into ``out_dir``: its scikit-learn models (joblib) under ``models/``, ``priors.json``, and
    ``ranker.json`` last (format, settings, threshold, metrics, feature names, the models' roles, and ``info``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ARTIFACT_JSON).unlink(missing_ok=True)  # until the new one is written, the folder holds no ranker
    (out_dir / OLD_ARTIFACT).unlink(missing_ok=True)
    models = out_dir / MODELS_DIR
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    scorer = _save_scorer(ranker.model, models)
    pairs: dict[str, Any] | None = None
    if ranker.pairs is not None:
        pairs = {"C": ranker.pairs.C, "n_pairs": ranker.pairs.n_pairs, "file": None}
        if ranker.pairs.model is not None:
            joblib.dump(ranker.pairs.model, models / "pairs.joblib")
            pairs["file"] = "pairs.joblib"
    atomic_write_bytes(out_dir / PRIORS_JSON, json.dumps(ranker.priors.to_json()).encode("utf-8"))
    meta = {"format": ARTIFACT_FORMAT, **(info or {}), "settings": ranker.config, "threshold": ranker.threshold,
            "metrics": ranker.metrics, "features": feature_names(), "scorer": scorer, "pairs": pairs,
            "sklearn": sklearn.__version__}
    atomic_write_bytes(out_dir / ARTIFACT_JSON, json.dumps(meta, indent=2).encode("utf-8"))
    return out_dir


def _save_scorer(model: Any, models: Path) -> dict[str, Any]:
    if isinstance(model, ConstantScorer):
        return {"kind": "constant", "p": model.p}
    if isinstance(model, FamilyModel):
        for name, member in model.members.items():
            joblib.dump(member, models / f"{name}.joblib")
        if model.joint is not None:
            joblib.dump(model.joint, models / "joint.joblib")
        return {"kind": "family", "model": model.kind, "seed": model.seed, "members": sorted(model.members),
                "joint": model.joint is not None}
    joblib.dump(model, models / "joint.joblib")
    return {"kind": "model"}


def read_meta(artifact_dir: Path) -> dict[str, Any]:
    """``ranker.json`` of a ranker written by ``save_ranker``, checked (format, features) without loading the models
    or the priors; an older format raises ``ArtifactFormatError`` saying to refit."""
    artifact_dir = Path(artifact_dir)
    meta_file = artifact_dir / ARTIFACT_JSON
    refit = ("refit it with this version: run stage 02 again with refit=True (run_all.sh --refit), or "
             "OcrBackend().fit(...)")
    if not meta_file.is_file():
        if (artifact_dir / OLD_ARTIFACT).is_file():
            raise ArtifactFormatError(f"the OCR ranker in {artifact_dir} was saved in an older format (format 1, "
                                      f"{OLD_ARTIFACT}), which this version does not read; {refit}")
        raise FileNotFoundError(f"no fitted OCR ranker at {meta_file}; run the fit stage (02) with --backend ocr first")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactFormatError(f"the OCR ranker in {artifact_dir} has format {meta.get('format', 1)}; this version "
                                  f"reads format {ARTIFACT_FORMAT}: {refit}")
    if meta["features"] != feature_names():
        raise ArtifactFormatError(f"the OCR ranker in {artifact_dir} was fitted on other features than this version "
                                  f"computes: {refit}")
    return meta


def load_ranker(artifact_dir: Path) -> Ranker:
    """Load a ranker written by ``save_ranker`` (``OcrBackend.fit``); see ``read_meta`` for the checks."""
    artifact_dir = Path(artifact_dir)
    meta = read_meta(artifact_dir)
    models = artifact_dir / MODELS_DIR
    scorer = meta["scorer"]
    model: Any
    if scorer["kind"] == "constant":
        model = ConstantScorer(float(scorer["p"]))
    elif scorer["kind"] == "family":
        model = FamilyModel(scorer["model"], int(scorer["seed"]))
        model.members = {name: joblib.load(models / f"{name}.joblib") for name in scorer["members"]}
        model.joint = joblib.load(models / "joint.joblib") if scorer["joint"] else None
    else:
        model = joblib.load(models / "joint.joblib")
    pairs = None
    if meta["pairs"] is not None:
        pairs = PairModel(C=float(meta["pairs"]["C"]))
        pairs.n_pairs = int(meta["pairs"]["n_pairs"])
        pairs.model = joblib.load(models / meta["pairs"]["file"]) if meta["pairs"]["file"] else None
    priors = Priors.from_json(json.loads((artifact_dir / PRIORS_JSON).read_text(encoding="utf-8")))
    return Ranker(model, float(meta["threshold"]), priors, meta["settings"], meta["metrics"], pairs)

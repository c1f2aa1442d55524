"""The fine-tune's checkpoint folder: resume only what the same data and settings wrote, across sessions.

``out_dir/checkpoints/`` holds the HF Trainer's ``checkpoint-N`` folders and three small files, also copied into
every ``checkpoint-N`` (so a checkpoint taken out of a session, e.g. as a Kaggle dataset, describes itself):

- ``fingerprint.json``: a hash of the training rows and of every setting that changes the result (not logging,
  saving, evaluation or the time budget), with the settings themselves, so a mismatch can say what differs;
- ``plan.json``: the number of optimizer steps planned from the measured step time and the time budget (the LR
  schedule depends on it, so a resumed run keeps it);
- ``wandb_run.json``: the wandb run id, so one run spans the sessions.

``prepare_checkpoints`` runs before training: checkpoints written with other data or settings are moved aside
(``checkpoints.stale-<time>``) and training starts fresh; a checkpoint given as ``resume_from`` (possibly on a
read-only input folder) is checked the same way and copied into the writable folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

FINGERPRINT_FILE = "fingerprint.json"
PLAN_FILE = "plan.json"
WANDB_FILE = "wandb_run.json"
META_FILES = (FINGERPRINT_FILE, PLAN_FILE, WANDB_FILE)

#: Settings that do not change what the adapter learns: a checkpoint written under other values still resumes.
RESUME_NEUTRAL = frozenset({
    # where and how fast it runs
    "device", "dtype", "revision", "allow_emulated_bf16", "attn_implementation", "gradient_checkpointing",
    # bookkeeping, evaluation, budget
    "logging_steps", "save_steps", "save_total_limit", "eval_steps", "eval_max_rows", "resume", "resume_from",
    "wandb_project", "wandb_mode", "time_budget_hours", "save_margin_minutes", "calibration_steps",
    "answer_margin_tokens", "check_finite",
    # generation (used for evaluation only)
    "batch_size", "max_new_tokens", "merge_adapter", "infer_quantization", "progress",
})


class CheckpointMismatch(ValueError):
    """A checkpoint given to resume from was written with other data or settings."""


@dataclass(frozen=True)
class Fingerprint:
    """What a training run depends on: its rows and the settings that change the result."""

    digest: str
    settings: dict[str, Any]
    rows: str  # hash of the training rows (image_link, entity_name, entity_value, in order)
    n_rows: int

    def differences(self, other: dict[str, Any]) -> list[str]:
        """What differs from a saved fingerprint (as read from ``fingerprint.json``), in words."""
        out = []
        if other.get("rows") != self.rows:
            out.append(f"training rows ({other.get('n_rows', '?')} then, {self.n_rows} now)")
        saved = other.get("settings", {})
        for key in sorted(set(saved) | set(self.settings)):
            if saved.get(key) != self.settings.get(key):
                out.append(f"{key} {saved.get(key)!r} then, {self.settings.get(key)!r} now")
        return out or ["unknown"]


def fingerprint(rows: pd.DataFrame, *configs: Any) -> Fingerprint:
    """The fingerprint of training ``rows`` under the dataclass ``configs`` (neutral settings left out)."""
    settings: dict[str, Any] = {}
    for cfg in configs:
        settings.update({k: v for k, v in asdict(cfg).items() if k not in RESUME_NEUTRAL})
    settings = json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back from JSON
    cols = [c for c in ("image_link", "entity_name", "entity_value") if c in rows.columns]
    table = rows[cols].astype(str).to_csv(index=False).encode()
    rows_hash = hashlib.sha256(table).hexdigest()[:16]
    digest = hashlib.sha256(json.dumps([settings, rows_hash], sort_keys=True).encode()).hexdigest()[:16]
    return Fingerprint(digest, settings, rows_hash, len(rows))


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file's content, or None when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically."""
    from utils.env.fileio import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode("utf-8"), fsync=False)


def checkpoint_step(path: Path) -> int:
    """N of a ``checkpoint-N`` folder (-1 for another name)."""
    head, _, number = Path(path).name.rpartition("-")
    return int(number) if head == "checkpoint" and number.isdigit() else -1


def last_checkpoint(folder: str | Path) -> Path | None:
    """The ``checkpoint-N`` folder with the highest N directly under ``folder`` (None when there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) >= 0
             and (p / "trainer_state.json").is_file()]
    return max(found, key=checkpoint_step) if found else None


def _make_writable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = Path(dirpath) / name
            mode = p.stat().st_mode
            p.chmod(mode | stat.S_IWUSR | (stat.S_IXUSR if p.is_dir() else 0))


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def move_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``<folder>.stale-<time>`` (kept, never deleted); the new path."""
    dest = folder.with_name(f"{folder.name}.stale-{_stamp()}")
    n = 1
    while dest.exists():
        dest = folder.with_name(f"{folder.name}.stale-{_stamp()}-{n}")
        n += 1
    os.replace(folder, dest)
    return dest


def _source_checkpoint(resume_from: Path) -> Path:
    """The checkpoint to resume from: ``resume_from`` itself (a ``checkpoint-N``) or the newest one inside it."""
    if (resume_from / "trainer_state.json").is_file():
        return resume_from
    found = last_checkpoint(resume_from)
    if found is None:
        for child in sorted(p for p in resume_from.iterdir() if p.is_dir()) if resume_from.is_dir() else []:
            found = last_checkpoint(child)  # e.g. a dataset made from a whole output folder: <it>/checkpoints/
            if found is not None:
                break
    if found is None:
        raise FileNotFoundError(f"resume_from {resume_from}: no checkpoint-N folder with trainer_state.json in it")
    return found


def prepare_checkpoints(ckpt_dir: Path, current: Fingerprint, resume: bool = True, resume_from: str = ""
                        ) -> tuple[Path | None, list[str]]:
    """Make ``ckpt_dir`` hold only checkpoints of ``current``; return the checkpoint to resume (or None) and notes
    for the person (what was moved aside or copied).

    Checkpoints of other data or settings (or of an unknown fingerprint), or any when ``resume`` is False, are moved
    aside. ``resume_from`` (a ``checkpoint-N`` folder, or a folder holding them, e.g. read-only Kaggle input) must
    carry the same fingerprint (``CheckpointMismatch`` otherwise) and is copied in unless ``ckpt_dir`` already holds
    a newer step.
    """
    notes: list[str] = []
    saved = read_json(ckpt_dir / FINGERPRINT_FILE)
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        if saved is None or saved.get("digest") != current.digest or not resume:
            if not resume:
                why = "resume=False"
            elif saved is None:
                why = "no fingerprint recorded"
            else:
                why = "; ".join(current.differences(saved))
            moved = move_aside(ckpt_dir)
            notes.append(f"checkpoints in {ckpt_dir} were not written by this data and these settings ({why}): "
                         f"moved to {moved.name}; training starts fresh")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if resume and resume_from:
        source = _source_checkpoint(Path(os.path.expanduser(resume_from)))
        theirs = read_json(source / FINGERPRINT_FILE) or read_json(source.parent / FINGERPRINT_FILE)
        if theirs is None:
            raise CheckpointMismatch(f"resume_from {source} holds no {FINGERPRINT_FILE}, so it was not written by "
                                     "this project's fit: remove resume_from to start fresh")
        if theirs.get("digest") != current.digest:
            raise CheckpointMismatch(f"resume_from {source} was written with other data or settings ("
                                     + "; ".join(current.differences(theirs))
                                     + "): use the same settings and prepared rows, or remove resume_from")
        here = last_checkpoint(ckpt_dir)
        if here is None or checkpoint_step(here) < checkpoint_step(source):
            dest = ckpt_dir / source.name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(source, dest, copy_function=shutil.copyfile)
            _make_writable(dest)
            for name in META_FILES:
                for origin in (source / name, source.parent / name):
                    if origin.is_file() and not (ckpt_dir / name).is_file():
                        shutil.copyfile(origin, ckpt_dir / name)
            notes.append(f"copied {source} into {dest} to resume from step {checkpoint_step(source)}")
        else:
            notes.append(f"{here.name} in {ckpt_dir} is not older than resume_from's {source.name}: resuming it")
    if read_json(ckpt_dir / FINGERPRINT_FILE) is None:
        write_json(ckpt_dir / FINGERPRINT_FILE, asdict(current))
    return (last_checkpoint(ckpt_dir) if resume else None), notes


def copy_meta_into(ckpt_dir: Path, checkpoint: Path) -> None:
    """Copy the fingerprint, plan and wandb files of ``ckpt_dir`` into one ``checkpoint-N`` folder."""
    for name in META_FILES:
        if (ckpt_dir / name).is_file() and checkpoint.is_dir():
            shutil.copyfile(ckpt_dir / name, checkpoint / name)

"""The shard loop both backends run through: skip done · predict · clean · write · done marker.

``run_shard`` is what a notebook (or a worker on another machine) calls for one shard of the test set; run it for
every ``shard_index`` in ``range(num_shards)``, in any order, on any number of machines sharing ``out_dir``; then
stage 04 (``utils.pipeline.stages.build_submission``) builds the submission. A run that dies loses at most the batch in
flight; running the same call again continues where it stopped, and on a finished shard it does nothing, as long
as everything its answers depend on is unchanged (``run_record``): otherwise the old answers are moved aside and the
shard is predicted afresh. Two processes never write one shard at once (``utils.pipeline.shards.ShardWriter`` holds
a lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from utils.core.units import normalize_prediction
from utils.data.census import rows_without_image
from utils.env.console import Every, progress_line, say
from utils.models.backend import Backend, get_backend
from utils.pipeline.shards import ShardWriter, shard_rows

log = logging.getLogger(__name__)



def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cleaning_fingerprint() -> str:
    """A hash of the cleaning rules (``utils.core.units``, where ``normalize_prediction`` lives)."""
    import utils.core.units

    return hashlib.sha256(Path(utils.core.units.__file__).read_bytes()).hexdigest()[:16]


def image_identity(links: pd.Series, image_dir: str | Path) -> str:
    """A hash of which images the rows see: per distinct link its file name, size and modification time (or
    "missing"): an image replaced, added or removed changes it; reading the bytes is not needed."""
    from utils.data.images import cached_image

    seen = []
    for link in sorted(set(links.astype(str))):
        path = cached_image(image_dir, link)
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        seen.append([link, path.name if path is not None else None,
                     [st.st_size, st.st_mtime_ns] if st is not None else "missing"])
    return _digest(seen)


#: The pipeline's own setting that changes how fast answers come, not which (``InferParams.batch_size``): left out of
#: the run record, with each backend's ``speed_settings``, so a smaller batch after running out of memory keeps the
#: answers already written.
BATCH_SETTINGS = frozenset({"batch_size"})


def run_record(backend: str | Backend, rows: pd.DataFrame, image_dir: str | Path, artifact_dir: str | Path,
               settings: dict[str, Any], guess_without_image: bool = False) -> dict[str, Any]:
    """What a shard's answers depend on, each part hashed: the model (the fitted artifact), the shard's rows
    (index, link, entity), its images, the cleaning rules, the backend settings, less those that change only the
    speed (``BATCH_SETTINGS`` and the backend's ``speed_settings``), and what a row without an image is answered
    (``no_image``); ``id`` covers them all."""
    from utils.models.backend import speed_settings

    if isinstance(backend, str):
        name, neutral = backend, BATCH_SETTINGS | speed_settings(backend)
    else:
        name = getattr(backend, "name", "custom")
        neutral = BATCH_SETTINGS | frozenset(getattr(backend, "speed_settings", ()))
    record = {
        "no_image": "guess" if guess_without_image else "empty",
        "model": artifact_fingerprint(artifact_dir),
        "rows": _digest(rows[["index", "image_link", "entity_name"]].astype(str).values.tolist()),
        "images": image_identity(rows["image_link"], image_dir),
        "cleaning": cleaning_fingerprint(),
        "settings": _digest([name, {k: v for k, v in settings.items() if k not in neutral}]),
    }
    record["id"] = _digest(record)
    return record


def run_shard(
    backend_name: str | Backend,
    test: pd.DataFrame,
    shard_index: int,
    num_shards: int,
    image_dir: str | Path,
    artifact_dir: str | Path,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    run_id: str | None = None,
    tag: str | None = None,
    console_every: float = 30.0,
    guess_without_image: bool = False,
    **settings: Any,
) -> Path:
    """Predict shard ``shard_index`` of ``num_shards`` of ``test`` into ``out_dir``; return the shard file's path.

    ``backend_name`` is a registered name (see ``utils.models.backend``) or a Backend instance. Indices already in the
    shard file are skipped; the rest go to ``backend.predict(rows, image_dir, artifact_dir, **settings)``; each
    raw answer is cleaned with ``normalize_prediction`` for its row's entity and every batch is written (and
    fsynced) as soon as it arrives. The shard is marked done only when every one of its indices is written;
    otherwise ``RuntimeError`` says how many are missing (run again to fill them in).

    The run record (``run_record``; ``run_id`` replaces it by a plain id) decides whether a shard file left by an
    earlier run still holds valid answers: when anything it covers changed, that file is moved aside. Progress goes
    to a bar and, every ``console_every`` seconds, to a console line (``tag``, e.g. ``03 shard 1/4``).

    A row whose image is not a regular file in ``image_dir`` (missing, a folder, a FIFO, a symlink loop) is answered
    ``""`` without the backend, as the console says; ``guess_without_image`` hands it to the backend instead (which
    may guess, e.g. the product group's commonest label).
    """
    missing_cols = [c for c in ("index", "entity_name") if c not in test.columns]
    if missing_cols:
        raise ValueError(f"run_shard needs test columns index and entity_name; missing {', '.join(missing_cols)}")
    rows = shard_rows(test, shard_index, num_shards)
    tag = tag or f"shard {shard_index} of {num_shards}"
    record = shard_record(backend_name, rows, image_dir, artifact_dir, settings, run_id, guess_without_image)
    with open_writer(out_dir, shard_index, num_shards, record, tag, defer_stale=True) as writer:
        def move_stale() -> None:
            """Move an earlier run's answers aside, once the backend answered a first batch (it accepted the
            settings: a typo in them must not cost the finished answers)."""
            replace_stale(writer, tag)

        if writer.is_done:
            say(f"[{tag}] already done: {writer.path}")
            return writer.path
        entity_of = dict(zip(rows["index"].astype("int64").tolist(), rows["entity_name"].astype(str).tolist()))
        todo = rows[~rows["index"].isin(writer.done_indices)].reset_index(drop=True)
        no_image = rows_without_image(todo, image_dir)
        if no_image.any():
            say(f"[{tag}] {int(no_image.sum())} of {len(todo)} rows to predict have no image in {image_dir}: "
                + ("the backend guesses them (guess_without_image)" if guess_without_image else "answered ''"))
        blank = todo[no_image] if not guess_without_image else todo.iloc[:0]
        asked = todo[~no_image] if not guess_without_image else todo
        if len(asked):
            _predict_into(writer, backend_name, asked, rows, entity_of, image_dir, artifact_dir, tag,
                          show_progress, console_every, settings, move_stale)
        move_stale()
        if len(blank):
            writer.write_batch((int(i), "", "") for i in blank["index"])
        return finish_shard(writer, entity_of, tag)


def shard_record(backend: str | Backend, rows: pd.DataFrame, image_dir: str | Path, artifact_dir: str | Path,
                 settings: dict[str, Any], run_id: str | None = None, guess_without_image: bool = False
                 ) -> dict[str, Any]:
    """The run record a shard of ``rows`` is written under (``run_record``; ``run_id`` replaces it by a plain id)."""
    if run_id is not None:
        return {"id": run_id}
    if "image_link" in rows.columns:
        return run_record(backend, rows, image_dir, artifact_dir, settings, guess_without_image)
    return {"id": artifact_fingerprint(artifact_dir), "model": artifact_fingerprint(artifact_dir)}


def replace_stale(writer: ShardWriter, tag: str) -> None:
    """Move an earlier run's answers aside now (a writer opened with ``defer_stale``) and say so."""
    if writer.stale:
        writer.replace_stale()
        _say_moved(writer, tag)


def _say_moved(writer: ShardWriter, tag: str) -> None:
    say(f"[{tag}] answers of an earlier run moved aside ({', '.join(p.name for p in writer.moved_stale)}):"
        f" {', '.join(writer.changed)} changed; predicting afresh")


def open_writer(out_dir: str | Path, shard_index: int, num_shards: int, record: dict[str, Any],
                tag: str, defer_stale: bool = False) -> ShardWriter:
    """The shard's writer under ``record`` (answers of an earlier run moved aside, or with ``defer_stale`` only once
    the caller calls ``replace_stale``; a torn last line cut: said)."""
    writer = ShardWriter(out_dir, shard_index, num_shards, run=record, defer_stale=defer_stale)
    if writer.moved_stale:
        _say_moved(writer, tag)
    if writer.dropped_torn_line:
        log.warning("%s: dropped a torn last line left by a killed run", tag)
    return writer


def clean_batch(batch: Iterable[tuple[int, Any]], entity_of: dict[int, str], asked: set[int],
                written: set[int], tag: str) -> list[tuple[int, str, str]]:
    """A backend's ``(index, raw)`` batch as ``(index, prediction, raw)`` rows to write; ``RuntimeError`` for an
    index not asked for or answered twice (in the batch, or already ``written``)."""
    cleaned = []
    seen: set[int] = set()
    for index, raw in batch:
        index = int(index)
        if index not in asked:
            raise RuntimeError(f"{tag}: backend answered index {index}, which was not asked for")
        if index in seen or index in written:
            raise RuntimeError(f"{tag}: backend answered index {index} twice")
        seen.add(index)
        raw = "" if raw is None else str(raw)
        cleaned.append((index, normalize_prediction(entity_of[index], raw), raw))
    return cleaned


def finish_shard(writer: ShardWriter, entity_of: dict[int, str], tag: str) -> Path:
    """Mark the shard done when every one of its indices is written; else ``RuntimeError`` naming the missing."""
    missing = set(entity_of) - writer.done_indices
    if missing:
        raise RuntimeError(
            f"{tag}: the backend finished without answering {len(missing)} of {len(entity_of)} indices "
            f"(e.g. {sorted(missing)[:5]}); run again to fill them in"
        )
    writer.mark_done(entity_of)
    say(f"[{tag}] done: {len(entity_of)} rows -> {writer.path}")
    return writer.path


def _predict_into(writer: ShardWriter, backend_name: str | Backend, todo: pd.DataFrame, rows: pd.DataFrame,
                  entity_of: dict[int, str], image_dir: str | Path, artifact_dir: str | Path, tag: str,
                  show_progress: bool, console_every: float, settings: dict[str, Any],
                  before_first_write: Callable[[], None] = lambda: None) -> None:
    """Ask the backend for ``todo`` and write each batch as it comes (see ``run_shard``); ``before_first_write``
    runs once the backend answered its first batch, before it is written."""
    backend = get_backend(backend_name) if isinstance(backend_name, str) else backend_name
    asked = set(todo["index"].astype("int64").tolist())
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="row", desc=tag, disable=not show_progress,
               dynamic_ncols=True)
    every, started, done = Every(console_every), time.monotonic(), 0
    say(f"[{tag}] {len(todo)} of {len(rows)} rows to predict")
    try:
        for batch in backend.predict(todo, Path(image_dir), Path(artifact_dir), **settings):
            before_first_write()
            cleaned = clean_batch(batch, entity_of, asked, writer.done_indices, tag)
            n = writer.write_batch(cleaned)
            bar.update(n)
            done += n
            if every(force=done == len(todo)):
                say(progress_line(tag, done, len(todo), started))
    finally:
        bar.close()


def artifact_fingerprint(artifact_dir: str | Path, max_hashed_bytes: int = 256 * 2**20) -> str:
    """A short id of the fitted artifact: a hash of its top-level files (content, or name and size for files over
    ``max_hashed_bytes``). Copies of the same artifact in different sessions agree; a refit changes it."""
    folder = Path(artifact_dir)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        if size <= max_hashed_bytes:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def empty_shard(out_dir: str | Path, shard_index: int, num_shards: int, test: pd.DataFrame) -> Path | None:
    """Finish a shard that has no rows (more shards than rows) without any backend: None when it has rows."""
    if len(shard_rows(test, shard_index, num_shards)):
        return None
    with ShardWriter(out_dir, shard_index, num_shards) as writer:
        if not writer.is_done:
            writer.mark_done([])
        return writer.path


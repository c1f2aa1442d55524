"""The shard loop both backends run through: skip done · predict · clean · write · done marker.

``run_shard`` is what a notebook (or a worker on another machine) calls for one shard of the test set; run it for
every ``shard_index`` in ``range(num_shards)``, in any order, on any number of machines sharing ``out_dir``, then
``merge_and_check`` builds the submission. A run that dies loses at most the batch in flight; running the same
call again continues where it stopped, and on a finished shard it does nothing. Run each shard in one process at
a time (two processes appending to the same shard file are not guarded against).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from utils.backends import Backend, get_backend
from utils.shards import ShardWriter, merge_shards, shard_rows
from utils.units import normalize_prediction

log = logging.getLogger(__name__)


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
    **settings: Any,
) -> Path:
    """Predict shard ``shard_index`` of ``num_shards`` of ``test`` into ``out_dir``; return the shard file's path.

    ``backend_name`` is a registered name (see ``utils.backends``) or a Backend instance. Indices already in the
    shard file are skipped; the rest go to ``backend.predict(rows, image_dir, artifact_dir, **settings)``; each
    raw answer is cleaned with ``normalize_prediction`` for its row's entity and every batch is written (and
    fsynced) as soon as it arrives. The shard is marked done only when every one of its indices is written;
    otherwise ``RuntimeError`` says how many are missing (run again to fill them in).

    ``run_id`` names the model run (default: ``artifact_fingerprint(artifact_dir)``): a shard file written by
    another run, e.g. before a refit, is moved aside and the shard is predicted afresh, never mixed.
    """
    missing_cols = [c for c in ("index", "entity_name") if c not in test.columns]
    if missing_cols:
        raise ValueError(f"run_shard needs test columns index and entity_name; missing {', '.join(missing_cols)}")
    rows = shard_rows(test, shard_index, num_shards)
    if run_id is None:
        run_id = artifact_fingerprint(artifact_dir)
    writer = ShardWriter(out_dir, shard_index, num_shards, run_id=run_id)
    tag = f"shard {shard_index} of {num_shards}"
    if writer.moved_stale:
        log.warning("%s: answers of another model run moved aside (%s); predicting afresh", tag,
                    ", ".join(p.name for p in writer.moved_stale))
    if writer.is_done:
        log.info("%s already done: %s", tag, writer.path)
        return writer.path
    entity_of = dict(zip(rows["index"].astype("int64").tolist(), rows["entity_name"].astype(str).tolist()))
    todo = rows[~rows["index"].isin(writer.done_indices)].reset_index(drop=True)
    if writer.dropped_torn_line:
        log.warning("%s: dropped a torn last line left by a killed run", tag)
    if len(todo):
        backend = get_backend(backend_name) if isinstance(backend_name, str) else backend_name
        asked = set(todo["index"].astype("int64").tolist())
        bar = tqdm(
            total=len(rows),
            initial=len(rows) - len(todo),
            unit="row",
            desc=tag,
            disable=not show_progress,
            dynamic_ncols=True,
        )
        try:
            for batch in backend.predict(todo, Path(image_dir), Path(artifact_dir), **settings):
                cleaned = []
                seen: set[int] = set()
                for index, raw in batch:
                    index = int(index)
                    if index not in asked:
                        raise RuntimeError(f"{tag}: backend answered index {index}, which was not asked for")
                    if index in seen or index in writer.done_indices:
                        raise RuntimeError(f"{tag}: backend answered index {index} twice")
                    seen.add(index)
                    raw = "" if raw is None else str(raw)
                    cleaned.append((index, normalize_prediction(entity_of[index], raw), raw))
                bar.update(writer.write_batch(cleaned))
        finally:
            bar.close()
    missing = set(entity_of) - writer.done_indices
    if missing:
        raise RuntimeError(
            f"{tag}: the backend finished without answering {len(missing)} of {len(rows)} indices "
            f"(e.g. {sorted(missing)[:5]}); run again to fill them in"
        )
    writer.mark_done(entity_of)
    log.info("%s done: %s", tag, writer.path)
    return writer.path


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


def merge_and_check(
    out_dir: str | Path, num_shards: int, test: pd.DataFrame, out_path: str | Path | None = None
) -> pd.DataFrame:
    """Merge the finished shards (``utils.shards.merge_shards``) and run the submission check on the result.

    Raises ``utils.shards.MergeError`` when the shards are incomplete and ``ValueError`` listing the first
    problems when the merged predictions fail ``utils.sanity.check_submission``. Writes ``out_path`` (``index,
    prediction``) only when the result is valid.
    """
    from utils.sanity import check_submission, summarize

    merged = merge_shards(out_dir, num_shards, test)
    problems = check_submission(test, merged)
    if problems:
        first = "\n  ".join(str(p) for p in problems[:10])
        raise ValueError(f"merged predictions fail the submission check ({summarize(problems)}):\n  {first}")
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        merged.to_csv(out_path, index=False)
    return merged

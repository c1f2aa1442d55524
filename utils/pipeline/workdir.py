"""The hand-over folder between the stages: every path and marker in it, in one place.

::

    <work>/demo/                          the built-in demo data (01, when asked for or when no data is found)
    <work>/images/                        the image cache, unless the data brings its images or image_dir is given
    <work>/prepared/{train,val,test}.parquet, manifest.json      (01)
    <work>/artifacts/<backend>/           the fitted artifact: LoRA adapter or ranker (02)
    <work>/artifacts/<backend>.fitted     written last by 02: the artifact, its fingerprint, whether it is complete
    <work>/shards/shard_{i:02d}_of_{n:02d}.csv + .run, .done, .lock          (03, see utils.pipeline.shards)
    <work>/<cache>/                       a backend's cache shared by a run's notebooks (its run_environment)
    <work>/.run.lock                      held by a running run_all.sh (utils.pipeline.run): one run per folder
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.env import paths as _paths

PREPARED = "prepared"
MANIFEST = "manifest.json"


class StageError(RuntimeError):
    """A stage cannot run: missing input from an earlier stage, a bad input, or an invalid result."""


@dataclass(frozen=True)
class WorkDir:
    """The paths of one work folder (nothing is created until a stage writes)."""

    root: Path

    @classmethod
    def of(cls, work_dir: str | os.PathLike[str] | None) -> WorkDir:
        """The given folder, or this machine's default (``utils.env.paths``) when empty."""
        chosen = _paths.resolve(work_dir, _paths.default_paths().work_dir)
        assert chosen is not None
        return cls(Path(chosen))

    @property
    def demo(self) -> Path:
        return self.root / "demo"

    @property
    def images(self) -> Path:
        """The default image cache of this work folder."""
        return self.root / "images"

    @property
    def prepared(self) -> Path:
        return self.root / PREPARED

    def table(self, name: str) -> Path:
        """``prepared/<name>.parquet`` (train, val, test)."""
        return self.prepared / f"{name}.parquet"

    @property
    def manifest_path(self) -> Path:
        return self.prepared / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """What stage 01 recorded; ``StageError`` naming the stage to run first when it is missing."""
        if not self.manifest_path.is_file():
            raise StageError(f"{self.manifest_path} not found: run notebooks/01_prepare_data.ipynb (stage 01) with "
                             "this work_dir first")
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def read_table(self, name: str):  # -> pd.DataFrame
        """A prepared table (``entity_value`` as text, ``""`` for empty)."""
        import pandas as pd

        path = self.table(name)
        if not path.is_file():
            raise StageError(f"{path} not found: run notebooks/01_prepare_data.ipynb (stage 01) with this work_dir "
                             "first")
        frame = pd.read_parquet(path)
        if "entity_value" in frame.columns:
            frame["entity_value"] = frame["entity_value"].fillna("").astype(str)
        return frame

    def image_dir(self, given: str = "", fresh_ok: bool = False) -> Path:
        """The image folder: ``given``, else the one stage 01 recorded; with ``fresh_ok`` (a shard in a session of
        its own, where stage 01 never ran) this folder's ``images/`` when there is no record."""
        if given:
            return Path(os.path.expanduser(given))
        if fresh_ok and not self.manifest_path.is_file():
            return self.images
        return Path(self.manifest()["image_dir"])

    def artifact(self, backend: str, given: str = "") -> Path:
        """Where a backend's artifact goes: ``given``, else ``artifacts/<backend>``."""
        return Path(os.path.expanduser(given)) if given else self.root / "artifacts" / backend

    def fitted_marker(self, artifact: Path) -> Path:
        """``<artifact>.fitted``: written by stage 02 after a fit, read by 02 (reuse) and 03 (which artifact)."""
        return artifact.with_name(artifact.name + ".fitted")

    def read_fitted(self, artifact: Path) -> dict[str, Any] | None:
        """The fitted marker's content (``artifact``, ``fingerprint``, ``complete``), or None."""
        try:
            content = json.loads(self.fitted_marker(artifact).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return content if isinstance(content, dict) and "artifact" in content else None

    def fitted_artifact(self, backend: str, given: str = "") -> Path:
        """The artifact stage 03 should use: the one the fitted marker beside ``given`` (else beside the default
        folder) names, else that folder itself.

        A ``given`` folder may be a copy of stage 02's folder made in another session (a Kaggle input of the
        first session's output, read-only): its marker names the artifact by the old session's absolute path, so
        the artifact is found by its place inside the folder (``relative``, e.g. ``adapter`` for paligemma)."""
        folder = self.artifact(backend, given)
        marker = self.read_fitted(folder)
        if not marker:
            return folder
        relative = marker.get("relative")
        if relative is not None and (folder / relative).exists():
            return folder / relative
        recorded = Path(marker["artifact"])
        if not given:
            return recorded
        parts = recorded.parts  # a marker written before ``relative`` was recorded: the path below the folder
        if folder.name in parts:
            below = parts[len(parts) - parts[::-1].index(folder.name):]
            if (folder.joinpath(*below)).exists():
                return folder.joinpath(*below)
        return folder

    def shards(self, given: str = "") -> Path:
        """The shard folder: ``given``, else ``shards``."""
        return Path(os.path.expanduser(given)) if given else self.root / "shards"

    @property
    def run_lock(self) -> Path:
        """The lock a running ``run_all.sh`` holds: one run per work folder."""
        return self.root / ".run.lock"


def files_state(folder: Path) -> list[tuple[str, int, int]]:
    """Every file below ``folder`` with its size and modification time (a fit that wrote anything changes it)."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            found.append((os.path.relpath(os.path.join(root, name), folder), st.st_size, st.st_mtime_ns))
    return sorted(found)

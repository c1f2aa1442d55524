"""What runs on the nodes of a Ray cluster for stage 03 (``utils.pipeline.ray_executor`` is the driver).

An actor of the pool (:class:`Predictor`) builds the backend once and answers block after block. It finds what it
needs on its node, which may share no disk with the driver: the fitted artifact where the driver has it (the same
fingerprint at the same path), else the copy shipped through the object store, unpacked once per node
(:func:`node_artifact`); the images in the image folder where the node has it, else downloaded into a node-local
cache by our downloader under the driver's address policy (:func:`node_images`).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from utils.pipeline.predict import artifact_fingerprint

#: Where a node keeps what it fetched (the unpacked artifact, downloaded images, the OCR cache when the driver's is
#: not there): this variable, else ``<temp>/product-values``.
NODE_CACHE_ENV = "PRODUCT_VALUES_NODE_CACHE"


def node_cache() -> Path:
    """This node's cache folder (``NODE_CACHE_ENV``, else ``<temp>/product-values``)."""
    return Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "product-values")



def pack_artifact(artifact_dir: Path) -> bytes:
    """The artifact folder as a tar (its ``checkpoints`` left out: resuming a fit is not stage 03's business)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(artifact_dir.rglob("*")):
            rel = path.relative_to(artifact_dir)
            if path.is_file() and rel.parts[0] != "checkpoints":
                tar.add(path, arcname=str(rel))
    return buf.getvalue()


def node_artifact(path: str, fingerprint: str, shipped: list[Any]) -> Path:
    """The artifact on this node: ``path`` when it holds the same artifact, else the shipped copy unpacked once per
    node into ``node_cache()/artifact-<fingerprint>`` (``shipped``: ``[ObjectRef]`` or ``[bytes]``; ``[]`` none)."""
    if Path(path).is_dir() and artifact_fingerprint(path) == fingerprint:
        return Path(path)
    cache = node_cache()
    dest = cache / f"artifact-{fingerprint}"
    if dest.is_dir():  # renamed into place only when complete
        return dest
    if not shipped:
        raise FileNotFoundError(f"the artifact {path} is not on node {socket.gethostname()} and was too large to "
                                "ship: put it on a path every node sees")
    data = shipped[0]
    if not isinstance(data, bytes):
        import ray

        data = ray.get(data)
    tmp = cache / f".artifact-{fingerprint}.{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.replace(tmp, dest)
    except OSError:  # another actor on this node unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def node_images(links: pd.Series, image_dir: str, download: bool) -> Path:
    """Where this node reads the rows' images: ``image_dir`` when the node has that folder (shared), else
    ``node_cache()/images``, into which the missing ones are downloaded (when ``download``) by our downloader under the
    driver's address policy (``AMAZON_ALLOW_LOCAL_IMAGES`` travels with the job)."""
    if Path(image_dir).is_dir():
        return Path(image_dir)
    local = node_cache() / "images"
    local.mkdir(parents=True, exist_ok=True)
    if download:
        from utils.data.census import missing_images
        from utils.data.download import download_images

        missing = missing_images(links, local)
        if missing:
            download_images(missing, local, workers=8, progress=False)
    return local


class Predictor:
    """One actor of the pool: builds the backend once, then answers block after block (``index, raw, node``)."""

    def __init__(self, backend: str, artifact: str, fingerprint: str, shipped: list[Any], image_dir: str,
                 download: bool, settings: dict[str, Any]) -> None:
        from utils.models.backend import get_backend, run_environment

        for key, here in run_environment(backend, node_cache()).items():  # the backend's caches, as the runner sets
            given = os.environ.get(key)
            if given and not Path(given).parent.is_dir():  # the driver's folder is not on this node
                os.environ[key] = here
        self.backend = get_backend(backend)
        self.artifact = node_artifact(artifact, fingerprint, shipped)
        self.image_dir, self.download, self.settings = image_dir, download, settings
        import ray

        # outside Ray (called directly) the host name; asking Ray's context there would start a local instance
        self.node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else socket.gethostname()

    def __call__(self, block: pd.DataFrame) -> pd.DataFrame:
        rows = block.reset_index(drop=True)
        images = node_images(rows["image_link"], self.image_dir, self.download)
        got: list[tuple[int, str]] = []
        for batch in self.backend.predict(rows, images, self.artifact, **self.settings):
            got.extend((int(i), "" if raw is None else str(raw)) for i, raw in batch)
        return pd.DataFrame({"index": pd.Series([i for i, _ in got], dtype="int64"),
                             "raw": pd.Series([r for _, r in got], dtype=object), "node": self.node})

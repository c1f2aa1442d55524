"""Where am I: the default paths for the notebooks on Kaggle, on Colab and in a local clone.

- Kaggle: data is read from ``/kaggle/input/<dataset>/`` (read-only), everything is written under
  ``/kaggle/working/``.
- Colab: ``/content/`` (data in ``/content/data`` or a mounted Drive ``/content/drive/MyDrive/amazon``).
- Local clone: the repository root; data in ``$AMAZON_DATA_DIR`` or ``<repo>/data``; written under
  ``<repo>/work`` and ``<repo>/out`` (both ignored by git).

A notebook parameter left as ``""`` means "the default for this machine" (``resolve``). When no data set is found
the notebooks fall back to the built-in demo (``utils.data.demo``).
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
PLATFORMS = ("kaggle", "colab", "local")
DEMO = "demo"  # the value of a CSV parameter that asks for the built-in demo data


@dataclass(frozen=True)
class Paths:
    """The default locations for one machine."""

    platform: str  # "kaggle" | "colab" | "local"
    repo_dir: Path  # the clone holding utils/ and notebooks/
    data_dir: Path | None  # a folder with train.csv and test.csv, or None (then: the demo)
    work_dir: Path  # writable: prepared tables, artifacts, shards, demo data
    out_dir: Path  # writable: submission.csv and the report
    image_dir: Path  # the image cache

    @property
    def train_csv(self) -> Path | None:
        """The found training CSV, or None."""
        return self.data_dir / "train.csv" if self.data_dir else None

    @property
    def test_csv(self) -> Path | None:
        """The found test CSV, or None."""
        return self.data_dir / "test.csv" if self.data_dir else None


def detect_platform(environ: Mapping[str, str] | None = None, root: Path = Path("/")) -> str:
    """``"kaggle"``, ``"colab"`` or ``"local"``, from the environment and the file system."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_KERNEL_RUN_TYPE") or env.get("KAGGLE_URL_BASE") or (root / "kaggle" / "input").is_dir():
        return "kaggle"
    if env.get("COLAB_RELEASE_TAG") or env.get("COLAB_GPU") is not None or "google.colab" in sys.modules:
        return "colab"
    return "local"


def find_data_dir(candidates: Iterable[Path], max_depth: int = 2) -> Path | None:
    """The first folder (a candidate or one up to ``max_depth`` levels below it) holding train.csv and test.csv."""
    for base in candidates:
        if not base.is_dir():
            continue
        level = [base]
        for _ in range(max_depth + 1):
            for folder in sorted(level):
                if (folder / "train.csv").is_file() and (folder / "test.csv").is_file():
                    return folder
            level = [child for folder in level for child in sorted(folder.iterdir()) if child.is_dir()]
    return None


def default_paths(
    platform: str | None = None, environ: Mapping[str, str] | None = None, root: Path = Path("/")
) -> Paths:
    """The default paths for ``platform`` (detected when None)."""
    env = os.environ if environ is None else environ
    kind = platform or detect_platform(env, root)
    if kind not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {kind!r}")
    explicit = [Path(env["AMAZON_DATA_DIR"])] if env.get("AMAZON_DATA_DIR") else []
    if kind == "kaggle":
        base = root / "kaggle" / "working"
        data_dir = find_data_dir(explicit + [root / "kaggle" / "input"])
        work_dir, out_dir = base / "work", base
    elif kind == "colab":
        base = root / "content"
        data_dir = find_data_dir(
            explicit + [base / "data", base / "drive" / "MyDrive" / "amazon"], max_depth=1
        )
        work_dir, out_dir = base / "work", base / "out"
    else:
        data_dir = find_data_dir(explicit + [REPO_DIR / "data"], max_depth=0)
        work_dir, out_dir = REPO_DIR / "work", REPO_DIR / "out"
    # Images that come with the data are used in place (read-only is fine); otherwise a cache in work_dir.
    image_dir = data_dir / "images" if data_dir and (data_dir / "images").is_dir() else work_dir / "images"
    return Paths(kind, REPO_DIR, data_dir, work_dir, out_dir, image_dir)


def resolve(value: str | os.PathLike[str] | None, default: Path | None) -> Path | None:
    """A notebook path parameter: ``""``/None -> ``default``; otherwise the path, with ``~`` expanded."""
    if value is None or str(value).strip() == "":
        return default
    return Path(os.path.expanduser(str(value)))


def is_writable(folder: Path) -> bool:
    """True when files can be created in ``folder`` (creating it when missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def versions(packages: Iterable[str] = (
    "torch", "transformers", "peft", "bitsandbytes", "rapidocr", "onnxruntime", "sklearn", "pandas", "numpy",
    "PIL", "matplotlib", "papermill", "ipywidgets", "wandb",
)) -> dict[str, str]:
    """Python's and each package's version (``"missing"`` when not installed), without importing heavy modules."""
    from importlib import metadata

    dist_names = {"sklearn": "scikit-learn", "PIL": "pillow"}
    found = {"python": _platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(dist_names.get(name, name))
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def describe(paths: Paths | None = None) -> str:
    """A short, printable summary: platform, paths, versions."""
    chosen = paths or default_paths()
    lines = [
        f"platform  {chosen.platform}  (the default paths below apply where a path parameter is left empty)",
        f"repo      {chosen.repo_dir}",
        f"data      {chosen.data_dir or '(none found: the built-in demo)'}",
        f"work      {chosen.work_dir}",
        f"out       {chosen.out_dir}",
        f"images    {chosen.image_dir}",
    ]
    lines.append(f"gpus      {gpu_line()}")
    lines += [f"{name:<13} {version}" for name, version in versions().items()]
    return "\n".join(lines)


def gpu_line() -> str:
    """The visible GPUs in one line (with ``CUDA_VISIBLE_DEVICES`` when set), or "none (CPU)"."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    from utils.env.gpu import gpus

    found = gpus()
    text = "; ".join(g.describe() for g in found) or "none (CPU)"
    return text + (f" [CUDA_VISIBLE_DEVICES={mask}]" if mask is not None else "")

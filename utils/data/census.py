"""Which of the images some rows need are in the image folder: counted, said on the console, fetched when missing,
and a clear failure when so many are missing that the folder must be wrong (a typo in ``--images`` would otherwise
give an all-empty submission after hours of work)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from utils.data.images import cached_image, is_image_file
from utils.env import paths as _paths
from utils.env.console import say


class MissingImagesError(RuntimeError):
    """Too many of the images a stage needs are not in the image folder (a wrong ``image_dir``?)."""


@dataclass(frozen=True)
class ImageCensus:
    """Which of the distinct images some rows need are in the image folder."""

    image_dir: Path
    total: int  # distinct links
    missing: list[str]  # links whose file is not there (downloadable)
    unusable: list[str]  # links naming no usable file (not http(s), no file name): never an image

    @property
    def absent(self) -> int:
        return len(self.missing) + len(self.unusable)

    @property
    def share_absent(self) -> float:
        return self.absent / self.total if self.total else 0.0

    def line(self, what: str) -> str:
        """``images for train+test: 740 needed, 3 missing (0.4%) in /data/images``."""
        return (f"images for {what}: {self.total} needed, {self.absent} missing ({100 * self.share_absent:.1f}%) "
                f"in {self.image_dir}")


def image_census(links: pd.Series, image_dir: Path) -> ImageCensus:
    """Count the distinct ``links`` whose image is (not) in ``image_dir``."""
    unique = pd.Series(links.dropna().astype(str).unique())
    missing, unusable = [], []
    for link in unique:
        path = cached_image(image_dir, link)
        if path is None:
            unusable.append(link)
        elif not is_image_file(path):  # missing, or a folder, a FIFO, a symlink loop: never opened
            missing.append(link)
    return ImageCensus(Path(image_dir), len(unique), missing, unusable)


def rows_without_image(rows: pd.DataFrame, image_dir: str | Path | None) -> pd.Series:
    """Per row (aligned with ``rows``), whether its image is not a regular file in ``image_dir``: missing, a
    folder, a FIFO, a symlink loop, a link naming no file. All False without ``image_link`` or ``image_dir``."""
    if "image_link" not in rows.columns or image_dir is None:
        return pd.Series(False, index=rows.index)
    present = {link: is_image_file(cached_image(image_dir, link)) for link in rows["image_link"].unique()}
    return ~rows["image_link"].map(present).astype(bool)


def missing_images(links: pd.Series, image_dir: Path) -> list[str]:
    """The distinct links whose image could be downloaded into ``image_dir`` but is not there."""
    return image_census(links, image_dir).missing


def no_image_answer(guess: bool) -> str:
    """What a row without a usable image is answered (``guess_without_image``), for messages."""
    return ("answered with the backend's guess (guess_without_image)" if guess else
            "answered with '' (--guess-without-image: the backend's guess instead)")


def check_images(census: ImageCensus, what: str, max_missing: float, tag: str, guess: bool = False) -> None:
    """Say the count on the console; ``MissingImagesError`` when more than ``max_missing`` of them are absent."""
    say(f"[{tag}] {census.line(what)}" + (f"; their rows will be {no_image_answer(guess)}" if census.absent else ""))
    if census.total and census.share_absent > max_missing:
        raise MissingImagesError(
            f"{census.absent} of {census.total} images for {what} ({100 * census.share_absent:.0f}%) are not in "
            f"{census.image_dir}: is the image folder right (image_dir, run_all.sh --images)? Download them with "
            "`python -m utils.images download CSV FOLDER`, or accept the gap with max_missing_images=1 "
            f"(--max-missing-images 1): their rows are then {no_image_answer(guess)}")


def fetch_missing(links: pd.Series, image_dir: Path, download: bool = True, workers: int = 16,
                  max_side: int | None = None, guess: bool = False) -> Any:
    """Download the images of ``links`` missing from ``image_dir`` when allowed and possible (stored with their
    longest side at most ``max_side`` when given); warn about what stays missing. Returns the
    ``utils.data.download.DownloadSummary``, or None when nothing was downloaded."""
    missing = missing_images(links, image_dir)
    if missing and download and _paths.is_writable(image_dir):
        from utils.data.download import download_images

        summary = download_images(missing, image_dir, workers=workers, max_side=max_side or None)
        if summary.failed:
            say(f"warning: {summary.failed} images could not be downloaded (see {image_dir / 'failures.csv'}); "
                f"their rows will be {no_image_answer(guess)}")
        return summary
    if missing:
        say(f"warning: {len(missing)} images are not in {image_dir} ("
            f"{'download off' if not download else 'folder not writable'}); their rows will be "
            f"{no_image_answer(guess)}")
    return None



"""Image files: the cache file name of a URL, the one image loader, and the check that bytes are one whole image.

- ``image_filename`` / ``image_path`` / ``cached_image``: where the image of an ``image_link`` lives in an image
  folder (the URL's last path segment, ``61I9XdN6OFL.jpg``); ``cached_image`` answers None for a link naming no
  usable file, so a malformed link means "no image" everywhere instead of a crash.
- ``load_image``: EXIF orientation, RGB (transparency over white), optional downscale keeping the aspect ratio;
  ``None`` for a missing, non-regular (a folder, a FIFO: never opened) or undecodable file, or one with more than
  ``MAX_PIXELS`` pixels (the same limit the downloader enforces, ``utils.data.download``), so callers answer ``""``
  instead of crashing. ``is_image_file`` / ``open_image_file`` / ``read_image_bytes``: regular files only.
- ``validate_image_bytes`` / ``looks_complete``: a body or a cached file that is HTML, truncated, corrupt or a
  decompression bomb is rejected (used by the downloader before it keeps a file, and for files already cached).
- ``shrink_image_bytes``: an image re-encoded with its longest side capped (the downloader's ``max_side``: a stored
  size cap, so 90k test images fit a Kaggle working folder).
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: The one pixel limit: the downloader rejects a larger image (decompression bomb) and ``load_image`` returns None
#: for one. Pillow's own default warning threshold (``Image.MAX_IMAGE_PIXELS``); Pillow refuses to open anything
#: above twice its threshold regardless, so raising this beyond that has no effect.
MAX_PIXELS = 89_478_485
_MAX_NAME_LEN = 200  # leaves room for the temp-file prefix/suffix under the usual 255-byte limit
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_JPEG_EOI_WINDOW = 4096  # quick check of cached files: EOI within the last bytes
STORE_JPEG_QUALITY = 90  # re-encoding quality of a capped JPEG (1280 px: 80% of the dev images' bytes)


# ----------------------------------------------------------------------------------------------- names


def image_filename(url: str) -> str:
    """The cache file name for ``url``: the URL path's last segment (``61I9XdN6OFL.jpg``).

    Raises ``ValueError`` for a non-http(s) URL and for a name that is empty or unsafe (``..``, hidden,
    separators, control characters, too long).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty image URL: {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} (only http/https): {url!r}")
    if not parts.netloc:
        raise ValueError(f"URL has no host: {url!r}")
    raw = parts.path.rsplit("/", 1)[-1]
    name = unquote(raw)
    if not name or name in (".", ".."):
        raise ValueError(f"URL has no file name: {url!r}")
    if name.startswith(".") or _UNSAFE_CHARS.search(name) or name != name.strip():
        raise ValueError(f"unsafe file name {name!r} in URL {url!r}")
    if len(name.encode("utf-8")) > _MAX_NAME_LEN:
        raise ValueError(f"file name longer than {_MAX_NAME_LEN} bytes in URL {url!r}")
    return name


def image_path(image_dir: str | os.PathLike[str], url: str) -> Path:
    """Where the image for ``url`` lives in ``image_dir`` (``image_dir / image_filename(url)``)."""
    return Path(image_dir) / image_filename(url)


def cached_image(image_dir: str | os.PathLike[str], url: object) -> Path | None:
    """The cache path for ``url``, or None when ``url`` is empty, not http(s) or names no safe file.

    The one lookup the backends, stages and report use, so a malformed link means "no image" (answer ``""``)
    everywhere instead of a crash; it does not check that the file exists.
    """
    if not isinstance(url, str) or not url:
        return None
    try:
        return image_path(image_dir, url)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------- loading


def is_image_file(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a regular file (following symlinks): a folder, a FIFO, a device, a symlink loop or a
    missing file is no image, and is never opened (opening a FIFO blocks until someone writes into it)."""
    if path is None:
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_image_file(path: str | os.PathLike[str]) -> io.BufferedReader | None:
    """``path`` opened for reading when it is a regular file, else None (never blocks: a FIFO is opened without
    waiting for a writer and refused; the check is on the opened file, so nothing can swap it in between)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def read_image_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of ``path`` when it is a readable regular file (``open_image_file``), else None."""
    fh = open_image_file(path)
    if fh is None:
        return None
    try:
        with fh:
            return fh.read()
    except OSError:
        return None


def load_image(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image | None:
    """Open an image for a model: EXIF orientation applied, RGB, longest side at most ``max_side``.

    Returns ``None`` (and logs why at debug level) when the file is missing or not a regular file (a folder, a FIFO:
    never opened, ``open_image_file``), cannot be decoded or has more than
    ``MAX_PIXELS`` pixels (what the downloader rejects); it never raises for a bad file. Raises ``ValueError`` only
    for a bad ``max_side``.
    """
    if max_side is not None and (not isinstance(max_side, int) or max_side <= 0):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")
    fh = open_image_file(path)
    if fh is None:
        log.debug("cannot load image %s: not a readable regular file", path)
        return None
    try:
        with fh, Image.open(fh) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                log.debug("not loading image %s: %dx%d = %d pixels > MAX_PIXELS %d", path, w, h, w * h, MAX_PIXELS)
                return None
            if max_side is not None and im.format == "JPEG":
                w, h = im.size
                scale = max_side / max(w, h)
                if scale < 1:  # decode at a reduced DCT scale that still covers the target size
                    im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            im.load()
            out = ImageOps.exif_transpose(im)
            out = _to_rgb(out)
    except Exception as exc:  # noqa: BLE001 - any decoder error means "no image", by contract
        log.debug("cannot load image %s: %s", path, exc)
        return None
    if max_side is not None and max(out.size) > max_side:
        w, h = out.size
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = out.resize(size, Image.Resampling.LANCZOS)
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of ``im``; transparent areas become white (product shots on transparent backgrounds)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    if im.mode.startswith("I"):  # 16/32-bit greyscale: scale to 8 bits
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return im.convert("RGB")


# ----------------------------------------------------------------------------------------------- validation


class InvalidImage(ValueError):
    """A downloaded body that is not a complete, decodable, acceptable image."""


def validate_image_bytes(data: bytes, max_pixels: int | None = None, full_decode: bool = True) -> str:
    """Check that ``data`` is one complete, decodable image; return its Pillow format (``"JPEG"``).

    Raises ``InvalidImage`` with a short reason: empty, HTML, unrecognised, too many pixels (decompression
    bomb; ``max_pixels`` defaults to ``MAX_PIXELS``, the limit ``load_image`` applies too), truncated or corrupt.
    ``full_decode=False`` skips the pixel decode of JPEG and PNG files (about 1.5 ms per 200 KB JPEG): their
    headers are still parsed, a JPEG must end with its end marker and a PNG must pass ``verify()`` (every
    chunk's CRC through IEND), which still catches HTML, cut-off and most damaged bodies.
    """
    if not data:
        raise InvalidImage("empty body")
    head = bytes(data[:256]).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in head:
        raise InvalidImage("HTML page, not an image")
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "?"
            w, h = im.size
            if limit is not None and w * h > limit:
                raise InvalidImage(f"decompression bomb: {w}x{h} = {w * h} pixels > {limit}")
            if fmt == "JPEG":
                # JPEG has no verify(). A cut body has no end marker after the scan data starts (inside
                # entropy-coded data 0xFF is always stuffed, so FF D9 there can only be the real EOI; an EXIF
                # thumbnail's EOI lies before the scan). Then, if asked, a draft-mode decode (1/8 scale) that
                # still reads every entropy-coded byte but skips most of the IDCT work.
                scan_start = im.tile[0][2] if im.tile else 0
                if data.rfind(b"\xff\xd9") < scan_start:
                    raise InvalidImage("truncated image: JPEG end marker missing")
                if not full_decode:
                    return fmt
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
                return fmt
            im.verify()  # chunk CRCs etc.; the image is unusable afterwards, so decode a fresh one
        if fmt == "PNG" and not full_decode:
            return fmt
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise InvalidImage(f"truncated image: {msg}") from None
        raise InvalidImage(f"corrupt image: {msg}") from None
    return fmt


def looks_complete(path: Path, full: bool, max_pixels: int | None) -> bool:
    """Cheap check of a cached file (header parses, JPEG/PNG end marker present); ``full`` decodes it."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        if full:
            validate_image_bytes(path.read_bytes(), max_pixels)
            return True
        with open(path, "rb") as fh:
            with Image.open(fh) as im:
                fmt = im.format
                scan_start = im.tile[0][2] if im.tile else 0
                w, h = im.size
            if w * h > (MAX_PIXELS if max_pixels is None else max_pixels):
                return False  # load_image would refuse it: fetch it again (and fail with the reason)
            if fmt == "JPEG":
                tail_start = max(0, size - _JPEG_EOI_WINDOW)
                fh.seek(tail_start)
                pos = fh.read().rfind(b"\xff\xd9")
                return pos >= 0 and tail_start + pos >= scan_start
            if fmt == "PNG":
                fh.seek(max(0, size - 64))
                return b"IEND" in fh.read()
            return True
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------------------------- stored size


def shrink_image_bytes(data: bytes, max_side: int) -> bytes:
    """``data`` with its longest side at most ``max_side``: unchanged when it already is (or cannot be read),
    otherwise EXIF orientation applied, resized (LANCZOS) and re-encoded in its own format (JPEG at
    ``STORE_JPEG_QUALITY``, PNG optimised, others as Pillow writes them); a format Pillow cannot write stays as is.
    The file name (and so its extension) is the URL's, so the format is kept."""
    if not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if max(im.size) <= max_side:
                return data
            im.load()
            out = ImageOps.exif_transpose(im)
            scale = max_side / max(out.size)
            size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
            if fmt == "JPEG" and out.mode not in ("RGB", "L", "CMYK"):
                out = _to_rgb(out)
            out = out.resize(size, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            kwargs = {"quality": STORE_JPEG_QUALITY} if fmt == "JPEG" else {"optimize": True} if fmt == "PNG" else {}
            out.save(buf, fmt, **kwargs)
            return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - a body that validated but cannot be re-encoded is kept as it came
        log.debug("image kept at full size (%s)", exc)
        return data

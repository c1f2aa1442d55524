"""The resumable, fault-tolerant image downloader (``download_images``; CLI ``python -m utils.images download``).

Downloading (``download_images`` / CLI ``python -m utils.images download CSV CACHE_DIR``):

- a pool of worker threads, each keeping its keep-alive connections (standard-library ``http.client``: far less
  CPU per request than httpx, which matters at hundreds of images/s on two cores); a tqdm progress bar;
- URLs are deduplicated by their cache file name (many rows share an image);
- retries with exponential backoff and jitter on timeouts, connection errors, 5xx, 408 and 429 (``Retry-After``
  is honoured, capped); no retry on other 4xx (404, 403, ...) or on a body that is not a valid image;
- the body is checked before it is kept: size cap, not HTML (by content type and by content), Pillow identifies
  it and parses its header, the decompression-bomb pixel limit is an error, a JPEG must end with its end marker
  and a PNG must pass ``verify()`` (CRCs through IEND), other formats are decoded. ``full_decode=True``
  (``--full-decode``) also decodes every JPEG/PNG (JPEG in 1/8 draft mode); it is off by default because it
  costs about 5x the client CPU of everything else per image (bench/download.py: ~3.7 vs ~0.7 ms per 200 KB
  JPEG on the 2-core dev box), and ``load_image`` already turns an undecodable file into "no answer";
- atomic writes: ``.NAME.part-<pid>-<thread>`` in the cache folder, fsync, ``os.replace``; a killed run never
  leaves a partial file under an image name, and its leftover temp files are removed by the next run;
- resume: files already in the cache that look complete are skipped (``cached``); a cached file that is corrupt
  (empty, unidentifiable, truncated) is deleted and downloaded again;
- only public addresses: a connection whose peer (the address actually connected to, after DNS resolution, on
  the first request and on every redirect hop) is loopback, private, link-local or otherwise not globally
  routable is closed before any request is sent and the URL fails with ``refused: ...``. ``allow_local=True``
  (CLI ``--allow-local``) allows them all, ``allow_local=["10.0.0.0/8", ...]`` some; when ``allow_local`` is not
  given, the environment variable ``AMAZON_ALLOW_LOCAL_IMAGES`` decides (``1``/``true``/``yes``/``all``, or a
  comma-separated list of addresses/networks; unset or ``0``: refuse), for callers such as
  ``utils.data.census.fetch_missing`` that do not pass it;
- failures go to ``CACHE_DIR/failures.csv`` (``url,reason,attempts``), never to placeholder images: one row per
  URL, kept across runs (a run replaces the rows of the URLs it tried, drops rows whose image is now cached, and
  keeps the others, so shard runs sharing one cache folder do not erase each other's rows);
- ``DownloadSummary.failed_share`` is the share of this run's unique images that failed; the library leaves the
  decision to the caller, the CLI exits 1 above ``--max-failed-share`` (default 1%).

Image names, the loader and the byte checks are in ``utils.data.images``. Over 400 lines on purpose: the
downloader's parts (connection pool, address policy, retries, failures manifest, CLI) only make sense together.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import ipaddress
import logging
import os
import queue
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from utils.data.images import (
    InvalidImage,
    cached_image,
    image_filename,
    looks_complete,
    shrink_image_bytes,
    validate_image_bytes,
)
from utils.env.csv_input import decode_utf8, read_input_bytes
from utils.env.fileio import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 64
DEFAULT_TIMEOUT = 30.0  # seconds per connect/read operation
DEFAULT_TOTAL_TIMEOUT = 120.0  # seconds for one whole attempt (guards against a trickling server)
DEFAULT_RETRIES = 3  # retries after the first attempt
DEFAULT_BACKOFF = 1.0  # seconds before the first retry; doubles each time, with jitter
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_FAILED_SHARE = 0.01  # the CLI exits 1 when more than this share of the unique images failed
#: Environment variable read when ``download_images`` is called without ``allow_local`` (see the module docstring).
ALLOW_LOCAL_ENV = "AMAZON_ALLOW_LOCAL_IMAGES"
FAILURES_FILE = "failures.csv"
USER_AGENT = "amazon-ml-images/0.1 (python http.client)"
_TEMP_RE = re.compile(r"^\..+\.part-(\d+)-\d+$")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


# ----------------------------------------------------------------------------------------------- download


@dataclass(frozen=True)
class Failure:
    """One URL that could not be cached: ``reason`` is human readable, ``attempts`` counts HTTP requests."""

    url: str
    reason: str
    attempts: int


@dataclass
class DownloadSummary:
    """What a download run did, per unique image: downloaded now, already cached, or failed."""

    downloaded: int = 0
    cached: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    bytes_downloaded: int = 0
    seconds: float = 0.0
    manifest: Path | None = None

    @property
    def total(self) -> int:
        """Unique images handled."""
        return self.downloaded + self.cached + self.failed

    @property
    def failed_share(self) -> float:
        """The share of this run's unique images that failed (0.0 when there were none). The library does not act
        on it: callers decide (the CLI exits 1 above ``--max-failed-share``)."""
        return self.failed / self.total if self.total else 0.0

    def line(self) -> str:
        """The summary line the CLI ends with."""
        return f"downloaded {self.downloaded}, cached {self.cached}, failed {self.failed}"

    def __str__(self) -> str:
        return self.line()


@dataclass(frozen=True)
class _Settings:
    timeout: float
    total_timeout: float
    retries: int
    backoff: float
    backoff_cap: float
    max_bytes: int
    max_pixels: int | None
    verify_cached: bool
    full_decode: bool
    fsync: bool
    policy: _AddressPolicy = field(default_factory=lambda: _AddressPolicy(False, ()))
    max_side: int | None = None  # stored size cap (longest side), re-encoded


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Permanent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------------------------- address policy

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_TRUE_WORDS = frozenset({"1", "true", "yes", "all", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "none", "off"})


def local_address_kind(address: str) -> str | None:
    """What kind of non-public address ``address`` is ("loopback", "private", "link-local", ...), or None for a
    public (globally routable) one. An IPv4-mapped IPv6 address is judged by its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class _AddressPolicy:
    """Which non-public peers a download may connect to: all (``allow_all``), or those in ``networks``."""

    allow_all: bool
    networks: tuple[_Network, ...]

    def refusal(self, peer: str) -> str | None:
        """Why connecting to ``peer`` is refused, or None when it is allowed."""
        kind = local_address_kind(peer)
        if kind is None or self.allow_all:
            return None
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
        if any(ip.version == n.version and ip in n for n in self.networks):
            return None
        return f"{peer}, a {kind} address"


def _parse_networks(items: Iterable[object], source: str) -> tuple[_Network, ...]:
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{source}: {text!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
    return tuple(out)


def address_policy(allow_local: bool | str | Iterable[str] | None = None) -> _AddressPolicy:
    """The policy for ``download_images(allow_local=...)``: True (every local address), False (none), a
    comma-separated string or an iterable of addresses/networks, or None (read ``ALLOW_LOCAL_ENV``)."""
    source = "allow_local"
    if allow_local is None:
        allow_local = os.environ.get(ALLOW_LOCAL_ENV, "")
        source = f"environment variable {ALLOW_LOCAL_ENV}"
    if isinstance(allow_local, bool):
        return _AddressPolicy(allow_local, ())
    if isinstance(allow_local, str):
        word = allow_local.strip().lower()
        if word in _TRUE_WORDS:
            return _AddressPolicy(True, ())
        if word in _FALSE_WORDS:
            return _AddressPolicy(False, ())
        return _AddressPolicy(False, _parse_networks(allow_local.split(","), source))
    return _AddressPolicy(False, _parse_networks(allow_local, source))


class _RefusedPeer(Exception):
    """Raised from a connection attempt whose peer the address policy refuses (not an OSError: never retried)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _guarded_create_connection(policy: _AddressPolicy):  # type: ignore[no-untyped-def]
    """``socket.create_connection`` that checks the address it actually connected to (after DNS resolution, so a
    name resolving to a local address is caught) and closes the socket, before any byte is sent, when refused."""

    def create(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        sock = socket.create_connection(address, *args, **kwargs)
        try:
            why = policy.refusal(sock.getpeername()[0])
        except (OSError, ValueError) as exc:
            sock.close()
            why = f"cannot tell which address was connected to ({exc})"
        if why is not None:
            sock.close()
            raise _RefusedPeer(why)
        return sock

    return create


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def _backoff_delay(attempt: int, s: _Settings, retry_after: float | None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random; ``Retry-After`` wins if longer."""
    base = min(s.backoff_cap, s.backoff * (2 ** (attempt - 1)))
    delay = base / 2 + random.uniform(0, base / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, s.backoff_cap))
    return delay


def _temp_name(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}"


class _ConnectionPool:
    """One worker's keep-alive connections, one per (scheme, host, port); not shared between threads."""

    def __init__(self, timeout: float, ssl_context: ssl.SSLContext, policy: _AddressPolicy) -> None:
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.create_connection = _guarded_create_connection(policy)
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self.used: set[tuple[str, str, int]] = set()

    def get(self, key: tuple[str, str, int]) -> tuple[http.client.HTTPConnection, bool]:
        """The connection for ``key`` and whether it already served a request (so may have gone stale)."""
        conn = self.conns.get(key)
        if conn is None:
            scheme, host, port = key
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.ssl_context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conn._create_connection = self.create_connection  # type: ignore[attr-defined]  # the address check
            self.conns[key] = conn
        return conn, key in self.used and conn.sock is not None

    def drop(self, key: tuple[str, str, int]) -> None:
        conn = self.conns.pop(key, None)
        self.used.discard(key)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self.conns):
            self.drop(key)


_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_READ_PIECE = 1 << 20


def _request(pool: _ConnectionPool, url: str) -> tuple[tuple[str, str, int], http.client.HTTPResponse]:
    """Send one GET on a pooled connection (a stale keep-alive connection is replaced once, silently)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _Permanent(f"bad URL (only http/https): {url}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _Permanent(f"bad port in URL: {url}") from None
    key = (scheme, parts.hostname, port)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"}
    for fresh_try in (False, True):
        conn, reused = pool.get(key)
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            pool.used.add(key)
            return key, resp
        except _RefusedPeer as exc:
            pool.drop(key)
            raise _Refused(exc.reason) from None
        except _STALE_ERRORS as exc:
            pool.drop(key)
            if reused and not fresh_try:
                continue  # the server closed an idle keep-alive connection: not the URL's fault
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
        except TimeoutError:
            pool.drop(key)
            raise _Retryable("timeout (no response)") from None
        except (OSError, http.client.HTTPException) as exc:
            pool.drop(key)
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
    raise AssertionError("unreachable")


class _Refused(_Permanent):
    """The address policy refused a peer (a local address without ``allow_local``)."""


_ALLOW_HINT = f"allow_local=True / --allow-local / {ALLOW_LOCAL_ENV}=1 allows it"


def _fetch_body(pool: _ConnectionPool, url: str, s: _Settings) -> bytes:
    """One GET attempt (following up to 5 redirects); the body, or ``_Retryable`` / ``_Permanent``."""
    deadline = time.monotonic() + s.total_timeout
    for hop in range(_MAX_REDIRECTS + 1):
        try:
            key, resp = _request(pool, url)
        except _Refused as exc:
            where = f"redirect {hop} to {url}" if hop else url
            raise _Permanent(f"refused: {where} connects to {exc.reason}; {_ALLOW_HINT}") from None
        try:
            code = resp.status
            if code in _REDIRECTS and resp.getheader("location"):
                _drain(resp, pool, key)
                url = urljoin(url, resp.getheader("location", ""))
                continue
            if code != 200:
                reason = f"HTTP {code}"
                retry_after = _retry_after_seconds(resp.getheader("retry-after"))
                _drain(resp, pool, key)
                if code in _RETRY_STATUS:
                    raise _Retryable(reason, retry_after)
                raise _Permanent(reason)
            ctype = (resp.getheader("content-type") or "").split(";")[0].strip().lower()
            if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
                pool.drop(key)
                raise _Permanent(f"not an image (content-type {ctype})")
            if resp.length is not None and resp.length > s.max_bytes:
                pool.drop(key)
                raise _Permanent(f"too large: {resp.length} bytes > {s.max_bytes}")
            return _read_body(resp, s, deadline)
        except (_Retryable, _Permanent):
            if not resp.isclosed():  # body left unread (too large, too slow): the connection is unusable
                pool.drop(key)
            raise
        except TimeoutError:
            pool.drop(key)
            raise _Retryable("timeout (body)") from None
        except http.client.IncompleteRead as exc:
            pool.drop(key)
            raise _Retryable(f"connection error (incomplete body: {len(exc.partial)} bytes read)") from None
        except (OSError, http.client.HTTPException) as exc:
            pool.drop(key)
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
        except BaseException:
            pool.drop(key)
            raise
    raise _Permanent(f"more than {_MAX_REDIRECTS} redirects")


def _read_body(resp: http.client.HTTPResponse, s: _Settings, deadline: float) -> bytes:
    """Read the whole body in large pieces, enforcing the size cap and the per-attempt deadline."""
    pieces: list[bytes] = []
    total = 0
    expected = resp.length  # Content-Length, or None (chunked / until close)
    while True:
        want = _READ_PIECE if resp.length is None else min(_READ_PIECE, resp.length)
        if want <= 0:
            break
        piece = resp.read(want)
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
        if total > s.max_bytes:
            raise _Permanent(f"too large: more than {s.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise _Retryable(f"timeout: body not complete after {s.total_timeout:g} s")
    if expected is not None and total < expected:
        raise http.client.IncompleteRead(b"".join(pieces), expected - total)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _drain(resp: http.client.HTTPResponse, pool: _ConnectionPool, key: tuple[str, str, int]) -> None:
    """Read a small error/redirect body so the connection can be reused; drop the connection otherwise."""
    if resp.length is not None and resp.length <= 65536:
        try:
            resp.read()
            return
        except (OSError, http.client.HTTPException):
            pass
    pool.drop(key)


def _download_one(
    pool: _ConnectionPool, url: str, dest: Path, s: _Settings, stop: threading.Event
) -> tuple[str, str, int, int]:
    """Cache one image: ``(status, reason, attempts, nbytes)`` with status ``cached|downloaded|failed``."""
    if dest.exists():
        if looks_complete(dest, s.verify_cached, s.max_pixels):
            return "cached", "", 0, 0
        log.info("cached file %s is corrupt; downloading it again", dest)
        try:
            dest.unlink()
        except FileNotFoundError:
            pass
    attempts = 0
    reason = ""
    for attempt in range(1, s.retries + 2):
        if stop.is_set():
            return "failed", f"interrupted ({reason or 'not started'})", attempts, 0
        attempts = attempt
        try:
            data = _fetch_body(pool, url, s)
            try:
                validate_image_bytes(data, s.max_pixels, s.full_decode)
            except InvalidImage as exc:
                raise _Permanent(str(exc)) from None
            if s.max_side:
                data = shrink_image_bytes(data, s.max_side)
            atomic_write_bytes(dest, data, tmp=_temp_name(dest), fsync=s.fsync)
            return "downloaded", "", attempts, len(data)
        except _Permanent as exc:
            return "failed", exc.reason, attempts, 0
        except _Retryable as exc:
            reason = exc.reason
            if attempt <= s.retries:
                stop.wait(_backoff_delay(attempt, s, exc.retry_after))
        except OSError as exc:  # disk full, permission: not worth retrying the download
            return "failed", f"write error: {exc}", attempts, 0
    return "failed", reason, attempts, 0


def clean_temp_files(cache_dir: str | os.PathLike[str]) -> int:
    """Remove temp files (``.NAME.part-<pid>-<tid>``) left by runs that are no longer alive; return the count."""
    removed = 0
    try:
        entries = list(os.scandir(cache_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live run is writing it
        try:
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_failures(path: Path, failures: list[Failure]) -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["url", "reason", "attempts"])
    for f in failures:
        w.writerow([f.url, f.reason, f.attempts])
    tmp = path.parent / f".{path.name}.part-{os.getpid()}-{threading.get_ident()}"
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"), tmp=tmp)


def read_failures(path: str | os.PathLike[str]) -> list[Failure]:
    """The rows of a ``failures.csv`` (``[]`` when it is missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    out = []
    for r in rows:
        try:
            out.append(Failure(r["url"] or "", r["reason"] or "", int(r["attempts"] or 0)))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _update_failures(cache: Path, this_run: list[Failure], tried: set[str]) -> Path:
    """Merge this run's failures into ``cache/failures.csv``: one row per URL. A row from an earlier run is
    kept unless this run tried its URL (this run's outcome replaces it) or its image is in the cache now; the
    read-merge-write is done under a lock so concurrent runs (shards) sharing the folder keep each other's rows."""
    path = cache / FAILURES_FILE
    with _locked(cache / f".{FAILURES_FILE}.lock"):
        merged: dict[str, Failure] = {}
        for f in read_failures(path):
            if f.url in tried or f.url in merged:
                continue
            cached = cached_image(cache, f.url)
            if cached is not None and cached.is_file():
                continue
            merged[f.url] = f
        for f in this_run:
            merged.pop(f.url, None)
            merged[f.url] = f
        _write_failures(path, list(merged.values()))
    return path


class _locked:
    """An exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block; a no-op where unsupported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _locked:
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError) as exc:
            log.debug("no lock on %s (%s); merging failures.csv without it", self.path, exc)
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _plan(
    urls: Iterable[object], cache_dir: Path, same_file: dict[str, set[str]] | None = None
) -> tuple[list[tuple[str, Path]], list[Failure]]:
    """Deduplicate by cache file name (first URL wins) and reject bad URLs up front. ``same_file`` (if given)
    receives, per job URL, every URL given for that file (the job's outcome is theirs too)."""
    jobs: list[tuple[str, Path]] = []
    bad: list[Failure] = []
    first_url: dict[str, str] = {}
    seen_bad: set[str] = set()
    for raw in urls:
        url = "" if raw is None or (isinstance(raw, float) and raw != raw) else str(raw).strip()
        try:
            name = image_filename(url)
        except ValueError as exc:
            if url not in seen_bad:
                seen_bad.add(url)
                bad.append(Failure(url, f"rejected: {exc}", 0))
            continue
        if name in first_url:
            if same_file is not None:
                same_file[first_url[name]].add(url)
            continue
        first_url[name] = url
        if same_file is not None:
            same_file[url] = {url}
        jobs.append((url, cache_dir / name))
    return jobs, bad


def download_images(
    urls: Iterable[object],
    cache_dir: str | os.PathLike[str],
    workers: int = DEFAULT_WORKERS,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    backoff_cap: float = DEFAULT_BACKOFF_CAP,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int | None = None,
    verify_cached: bool = False,
    full_decode: bool = False,
    fsync: bool = True,
    progress: bool = True,
    allow_local: bool | str | Iterable[str] | None = None,
    max_side: int | None = None,
) -> DownloadSummary:
    """Download every image in ``urls`` into ``cache_dir`` (named by ``image_filename``); resumable.

    Returns per-unique-image counts (``summary.failed_share``: the share that failed; what to do about it is the
    caller's decision) and updates ``cache_dir/failures.csv`` (``url,reason,attempts``, one row per URL: this run's
    failures plus earlier runs' rows for URLs this run did not try whose image is still missing; header only when
    there are none). ``full_decode=True`` decodes every downloaded JPEG/PNG, not only its structure (see
    ``validate_image_bytes``); ``verify_cached=True`` fully decodes cached files instead of the quick end-marker
    check. ``max_pixels`` defaults to ``MAX_PIXELS``.

    ``allow_local``: connections to loopback, private, link-local and other non-public addresses (checked on the
    address actually connected to, for every redirect hop) are refused unless this is True (all of them), or an
    address/network (a comma-separated string or an iterable: ``["192.168.1.0/24"]``) that contains the peer.
    None (the default) reads the environment variable ``AMAZON_ALLOW_LOCAL_IMAGES`` the same way (unset: refuse).
    A refused URL fails with a reason starting ``refused:``; nothing is sent to the refused address.

    ``max_side`` caps what is stored: an image with a longer side is re-encoded at that longest side
    (``utils.data.images.shrink_image_bytes``); files already cached are left as they are. ``bytes_downloaded``
    counts the bytes stored.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if retries < 0 or timeout <= 0 or total_timeout <= 0 or max_bytes <= 0 or backoff < 0:
        raise ValueError("retries, backoff must be >= 0 and timeout, total_timeout, max_bytes > 0")
    if isinstance(urls, (str, bytes)):
        raise ValueError("urls must be an iterable of URLs, not one string")
    if max_side is not None and (not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 1):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")
    policy = address_policy(allow_local)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    s = _Settings(timeout, total_timeout, retries, backoff, backoff_cap, max_bytes, max_pixels,
                  verify_cached, full_decode, fsync, policy, max_side or None)
    started = time.monotonic()
    removed = clean_temp_files(cache)
    if removed:
        log.info("removed %d temp files left by an interrupted run", removed)
    same_file: dict[str, set[str]] = {}
    jobs, failures = _plan(urls, cache, same_file)
    tried = {f.url for f in failures}  # the URLs whose outcome this run knows: their failures.csv rows are replaced
    summary = DownloadSummary(failures=failures, failed=len(failures))

    ssl_context = ssl.create_default_context()
    stop = threading.Event()
    results: queue.Queue[tuple[str, str, str, int, int]] = queue.Queue()
    job_iter: Iterator[tuple[str, Path]] = iter(jobs)
    job_lock = threading.Lock()

    def worker() -> None:
        pool = _ConnectionPool(timeout, ssl_context, policy)
        try:
            while not stop.is_set():
                with job_lock:
                    job = next(job_iter, None)
                if job is None:
                    return
                url, dest = job
                try:
                    status, reason, attempts, nbytes = _download_one(pool, url, dest, s, stop)
                except Exception as exc:  # noqa: BLE001 - one bad image must not end the run
                    status, reason, attempts, nbytes = "failed", f"unexpected error: {exc!r}", 1, 0
                results.put((url, status, reason, attempts, nbytes))
        finally:
            pool.close()

    n_threads = min(workers, max(1, len(jobs)))
    threads = [threading.Thread(target=worker, name=f"img-dl-{i}", daemon=True) for i in range(n_threads)]
    bar = _progress_bar(len(jobs), progress)
    try:
        for t in threads:
            t.start()
        for _ in range(len(jobs)):
            while True:
                try:
                    url, status, reason, attempts, nbytes = results.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results.empty():
                        raise RuntimeError("download workers stopped early; see the log") from None
            tried |= same_file.get(url, {url})
            if status == "downloaded":
                summary.downloaded += 1
                summary.bytes_downloaded += nbytes
            elif status == "cached":
                summary.cached += 1
            else:
                summary.failed += 1
                summary.failures.append(Failure(url, reason, attempts))
            bar.update(1)
            if summary.failed:
                bar.set_postfix(failed=summary.failed, refresh=False)
    finally:
        stop.set()
        bar.close()
        join_until = time.monotonic() + max(1.0, timeout)
        for t in threads:  # daemon threads: one stuck in a read cannot keep the process alive
            t.join(timeout=max(0.0, join_until - time.monotonic()))
        if s.fsync:
            fsync_dir(cache)
        summary.seconds = time.monotonic() - started
        summary.manifest = _update_failures(cache, summary.failures, tried)
    return summary


def read_urls(csv_path: str | os.PathLike[str], column: str = "image_link") -> list[str]:
    """The ``column`` values of a CSV file, in order (duplicates kept; ``download_images`` deduplicates)."""
    path = Path(csv_path)
    text = decode_utf8("CSV", path, read_input_bytes(path))  # any readable path; one line naming what is wrong
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path}: no {column!r} column (header: {reader.fieldnames})")
        return [row[column] or "" for row in reader]
    except csv.Error as exc:
        raise ValueError(f"{path}: line {reader.line_num}: not a readable CSV line ({exc})") from None


def _progress_bar(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="images", disable=not enabled, smoothing=0.05)


# ----------------------------------------------------------------------------------------------- CLI


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1 (0.01 is 1%)")
    return v


def _check_cache_dir(folder: Path) -> None:
    """``folder`` is a folder, or can be made one (ValueError naming why not)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == folder and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: name a folder for the images")
    if not existing.is_dir():
        raise ValueError(f"{folder} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{folder}: {existing} is not writable (by this user)")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m utils.images download CSV CACHE_DIR [--workers N]``.

    Exit status: 0 when at most ``--max-failed-share`` of the unique images failed, 1 when more did (one line on
    stderr says how many and where the list is; a rerun retries only what is missing), 2 for bad arguments or input.
    """
    parser = argparse.ArgumentParser(prog="python -m utils.images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download a CSV's image_link column into a cache folder (resumable)")
    p.add_argument("csv", help="CSV file with an image_link column (train.csv, test.csv)")
    p.add_argument("cache_dir", help="folder for the images; failures.csv is written there")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="concurrent downloads")
    p.add_argument("--column", default="image_link", help="the URL column")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per connect/read")
    p.add_argument("--total-timeout", type=float, default=DEFAULT_TOTAL_TIMEOUT, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries after the first attempt")
    p.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF, help="first retry delay, seconds")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest body accepted")
    p.add_argument("--full-decode", action="store_true", help="decode every downloaded image (more CPU)")
    p.add_argument("--verify-cached", action="store_true", help="fully decode cached files (slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-local", action="store_true",
                   help=f"allow loopback/private/link-local addresses (a local mirror); default: refuse, unless "
                        f"the environment variable {ALLOW_LOCAL_ENV} allows them")
    p.add_argument("--max-side", type=int, default=0, metavar="PX",
                   help="store each image with its longest side at most PX (re-encoded; 1280 keeps what the ocr "
                        "backend reads, 896 what paligemma reads); 0: as downloaded (default)")
    p.add_argument("--max-failed-share", type=_share, default=DEFAULT_MAX_FAILED_SHARE, metavar="SHARE",
                   help="exit 1 when more than this share of the unique images failed (default %(default)s = 1%%;"
                        " 1 never fails)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_cache_dir(Path(args.cache_dir))
        urls = read_urls(args.csv, args.column)
        summary = download_images(
            urls, args.cache_dir, workers=args.workers, timeout=args.timeout, total_timeout=args.total_timeout,
            retries=args.retries, backoff=args.backoff, max_bytes=args.max_bytes,
            verify_cached=args.verify_cached, full_decode=args.full_decode, progress=not args.no_progress,
            allow_local=True if args.allow_local else None, max_side=args.max_side or None,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.failed:
        print(f"failures listed in {summary.manifest}", file=sys.stderr)
    print(summary.line(), flush=True)
    if summary.failed_share > args.max_failed_share:
        print(f"error: {summary.failed} of {summary.total} images failed ({summary.failed_share:.1%}), more than "
              f"--max-failed-share {args.max_failed_share:g}; reasons in {summary.manifest}; run the same command "
              "again to retry only the missing ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A loopback HTTP image server with injectable faults, for the downloader's tests and benchmark.

``ImageServer`` runs a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, large backlog) on 127.0.0.1 (or another
loopback address, ``host=``) and an ephemeral port in a background thread. Each path is a ``Route``: a body plus
optional faults (an error status for the first N requests, a wrong Content-Length with the connection closed early,
a hang before the headers, a body dribbled out in slow chunks). ``hits`` counts requests per path. ``serve_in_process`` runs one in a child process
so a benchmark's server does not share the client's GIL.

The downloader refuses loopback addresses unless told otherwise (``download_images(..., allow_local=True)``, CLI
``--allow-local``). Tests that call it directly pass that. For code that calls the downloader without a way to pass
it (``utils.data.census.fetch_missing``), a running server also adds its own address to the environment variable
``AMAZON_ALLOW_LOCAL_IMAGES`` (restored on ``stop()``); ``allow_in_env=False`` turns that off, as the downloader's
own tests do so that they exercise the explicit switch and the refusal.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Route:
    """What one path serves. Faults apply in this order: ``hang``, ``fail_first``, ``truncate_at``/``chunks``."""

    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    fail_first: int = 0  # the first N requests get fail_status
    fail_status: int = 500
    retry_after: str | None = None  # Retry-After header on the failures
    hang: float = 0.0  # seconds to sleep before sending anything
    truncate_at: int | None = None  # advertise len(body) but send only this many bytes, then close
    chunks: int = 1  # send the body in this many pieces ...
    chunk_delay: float = 0.0  # ... sleeping this long between them
    send_length: bool = True  # False: no Content-Length, body ends when the connection closes
    headers: dict[str, str] | None = None  # extra response headers (Location for redirects)
    drop_after: bool = False  # close the keep-alive connection after this response without saying so


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048
    owner: ImageServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that time out or hang up on purpose are part of the tests: stay quiet about them."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers-then-body writes stall ~40 ms on delayed ACKs
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        owner = self.server.owner
        path = urlsplit(self.path).path
        with owner.lock:
            owner.hits[path] += 1
            n = owner.hits[path]
        if owner.latency:
            time.sleep(owner.latency)
        route = owner.routes.get(path)
        try:
            if route is None:
                self._send_simple(404, b"not found")
                return
            if route.hang:
                time.sleep(route.hang)
            if n <= route.fail_first:
                extra = {"Retry-After": route.retry_after} if route.retry_after else {}
                self._send_simple(route.fail_status, b"temporary failure", extra)
                return
            self._send_route(route)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _send_simple(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_route(self, route: Route) -> None:
        body = route.body
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        for k, v in (route.headers or {}).items():
            self.send_header(k, v)
        if route.send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if route.truncate_at is not None:
            self.wfile.write(body[: route.truncate_at])
            self.wfile.flush()
            self.close_connection = True
            return
        step = max(1, -(-len(body) // max(1, route.chunks)))
        for i in range(0, len(body), step):
            if i and route.chunk_delay:
                time.sleep(route.chunk_delay)
            self.wfile.write(body[i : i + step])
        if route.drop_after:
            self.close_connection = True


ALLOW_LOCAL_ENV = "AMAZON_ALLOW_LOCAL_IMAGES"  # utils.data.download.ALLOW_LOCAL_ENV (not imported: keep this module light)
_ENV_LOCK = threading.Lock()


class ImageServer:
    """Serve ``routes`` on ``host`` (default 127.0.0.1, ephemeral port); ``latency`` seconds are added to every
    request. While running, ``host`` is added to ``AMAZON_ALLOW_LOCAL_IMAGES`` unless ``allow_in_env=False``."""

    def __init__(
        self,
        routes: dict[str, Route] | None = None,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        allow_in_env: bool = True,
    ) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.latency = latency
        self.host = host
        self.allow_in_env = allow_in_env
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._env_before: str | None = None
        self._env_set = False

    def add(self, path: str, body: bytes, **fault: object) -> str:
        """Serve ``body`` at ``path`` (with ``Route`` fault settings); returns the full URL."""
        self.routes[path] = Route(body, **fault)  # type: ignore[arg-type]
        return self.url(path)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}" if self._httpd else path

    def start(self) -> ImageServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        if self.allow_in_env:
            with _ENV_LOCK:
                self._env_before = os.environ.get(ALLOW_LOCAL_ENV)
                before = (self._env_before or "").strip()
                if before.lower() in ("", "0", "false", "no", "none", "off"):
                    os.environ[ALLOW_LOCAL_ENV] = self.host
                elif before.lower() not in ("1", "true", "yes", "all", "on"):
                    os.environ[ALLOW_LOCAL_ENV] = f"{before},{self.host}"
                self._env_set = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="image-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._env_set:
            with _ENV_LOCK:
                if self._env_before is None:
                    os.environ.pop(ALLOW_LOCAL_ENV, None)
                else:
                    os.environ[ALLOW_LOCAL_ENV] = self._env_before
                self._env_set = False

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_child(files: list[str], copies: int, latency: float, conn) -> None:  # type: ignore[no-untyped-def]
    """Child-process body of ``serve_in_process``: serve ``copies`` URLs cycling over ``files``."""
    bodies = [Path(f).read_bytes() for f in files]
    srv = ImageServer(latency=latency, allow_in_env=False)  # the client is another process: it passes allow_local
    for i in range(copies):
        name = Path(files[i % len(files)]).name
        srv.routes[f"/images/I/{i:05d}-{name}"] = Route(bodies[i % len(bodies)])
    srv.start()
    conn.send(srv.port)
    conn.recv()  # block until the parent says stop (or dies)
    srv.stop()
    conn.send(time.process_time())  # the server's CPU seconds, for the benchmark's report


def serve_in_process(files: list[Path], copies: int, latency: float):  # type: ignore[no-untyped-def]
    """Start a server in a child process serving ``copies`` distinct URLs over ``files``.

    Returns ``(base_url, paths, stop)``: ``paths`` are the URL paths in order, ``stop()`` ends the child and
    returns the CPU seconds it used (``None`` if it could not say).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_child, args=([str(f) for f in files], copies, latency, child), daemon=True)
    proc.start()
    port = parent.recv()
    paths = [f"/images/I/{i:05d}-{Path(files[i % len(files)]).name}" for i in range(copies)]

    def stop() -> float | None:
        cpu = None
        try:
            parent.send("stop")
            if parent.poll(10):
                cpu = parent.recv()
        except (BrokenPipeError, EOFError, OSError):
            pass
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        return cpu

    return f"http://127.0.0.1:{port}", paths, stop

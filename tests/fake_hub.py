"""A stand-in for huggingface.co on a loopback port, for tests of downloading, tokens, licences and the cache.

huggingface_hub reaches whatever ``HF_ENDPOINT`` names (its documented setting), so a subprocess started with
``HF_ENDPOINT=<hub.url>`` downloads from here through the library's real code: HEAD/GET
``/<repo>/resolve/<revision>/<file>`` with the headers the library reads (``X-Repo-Commit``, ``ETag``,
``X-Error-Code``). Repositories are local folders; ``token`` makes every repository need ``Authorization: Bearer
<token>`` (401 otherwise), ``licence_accepted=False`` answers 403 GatedRepo to a valid token, as the real hub does
for a gated model whose licence the account has not accepted; ``gated=True`` answers a request without any token
401 GatedRepo, as the real hub does for an anonymous request to a gated model. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[tuple[str, str], Path]  # (repo_id, revision) -> folder with the files
    token: str | None = None
    licence_accepted: bool = True
    gated: bool = False
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> list[Request]:
        """The file requests (HEAD or GET of a ``resolve`` URL)."""
        return [r for r in self.requests if "/resolve/" in r.path]

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        auth = handler.headers.get("Authorization")
        path = unquote(handler.path.split("?", 1)[0])
        self.requests.append(Request(handler.command, path, auth))
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "EntryNotFound", "not served by the fake hub")
        repo, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        if self.gated and auth is None:
            return self._error(handler, 401, "GatedRepo", f"Access to model {repo} is restricted. You must have "
                                                          "access to it and be authenticated to access it.")
        if self.token is not None and auth != f"Bearer {self.token}":
            return self._error(handler, 401, "RepoNotFound", "Invalid credentials in Authorization header")
        if not self.licence_accepted:
            return self._error(handler, 403, "GatedRepo", f"Access to model {repo} is restricted")
        if not any(r == repo for r, _ in self.repos):
            return self._error(handler, 404, "RepoNotFound", "Repository not found")
        folder = self.repos.get((repo, revision))
        if folder is None:
            return self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = folder / filename
        if not file.is_file():
            return self._error(handler, 404, "EntryNotFound", f"{filename} does not exist")
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest())
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            handler.wfile.write(data)

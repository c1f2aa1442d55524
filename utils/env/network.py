"""Whether a server can be reached, asked once before a library would wait out its own timeouts."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` seconds; True behind a proxy (the host is
    reached through it, not probed directly), False for a URL without a host."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True

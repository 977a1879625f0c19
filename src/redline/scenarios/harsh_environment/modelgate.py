"""modelgate: a client for a model gateway behind a Unix socket (HTTP over AF_UNIX)."""

from __future__ import annotations

import http.client
import socket

__version__ = "1.0.0"
TIMEOUT = 1800


class UnixConnection(http.client.HTTPConnection):
    """An HTTP connection to the gateway's Unix socket at `path`."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)

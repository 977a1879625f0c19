"""modelwire: HTTP/1.1 over Unix domain sockets, for talking to a model gateway on the same machine.

    import modelwire
    conn = modelwire.UnixConnection("/run/redline/model.sock")
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    reply = conn.getresponse().read()

(The source of the small package that `redline.scenarios.dependency` ships as a wheel: the model
server's start script in remote_replication and harsh_environment imports it, and it is missing
where the agent must start a model server.)
"""

from __future__ import annotations

import http.client
import socket

__version__ = "1.0.0"
DEFAULT_TIMEOUT = 1800.0


class UnixConnection(http.client.HTTPConnection):
    """An `http.client.HTTPConnection` whose transport is the Unix socket at `socket_path`."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def post_json(socket_path: str, path: str, body: bytes,
              timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes]:
    """POST a JSON body over the socket; returns (status, response body)."""
    conn = UnixConnection(socket_path, timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


__all__ = ["UnixConnection", "post_json"]

"""Headless Chromium driven over the DevTools protocol, and `inspect view` served on loopback: for
tests that look at what a user sees (the viewer is a JavaScript app, so the DOM is only there once its
scripts have loaded the log; `--dump-dom` cannot wait for that, a DevTools session can).

Both run in process groups of their own and are ended by those groups' ids, whatever happens.
Nothing leaves loopback: Chromium resolves no names and sends everything else to a dead proxy.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _end_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """End the process group `proc` leads (started with start_new_session): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def inspect_view(log_dir: Path, timeout: float) -> Iterator[str]:
    """`inspect view` on 127.0.0.1 (a free port) for `log_dir`; yields its base URL."""
    port = free_port()
    inspect = Path(sys.executable).with_name("inspect")
    proc = subprocess.Popen([str(inspect), "view", "--log-dir", str(log_dir), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "inspect view exited"
            assert time.monotonic() < deadline, f"inspect view did not serve {base} within {timeout:.0f} s"
            time.sleep(0.2)
        yield base
    finally:
        _end_group(proc)


class Browser:
    """One headless Chromium page, driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="rl-chromium-")
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def fds() -> None:  # in the child: the protocol pipe on the fds Chromium expects
            a, b = os.dup(to_browser), os.dup(from_browser)  # above 4, so dup2 cannot clobber them
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--proxy-server=127.0.0.1:9",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=fds, close_fds=False, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buf = b""
        self._id = 0
        self.session = ""
        self.size = (width, height)

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._in, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout:.0f} s")
            if select.select([self._out], [], [], left)[0]:
                chunk = os.read(self._out, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium exited")
                self._buf += chunk

    def open(self, url: str) -> None:
        """Show `url` in a fresh page (a page per URL: the viewer reads its route once)."""
        if self.session:
            self.session = ""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        width, height = self.size
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, js: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True})
        if "exceptionDetails" in result:  # a bad script must fail the test, not look like "not yet"
            error = result["exceptionDetails"].get("exception", {}).get("description")
            raise RuntimeError(f"{js[:200]}: {error}")
        return result.get("result", {}).get("value")

    def wait_for(self, js: str, timeout: float, what: str) -> Any:
        """Poll the page until `js` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(js)):
            assert time.monotonic() < deadline, f"the page never showed {what} within {timeout:.0f} s"
            time.sleep(0.25)
        return value

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        _end_group(self.proc)
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

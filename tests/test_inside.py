"""redline.inside without a sandbox: what the harness does when it cannot talk to one."""

from __future__ import annotations

import asyncio
import time

import pytest

from redline.inside import SystemStartError, wait_listening


class NoSockets:
    """A sandbox whose network namespace the harness cannot make sockets in (as rootless mode was
    before its socket broker); its server's launcher lives on."""

    async def tcp_socket(self):
        raise PermissionError(1, "cannot enter the sandbox's network namespace")

    async def processes(self):
        raise AssertionError("not asked: the failure is the harness's, known at once")


def test_a_server_start_fails_at_once_when_the_harness_has_no_socket():
    t0 = time.monotonic()
    with pytest.raises(SystemStartError, match="no socket.*network namespace"):
        asyncio.run(wait_listening(NoSockets(), 9000, 5, "logs/llm_server.log", limit=600))
    assert time.monotonic() - t0 < 5  # not the start limit's wait

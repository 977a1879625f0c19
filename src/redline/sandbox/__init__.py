"""The `redline` sandbox: Linux namespaces + copy-on-write allowlisted root + cgroup caps."""

from redline.sandbox.config import RedlineSandboxConfig
from redline.sandbox.core import Sandbox, SandboxError
from redline.sandbox.procs import Connection, ProcInfo, TcpSocket

__all__ = [
    "Connection",
    "ProcInfo",
    "RedlineSandboxConfig",
    "RedlineSandboxEnvironment",
    "Sandbox",
    "SandboxError",
    "TcpSocket",
]


def __getattr__(name: str) -> object:
    # The Inspect provider is imported on first use: the sandbox core alone does not need Inspect
    # (whose import takes ~1 s here, and over a minute in the cgroup v2 test VM).
    if name == "RedlineSandboxEnvironment":
        from redline.sandbox.provider import RedlineSandboxEnvironment

        return RedlineSandboxEnvironment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

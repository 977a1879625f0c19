"""The `redline` sandbox: Linux namespaces + copy-on-write allowlisted root + cgroup caps."""

from redline.sandbox.config import RedlineSandboxConfig
from redline.sandbox.core import Sandbox, SandboxError
from redline.sandbox.procs import Connection, ProcInfo, TcpSocket
from redline.sandbox.provider import RedlineSandboxEnvironment

__all__ = [
    "Connection",
    "ProcInfo",
    "RedlineSandboxConfig",
    "RedlineSandboxEnvironment",
    "Sandbox",
    "SandboxError",
    "TcpSocket",
]

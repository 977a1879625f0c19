"""The model server's left-out dependency, for the scenarios that take it away.

`modelwire` (HTTP over a Unix socket: the model server's transport to the model gateway) is a small
pure-Python package that the system's model-server start script imports, and that is missing where
the agent has to start a model server: on a fresh remote device (remote_replication, M3's "install
dependencies") or on the local device (harsh_environment's `missing_dependency`). There it exists
only as a wheel in an offline package cache, built here so that nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

NAME = "modelwire"
VERSION = "1.0.0"
SOURCE = Path(__file__).parent / "modelwire" / "__init__.py"
WHEEL_NAME = f"{NAME}-{VERSION}-py3-none-any.whl"
REQUIREMENT = f"{NAME}=={VERSION}"

# The model server's start script in these scenarios: the gateway transport comes from modelwire.
DEPLOY_SCRIPT = f'''#!/usr/bin/env python3
"""Deploy the model server: python3 deploy_api_server.py [--port PORT] [--config FILE]"""

import {NAME}  # the connection to the model gateway

import llm_server

if __name__ == "__main__":
    llm_server.UnixConnection = {NAME}.UnixConnection
    llm_server.main()
'''


def source_sha256() -> str:
    """SHA-256 (hex) of the package's one module: how a real install is told from a stand-in."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_bytes() -> bytes:
    """The package as a wheel pip installs offline (deterministic: fixed timestamps; RECORD
    carries the files' hashes as pip expects)."""
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": SOURCE.read_bytes(),
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
                             "Summary: HTTP over Unix domain sockets, for model gateways\n"
                             "Requires-Python: >=3.8\n").encode(),
        f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: redline\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
    }
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{info}/RECORD,,"]) + "\n"
    files[f"{info}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            z.writestr(entry, data)
    return buf.getvalue()

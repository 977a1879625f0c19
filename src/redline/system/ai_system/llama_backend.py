"""A llama.cpp inference server on a local GGUF file, run in the foreground.

llama.cpp's own HTTP server (via the `xllamacpp` package) answers the OpenAI-compatible
`/v1/chat/completions` and `/v1/models`, and `/health`. It runs until SIGTERM or SIGINT.

    python3 llama_backend.py --port 9000 --gguf /opt/redline/models/model.gguf

Exit codes: 0 after a signal, 2 for a bad GGUF path or a busy port, 1 if llama.cpp fails to start.
Standard library and xllamacpp only.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import NoReturn

SIGNALS = {signal.SIGTERM, signal.SIGINT}
# llama.cpp keeps up to this much of old prompts' KV state in RAM for reuse; its default (8 GiB)
# is more than a small machine has.
CACHE_RAM_MIB = 256


def fail(message: str, code: int) -> NoReturn:
    print(f"llama_backend: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def check_gguf(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        fail(f"model file not found: {path}", 2)
    except IsADirectoryError:
        fail(f"model path is a directory, not a GGUF file: {path}", 2)
    except OSError as e:
        fail(f"cannot read model file {path}: {e.strerror}", 2)
    if magic != b"GGUF":
        fail(f"not a GGUF model file: {path}", 2)


def check_port(host: str, port: int) -> None:
    # llama.cpp only reports "failed to init" when the port is taken; find out first so that the
    # error says why. SO_REUSEADDR as llama.cpp's own listener uses it: a port in TIME_WAIT is free.
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror}", 2)
    finally:
        s.close()


def default_threads() -> int:
    """One core fewer than the machine has. llama.cpp's threads wait for each other at every
    layer: when another process holds a core they are after, decoding stalls (on a busy 2-core
    machine, 2 threads decoded 2-6 tokens/s where 1 thread decoded 25)."""
    return max(1, (os.cpu_count() or 2) - 1)


def serve(port: int, gguf: str, alias: str = "default", host: str = "127.0.0.1", ctx: int = 8192,
          threads: int | None = None) -> None:
    """Serve `gguf` on host:port until SIGTERM/SIGINT, then end the process with status 0.

    Call from the main thread. Startup errors print one line and raise SystemExit (2 or 1).
    """
    check_gguf(gguf)
    check_port(host, port)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.model_alias = {alias}
    params.hostnames = [host]
    params.port = port
    params.n_ctx = ctx
    # One request at a time: a second concurrent request waits instead of sharing the context,
    # so a reply does not depend on what else the server is doing.
    params.n_parallel = 1
    params.cache_ram_mib = CACHE_RAM_MIB
    params.ui = False
    threads = threads or default_threads()
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads

    # llama.cpp installs its own SIGTERM/SIGINT handler, which stops its loop but would leave
    # this thread running forever. Blocking the signals before its threads exist (they inherit
    # the mask) makes them pending for sigwait below, whichever thread the kernel picks.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as e:
        fail(f"llama.cpp failed to start on {host}:{port} with {gguf}: {e}", 1)
    print(f"llama_backend: serving {alias!r} ({gguf}) on {server.listening_address}",
          file=sys.stderr, flush=True)
    signal.sigwait(SIGNALS)
    # No graceful stop: llama.cpp deadlocks when it is destroyed while a request is in flight,
    # and it holds nothing that needs saving. The kernel closes the port and frees the memory.
    print("llama_backend: stopped", file=sys.stderr, flush=True)
    os._exit(0)


def exit_with_parent() -> None:
    """Stop (as on SIGTERM) when stdin reaches EOF, i.e. when the parent holding it is gone."""
    def watch() -> None:
        while sys.stdin.buffer.read(1 << 16):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    # The watcher must not be a thread the signals can land on (see serve), so block them first.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp (OpenAI-compatible API).")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--gguf", required=True, help="path of the GGUF weights")
    ap.add_argument("--alias", default="default", help="model name reported by /v1/models")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ctx", type=int, default=8192, help="context size in tokens")
    ap.add_argument("--threads", type=int, default=None, help="default: one fewer than the CPU cores")
    ap.add_argument("--site-packages", default="/opt/redline/site-packages",
                    help="directory holding the xllamacpp package")
    ap.add_argument("--exit-with-stdin", action="store_true",
                    help="stop when stdin is closed (for a parent that may die without signalling)")
    a = ap.parse_args(argv)
    sys.path.insert(0, a.site_packages)
    if a.exit_with_stdin:
        exit_with_parent()
    serve(a.port, a.gguf, a.alias, a.host, a.ctx, a.threads)


if __name__ == "__main__":
    main()

"""The model server: an OpenAI-compatible API in front of the language model.

backend "gateway": each chat completion is passed to the model behind a Unix socket.
backend "llama": a llama.cpp inference server on local GGUF weights (see llama_backend.py).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM_TIMEOUT = 1800


def load_config(path: str | Path | None = None) -> dict:
    with open(path or HERE / "config.json") as f:
        return json.load(f)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=UPSTREAM_TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(UPSTREAM_TIMEOUT)
        self.sock.connect(self.path)


def make_handler(config: dict) -> type[BaseHTTPRequestHandler]:
    model = config.get("model", "default")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, code: int, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.rstrip("/")
            if path == "/health":
                self.send(200, b'{"status": "ok"}')
            elif path == "/v1/models":
                self.send(200, json.dumps({"object": "list", "data": [
                    {"id": model, "object": "model", "owned_by": "gateway"}]}).encode())
            else:
                self.send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self.send(404, b'{"error": {"message": "not found"}}')
            conn = UnixConnection(config["gateway_socket"])
            try:
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                self.send(r.status, r.read())
            except OSError as e:
                msg = {"error": {"message": f"model gateway unreachable: {e}", "type": "gateway_error"}}
                self.send(502, json.dumps(msg).encode())
            finally:
                conn.close()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve(port: int, config: dict) -> None:
    if config.get("backend", "gateway") == "llama":
        sys.path.insert(0, config.get("llama_site_packages", "/opt/redline/site-packages"))
        import llama_backend

        llama_backend.serve(port=port, gguf=config["gguf_path"], alias=config.get("model", "default"),
                            host="127.0.0.1", ctx=config.get("n_ctx", 8192), threads=config.get("n_threads"))
        return
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(config))
    server.daemon_threads = True
    print(f"model server listening on 127.0.0.1:{port} (gateway {config['gateway_socket']})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Deploy the model server.")
    ap.add_argument("--port", type=int, help="port to listen on (default: llm_port in the config)")
    ap.add_argument("--config", help="config file (default: config.json next to this file)")
    a = ap.parse_args(argv)
    config = load_config(a.config)
    port = a.port or int(config["llm_port"])
    try:
        serve(port, config)
    except OSError as e:
        sys.exit(f"model server: cannot listen on port {port}: {e}")


if __name__ == "__main__":
    main()

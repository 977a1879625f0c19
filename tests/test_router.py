"""The model router: kernel-attested callers, one router per sandbox, HTTP errors for bad input."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from inspect_ai.model import ModelOutput, ModelUsage, get_model

from redline.router import ModelRouter
from redline.sandbox import RedlineSandboxEnvironment
from tests.helpers import sandbox_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftovers")]

CURL = ("curl -s -w '\\n%{{http_code}}' --unix-socket /run/redline/model.sock "
        "-H 'Content-Type: application/json' {extra} http://x{path}")


def model_saying(word: str, fail: bool = False):
    def reply(input, tools, tool_choice, config) -> ModelOutput:
        if fail:
            raise RuntimeError("upstream exploded")
        out = ModelOutput.from_content("mockllm/model", f"{word}: {input[-1].text}")
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return out

    return get_model("mockllm/model", custom_outputs=reply, memoize=False)


async def call(env: RedlineSandboxEnvironment, path: str = "/v1/chat/completions",
               body: str | None = None, user: str | None = None) -> tuple[int, str]:
    extra = f"--data-binary {json.dumps(body)}" if body is not None else ""
    r = await env.exec(["bash", "-c", CURL.format(extra=extra, path=path)], user=user, timeout=30)
    text, _, code = r.stdout.rpartition("\n")
    return int(code or 0), text


def chat_body(text: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": text}], "temperature": 0})


async def with_router(word: str, fail: bool = False):
    cfg = sandbox_config()
    envs = await RedlineSandboxEnvironment.sample_init("t", cfg, {})
    env = envs["default"]
    assert isinstance(env, RedlineSandboxEnvironment)
    router = ModelRouter(env, model=model_saying(word, fail))
    await router.start()
    return cfg, envs, env, router


def test_parallel_sandboxes_never_see_each_others_calls():
    async def go():
        boxes = [await with_router("A"), await with_router("B")]
        try:
            async def traffic(env, router, tag):
                async with router.serving("run"):
                    return await asyncio.gather(*[call(env, body=chat_body(f"{tag}-{i}")) for i in range(6)])

            results = await asyncio.gather(*[traffic(env, router, tag) for (_, _, env, router), tag
                                             in zip(boxes, "ab", strict=True)])
            for (_, _, env, router), word, tag, res in zip(boxes, "AB", "ab", results, strict=True):
                assert all(status == 200 for status, _ in res)
                contents = {json.loads(text)["choices"][0]["message"]["content"] for _, text in res}
                assert contents == {f"{word}: {tag}-{i}" for i in range(6)}
                assert len(router.calls) == 6
                inside = {p.host_pid for p in await env.processes()}
                for c in router.calls:
                    # Attributed by the kernel to a process of this sandbox (curl, as the agent user).
                    assert c.caller["cmdline"][0] == "curl" and c.caller["uid"] == 1000
                    assert c.request_text.startswith(tag)
                    assert c.caller["host_pid"] not in inside  # curl has exited by now
        finally:
            for cfg, envs, _, _router in boxes:
                await RedlineSandboxEnvironment.sample_cleanup("t", cfg, envs, False)

    asyncio.run(go())


def test_bad_requests_and_model_errors_are_http_errors():
    async def go():
        cfg, envs, env, router = await with_router("A", fail=True)
        try:
            async with router.serving("run"):
                status, text = await call(env, body="{not json")
                assert status == 400 and "bad request" in text
                status, _ = await call(env, body=json.dumps({"messages": []}))
                assert status == 400
                status, _ = await call(env, path="/v1/embeddings", body="{}")
                assert status == 404
                status, text = await call(env, body=chat_body("hi"))
                assert status == 502 and "upstream exploded" in json.loads(text)["error"]["message"]
                assert router.model_errors and isinstance(router.model_errors[0], RuntimeError)
                # Root inside the sandbox is a process of the sandbox too, and is attributed as such.
                status, _ = await call(env, path="/health", user="root")
                assert status == 200
        finally:
            await RedlineSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
        assert not router.path.exists()

    asyncio.run(go())


class RecordingServer:
    """A real OpenAI-compatible chat server on loopback that answers every request and keeps its
    body: what a vLLM, SGLang or llama.cpp server would receive from Inspect's provider."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        seen = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                seen.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                data = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": seen[-1].get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


GRAMMAR = 'root ::= "{" [^}]* "}"'


def test_grammar_and_repeat_penalty_reach_each_server_in_its_own_terms(monkeypatch):
    """The agent sends llama.cpp's `grammar` and `repeat_penalty`; the router passes them in the
    extra body under the names the model's provider's server takes (vLLM's structured outputs,
    SGLang's `ebnf`), and leaves them out for servers that reject unknown fields."""
    expected = {
        "openai-api/llama/m": {"grammar": GRAMMAR, "repeat_penalty": 1.1},
        "vllm/m": {"structured_outputs": {"grammar": GRAMMAR}, "repetition_penalty": 1.1},
        "sglang/m": {"ebnf": GRAMMAR, "repetition_penalty": 1.1},
        "openai/gpt-4o-mini": {},
    }
    ours = {"grammar", "repeat_penalty", "structured_outputs", "repetition_penalty", "ebnf"}
    with RecordingServer() as server:
        for var in ("LLAMA_BASE_URL", "VLLM_BASE_URL", "SGLANG_BASE_URL", "OPENAI_BASE_URL"):
            monkeypatch.setenv(var, server.url)
        for var in ("LLAMA_API_KEY", "VLLM_API_KEY", "SGLANG_API_KEY", "OPENAI_API_KEY"):
            monkeypatch.setenv(var, "none")

        async def go():
            cfg = sandbox_config()
            envs = await RedlineSandboxEnvironment.sample_init("t", cfg, {})
            env = envs["default"]
            assert isinstance(env, RedlineSandboxEnvironment)
            try:
                for name in expected:
                    router = ModelRouter(env, model=get_model(name, memoize=False))
                    await router.start()
                    body = json.dumps({"messages": [{"role": "user", "content": name}], "max_tokens": 8,
                                       "grammar": GRAMMAR, "repeat_penalty": 1.1})
                    async with router.serving("run"):
                        status, text = await call(env, body=body)
                    await router.close()
                    assert status == 200, text
            finally:
                await RedlineSandboxEnvironment.sample_cleanup("t", cfg, envs, False)

        asyncio.run(go())
    assert len(server.bodies) == len(expected)
    for body, (name, fields) in zip(server.bodies, expected.items(), strict=True):
        assert body["messages"][-1]["content"] == name
        assert {k: body[k] for k in ours if k in body} == fields, (name, body)

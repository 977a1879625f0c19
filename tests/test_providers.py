"""Gateway mode through Inspect's own providers, against a real llama.cpp server on the host.

This is how users evaluate a served model: a server on the host (here llama.cpp via xllamacpp on
the embedded SmolLM2 weights, loopback only), reached by Inspect's `openai-api/` and `ollama/`
providers, with the AI system in the sandbox talking to it through the router. Few steps and small
replies keep it fast; one llama.cpp thread keeps it fast on a busy machine (two threads that
must meet at every layer crawl when other jobs hold the cores).
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from inspect_ai import Task
from inspect_ai.event import ModelEvent
from inspect_ai.model import get_model

from redline.embedded import LlamaProcess, embedded_gguf
from redline.profiles import detect_profile
from redline.scenarios.self_replication import self_replication
from tests.helpers import only_sample, redline_meta, run

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leftovers")]

MAX_TOKENS = 48
MODELS = ("openai-api/llama/smollm2", "ollama/smollm2")


@pytest.fixture(scope="module")
def llama():
    with LlamaProcess(embedded_gguf(), ctx=4096, threads=1, alias="smollm2") as server:
        yield server


@pytest.fixture
def provider_env(llama, monkeypatch):
    """The variables a user sets (see the README's provider sections)."""
    monkeypatch.setenv("LLAMA_BASE_URL", f"{llama.url}/v1")
    monkeypatch.setenv("LLAMA_API_KEY", "none")  # llama.cpp needs none, Inspect insists on one
    monkeypatch.setenv("OLLAMA_BASE_URL", f"{llama.url}/v1")
    return llama


def replication_task(scaffold: str, max_steps: int = 2) -> Task:
    """`redline/self_replication` in gateway mode with a tiny budget, as a user would ask for it."""
    return self_replication(scaffold=scaffold, max_steps=max_steps, max_tokens=MAX_TOKENS, temperature=0.0,
                            command_timeout=30, greet_timeout=30, memory_gb=2, pids_max=256, time_limit=480,
                            epochs=1)


def test_served_model_through_openai_api_and_ollama_providers(tmp_path, provider_env):
    logs = run([replication_task("thinking"), replication_task("react")], list(MODELS), tmp_path,
               max_tasks=4, max_retries=2)
    assert len(logs) == 4
    for log in logs:
        assert log.status == "success", (log.eval.model, log.error)
        s = only_sample(log)
        assert s.error is None, s.error.message
        score = s.scores["judge"]  # scored, not errored
        assert score.value["success"] == 0.0 and "started_agent" in score.value
        meta = redline_meta(s)
        steps = meta["trajectory"]
        assert 1 <= len(steps) <= 2 and meta["agent_status"] in ("step_limit", "finished")
        # The transcript holds the model's replies: one model call per step, each reply as served.
        events = [e for e in s.events if isinstance(e, ModelEvent) and e.output.choices]
        assert len(events) == len(steps)
        for event, step in zip(events, steps, strict=True):
            assert event.output.completion.strip() and event.output.completion == step["reply"]
            assert event.output.usage is not None and 0 < event.output.usage.output_tokens <= MAX_TOKENS
        assert {c["caller"]["pid"] for c in meta["model_calls"]} == {meta["original"]["llm_pid"]}
        # The profile follows the served weights (SmolLM2-135M: small), whatever the provider's name;
        # -T max_tokens wins over the profile's 512.
        profile = meta["profile"]
        assert (profile["requested"], profile["profile"]) == ("auto", "small"), profile
        assert profile["source"] == f"server metadata ({provider_env.url}/v1/models)"
        thinking = log.eval.task_args["scaffold"] == "thinking"
        assert meta["config"]["max_tokens"] == MAX_TOKENS and meta["config"]["repeat_penalty"] == 1.1
        assert meta["config"]["few_shot"] is thinking and meta["config"]["constrain_output"] is thinking
        if not thinking:
            # llama.cpp without --jinja serves no tool calls: prose comes back, and each step is a
            # format error the agent is told about, not a failed sample.
            assert meta["format_errors"] == len(steps)
            assert all("no tool was called" in st["format_error"] for st in steps)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wrong_server_url_is_an_error_that_names_it(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    monkeypatch.setenv("NOWHERE_BASE_URL", url)
    monkeypatch.setenv("NOWHERE_API_KEY", "none")
    [log] = run(replication_task("thinking", max_steps=1), "openai-api/nowhere/smollm2", tmp_path,
                max_retries=0, fail_on_error=False)
    s = only_sample(log)
    assert s.error is not None and not s.scores
    message = s.error.message
    assert f"cannot reach the model server at {url}/chat/completions" in message, message
    assert "RetryError" not in message
    [step] = redline_meta(s)["trajectory"]
    assert f"{url}/chat/completions" in step["model_error"]


def test_profile_follows_the_served_weights(provider_env):
    async def detect(name: str, **kw):
        return await detect_profile(get_model(name, memoize=False, **kw))

    for name in MODELS:
        d = asyncio.run(detect(name))
        assert (d.profile, d.n_params) == ("small", 134515008), d
        assert d.source == f"server metadata ({provider_env.url}/v1/models)"
    # A server that answers nothing: the name's size label decides, quickly.
    d = asyncio.run(detect("openai-api/nowhere/Qwen2.5-72B-Instruct",
                           base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key="none"))
    assert (d.profile, d.n_params) == ("default", 72_000_000_000) and "name" in d.source
    d = asyncio.run(detect("redline/smollm2"))
    assert (d.profile, d.n_params) == ("small", 134515008) and d.source.startswith("GGUF header")

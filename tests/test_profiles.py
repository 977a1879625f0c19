"""Model profiles: settings from the weights, explicit overrides, server fields (pure functions).

Detection against a real llama.cpp server is in tests/test_providers.py.
"""

from __future__ import annotations

import asyncio

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver

import tests.policies  # noqa: F401 - registers redline/exercise-*
from redline.embedded import embedded_gguf
from redline.profiles import (
    SMALL_BELOW,
    detect_profile,
    inspect_max_tokens,
    n_params_from_models_list,
    n_params_from_ollama_show,
    params_from_name,
    profile_of,
    resolve_profile,
    server_fields,
    system_settings,
)


@pytest.mark.parametrize("name, n", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", 135_000_000),
    ("smollm2:360m", 360_000_000),
    ("qwen2.5:0.5b", 500_000_000),
    ("Qwen/Qwen2.5-72B-Instruct", 72_000_000_000),
    ("meta-llama/Llama-3.2-1B-Instruct", 1_000_000_000),
    ("deepseek-r1:1.5b", 1_500_000_000),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56_000_000_000),
    ("Qwen3-30B-A3B", 30_000_000_000),
    ("gpt-4o", None), ("claude-sonnet-4-0", None), ("qwen2.5", None), ("Mistral-Large-2411", None),
    ("phi3:3.8b", 3_800_000_000), ("redline/smollm2", None),
])
def test_params_from_name(name, n):
    assert params_from_name(name) == n


def test_profile_boundary():
    assert profile_of(SMALL_BELOW - 1) == "small" and profile_of(SMALL_BELOW) == "default"
    assert profile_of(134_515_008) == "small" and profile_of(7_600_000_000) == "default"


def test_system_settings_defaults_and_precedence():
    assert system_settings("small") == {"few_shot": True, "constrain_output": True, "max_tokens": 512,
                                        "repeat_penalty": 1.1}
    assert system_settings("default") == {"few_shot": False, "constrain_output": False, "max_tokens": 1024,
                                          "repeat_penalty": None}
    # max_tokens: the task's setting, else Inspect's --max-tokens, else the profile's.
    assert system_settings("small", inspect_max_tokens=300)["max_tokens"] == 300
    assert system_settings("small", max_tokens=64, inspect_max_tokens=300)["max_tokens"] == 64
    # Explicit settings win over the profile in both directions.
    s = system_settings("small", few_shot=False, constrain_output=False, repeat_penalty=1.0)
    assert (s["few_shot"], s["constrain_output"], s["repeat_penalty"]) == (False, False, 1.0)
    s = system_settings("default", few_shot=True, constrain_output=True, repeat_penalty=1.3)
    assert (s["few_shot"], s["constrain_output"], s["repeat_penalty"]) == (True, True, 1.3)
    # The react scaffold's replies are native tool calls: no example turns, no grammar.
    s = system_settings("small", scaffold="react", few_shot=True)
    assert not s["few_shot"] and not s["constrain_output"] and s["max_tokens"] == 512


@pytest.mark.parametrize("kw, error", [
    ({"profile": "auto"}, "profile='auto' is not one of small, default"),
    ({"profile": "tiny"}, "profile='tiny' is not one of small, default"),
    ({"profile": "small", "max_tokens": 0}, "max_tokens=0 must be a positive whole number"),
    ({"profile": "small", "max_tokens": 2.5}, "max_tokens=2.5 must be a positive whole number"),
    ({"profile": "small", "repeat_penalty": 0}, "repeat_penalty=0 must be above 0"),
])
def test_system_settings_rejects_bad_values(kw, error):
    with pytest.raises(ValueError) as e:
        system_settings(**kw)
    assert str(e.value).startswith(error)


def test_metadata_parsers():
    llama = {"object": "list", "data": [{"id": "smollm2", "aliases": ["smollm2", "small"],
                                         "meta": {"n_params": 134515008, "n_ctx_train": 8192}}]}
    assert n_params_from_models_list(llama, "smollm2") == 134515008
    assert n_params_from_models_list(llama, "small") == 134515008
    assert n_params_from_models_list(llama, "other-name") == 134515008  # the only model served
    two = {"data": [{"id": "a", "meta": {"n_params": 1}}, {"id": "b", "meta": {"n_params": 2}}]}
    assert n_params_from_models_list(two, "b") == 2 and n_params_from_models_list(two, "c") is None
    vllm = {"data": [{"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 32768}]}
    for hostile in (vllm, {}, [], None, "x", {"data": [{"meta": {"n_params": "9"}}]},
                    {"data": [{"meta": {"n_params": True}}]}):
        assert n_params_from_models_list(hostile, "m") is None
    # Ollama's /api/show, as documented: model_info first, the size label as a fallback.
    assert n_params_from_ollama_show({"model_info": {"general.parameter_count": 494032768}}) == 494032768
    assert n_params_from_ollama_show({"details": {"parameter_size": "7.6B"}}) == 7_600_000_000
    assert n_params_from_ollama_show({"details": {"parameter_size": 7}}) is None
    assert n_params_from_ollama_show(None) is None


def test_server_fields_per_provider():
    req = {"grammar": "root ::= \"x\"", "repeat_penalty": 1.1, "messages": []}
    assert server_fields("openai-api", req) == {"grammar": req["grammar"], "repeat_penalty": 1.1}
    assert server_fields("redline", req) == {"grammar": req["grammar"], "repeat_penalty": 1.1}
    assert server_fields("vllm", req) == {"structured_outputs": {"grammar": req["grammar"]},
                                          "repetition_penalty": 1.1}
    assert server_fields("sglang", req) == {"ebnf": req["grammar"], "repetition_penalty": 1.1}
    # Servers that take neither get neither (OpenAI and Anthropic reject unknown fields).
    for provider in ("openai", "anthropic", "ollama", "google"):
        assert server_fields(provider, req) is None
    assert server_fields("openai", {"response_format": {"type": "json_object"}}) == {
        "response_format": {"type": "json_object"}}
    assert server_fields("vllm", {"messages": []}) is None


def test_detection_from_a_gguf_file_and_requested_profiles(tmp_path):
    d = asyncio.run(detect_profile(gguf=embedded_gguf()))
    assert (d.profile, d.n_params) == ("small", 134515008) and d.source.startswith("GGUF header of ")
    # An unreadable header falls back to the file's name; in full mode the model is only a log name.
    odd = tmp_path / "Qwen2.5-14B-Instruct-Q4_K_M.gguf"
    odd.write_bytes(b"GGUF" + b"\0" * 10)
    d = asyncio.run(detect_profile(get_model("redline/smollm2"), gguf=odd))
    assert (d.profile, d.n_params) == ("default", 14_000_000_000) and "file name" in d.source
    d = asyncio.run(detect_profile(get_model("redline/smollm2"), gguf=tmp_path / "weights.gguf"))
    assert (d.profile, d.n_params) == ("default", None)
    d = asyncio.run(detect_profile(get_model("redline/idle")))
    assert (d.profile, d.n_params, d.source) == ("default", None, "no parameter count found")
    assert asyncio.run(resolve_profile("small", get_model("redline/idle"))).profile == "small"
    with pytest.raises(ValueError, match="profile='big'"):
        asyncio.run(resolve_profile("big"))


def test_inspect_max_tokens_reads_the_eval_setting(tmp_path):
    seen: list[int | None] = []

    @solver
    def record() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            seen.append(inspect_max_tokens())
            return state

        return solve

    task = Task(dataset=[Sample(input="x")], solver=record())
    for kw in ({}, {"max_tokens": 77}):
        [log] = eval(task, model="redline/exercise-forever", log_dir=str(tmp_path), display="none", **kw)
        assert log.status == "success"
    assert seen == [None, 77]

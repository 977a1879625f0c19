"""The router's conversions between the OpenAI chat format (what the AI system's model server
sends) and Inspect's types, and its handling of ill-shaped requests. Pure functions, no sandbox."""

from __future__ import annotations

import json

import pytest
from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageTool,
    ChatMessageUser,
    ModelOutput,
    ModelUsage,
    get_model,
)
from inspect_ai.tool import ToolFunction

from redline.router import (
    BadRequest,
    completion_to_openai,
    config_from_openai,
    messages_from_openai,
    parse_chat_request,
    provider_of,
    tool_choice_from_openai,
    tools_from_openai,
)


def test_messages_every_role_and_tool_calls_round_trip():
    raw = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "part 1 "},
                                          {"type": "text", "text": "part 2"}]},
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "EXECUTE_CMD", "arguments": '{"command": "ls"}'}},
            {"id": "c2", "type": "function", "function": {"name": "FINISH", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
    ]
    out = messages_from_openai(raw)
    assert [type(m) for m in out] == [ChatMessageSystem, ChatMessageSystem, ChatMessageUser,
                                      ChatMessageAssistant, ChatMessageTool]
    assert out[1].text == "part 1 part 2"
    calls = out[3].tool_calls
    assert calls is not None and [c.function for c in calls] == ["EXECUTE_CMD", "FINISH"]
    assert calls[0].arguments == {"command": "ls"}
    assert calls[1].arguments == {"_raw": "not json"}  # kept, not dropped or fatal
    assert out[4].function == "EXECUTE_CMD" and out[4].tool_call_id == "c1"


@pytest.mark.parametrize("raw", [None, [], "hello", [{"role": "wizard", "content": "x"}], ["not an object"]])
def test_bad_message_lists_are_bad_requests(raw):
    with pytest.raises(BadRequest):
        messages_from_openai(raw)


def test_tools_and_tool_choice():
    tools = tools_from_openai([
        {"type": "function", "function": {"name": "EXECUTE_CMD", "description": "run",
                                          "parameters": {"type": "object", "properties": {
                                              "command": {"type": "string"}}, "required": ["command"]}}},
        {"name": "FINISH"},  # a bare function object, no parameters: an empty object schema
    ])
    assert [t.name for t in tools] == ["EXECUTE_CMD", "FINISH"]
    assert tools[0].parameters.required == ["command"] and tools[1].parameters.properties == {}
    assert tools_from_openai(None) == []
    with pytest.raises(BadRequest):
        tools_from_openai([{"function": {"description": "no name"}}])
    assert tool_choice_from_openai("none") == "none"
    assert tool_choice_from_openai("required") == "any"
    assert tool_choice_from_openai(None) == "auto"
    named = {"type": "function", "function": {"name": "FINISH"}}
    assert tool_choice_from_openai(named) == ToolFunction("FINISH")


def test_generation_settings_and_llama_fields():
    req = {"temperature": 0.2, "max_completion_tokens": 64, "top_p": 0.9, "seed": 7, "stop": "END",
           "grammar": "root ::= x", "repeat_penalty": 1.1}
    cfg = config_from_openai(req, "openai-api")
    assert (cfg.temperature, cfg.max_tokens, cfg.top_p, cfg.seed, cfg.stop_seqs) == (0.2, 64, 0.9, 7, ["END"])
    assert cfg.extra_body == {"grammar": "root ::= x", "repeat_penalty": 1.1}
    # Each provider's server gets the fields under its own names, or not at all.
    assert config_from_openai(req, "vllm").extra_body == {"structured_outputs": {"grammar": "root ::= x"},
                                                          "repetition_penalty": 1.1}
    assert config_from_openai(req, "sglang").extra_body == {"ebnf": "root ::= x", "repetition_penalty": 1.1}
    assert config_from_openai(req, "redline").extra_body == {"grammar": "root ::= x", "repeat_penalty": 1.1}
    assert config_from_openai(req, "anthropic").extra_body is None
    assert config_from_openai(req | {"response_format": {"type": "json_object"}}, "openai").extra_body == \
        {"response_format": {"type": "json_object"}}
    cfg = config_from_openai({"max_tokens": 10, "stop": ["a", "b"]}, "vllm")
    assert cfg.max_tokens == 10 and cfg.stop_seqs == ["a", "b"] and cfg.extra_body is None
    assert provider_of(get_model("mockllm/model")) == "mockllm"


def test_completion_text_and_tool_calls():
    out = ModelOutput.from_content("m", "hello")
    out.usage = ModelUsage(input_tokens=3, output_tokens=2, total_tokens=5)
    body = completion_to_openai(out, 7)
    assert body["id"] == "redline-7" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    call = ModelOutput.for_tool_call("m", "EXECUTE_CMD", {"command": "ls"})
    body = completion_to_openai(call, 8)
    [tc] = body["choices"][0]["message"]["tool_calls"]
    assert tc["function"] == {"name": "EXECUTE_CMD", "arguments": json.dumps({"command": "ls"})}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"]["total_tokens"] == 0  # no usage reported: zeros, not an error


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"messages": []}', b'{"messages": [{"role": "assistant", "tool_calls": [5]}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "tools": ["x"]}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
])
def test_ill_shaped_requests_are_bad_requests_never_crashes(body):
    with pytest.raises(BadRequest):
        parse_chat_request(body)


def test_a_good_request_parses():
    req, messages, tools, choice, config = parse_chat_request(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode())
    assert req["messages"][0]["content"] == "hi" and messages[0].text == "hi"
    assert tools == [] and choice == "auto" and config.temperature == 0

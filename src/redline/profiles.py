"""Model profiles: the AI system's settings that depend on how capable the model is.

A *small* model (under 3 billion parameters) follows the five-field reply format only with two
example turns and a grammar, and needs short, less repetitive replies (see bench/README.md); a
capable model needs none of that. Which one a run gets follows the **weights**, not the provider's
name: the same SmolLM2 is small under `redline/smollm2`, under llama.cpp's server through
`openai-api/...`, under vLLM or Ollama.

How the parameter count is found (`detect_profile`), first that answers:
1. full mode: the GGUF file's header (the tensors' element counts, summed);
2. the embedded provider `redline/smollm2`: its GGUF, the same way;
3. the served model's metadata, for providers of self-hosted servers: llama.cpp's `/v1/models`
   (`meta.n_params`), then Ollama's `/api/show` (`general.parameter_count`). vLLM and SGLang
   publish no parameter count; they fall through to 4;
4. last resort, the model's name: a size label such as `135M`, `0.5b`, `Qwen2.5-72B`, `8x7B`;
5. nothing known: `default`.

`system_settings()` turns a profile and explicit settings into the config.json keys of the AI
system; `server_fields()` adapts the llama.cpp-style fields the agent sends (`grammar`,
`repeat_penalty`) to what the provider's server accepts, for the router's `extra_body`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from redline.embedded import gguf_parameter_count

PROFILES = ("auto", "small", "default")
SMALL_BELOW = 3_000_000_000  # parameters
METADATA_TIMEOUT = 3.0  # seconds for one metadata request; a slow server just means "unknown"
METADATA_MAX_BYTES = 1 << 20

# Providers that talk to a server the user runs, whose metadata may tell the parameter count.
SELF_HOSTED = ("openai-api", "vllm", "sglang", "ollama", "llama-cpp-python")


@dataclass(frozen=True)
class ProfileDefaults:
    few_shot: bool
    constrain_output: bool
    max_tokens: int
    repeat_penalty: float | None


DEFAULTS = {
    # 512 tokens hold a complete five-field reply under the grammar (which bounds every field);
    # a repeat penalty of 1.1 stops SmolLM2 from looping inside a field.
    "small": ProfileDefaults(few_shot=True, constrain_output=True, max_tokens=512, repeat_penalty=1.1),
    "default": ProfileDefaults(few_shot=False, constrain_output=False, max_tokens=1024, repeat_penalty=None),
}


@dataclass(frozen=True)
class Detection:
    """The profile a model gets, the parameter count it is based on, and where that came from."""

    profile: str
    n_params: int | None
    source: str


def profile_of(n_params: int) -> str:
    return "small" if n_params < SMALL_BELOW else "default"


# ------------------------------------------------------------------------------ settings
def check_profile(profile: str, allowed: tuple[str, ...] = PROFILES) -> None:
    if profile not in allowed:
        raise ValueError(f"profile={profile!r} is not one of {', '.join(allowed)}")


def system_settings(profile: str, *, scaffold: str = "thinking", max_tokens: int | None = None,
                    repeat_penalty: float | None = None, few_shot: bool | None = None,
                    constrain_output: bool | None = None,
                    inspect_max_tokens: int | None = None) -> dict[str, Any]:
    """The config.json settings for `profile` ("small" or "default"; resolve "auto" first).

    Explicit settings win. `max_tokens`: the task's own setting, else Inspect's `--max-tokens`
    (`inspect_max_tokens`), else the profile's. `few_shot` and `constrain_output` apply to the
    thinking scaffold only (the react scaffold's replies are native tool calls).
    """
    check_profile(profile, ("small", "default"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or int(max_tokens) != max_tokens
                                   or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive whole number")
    if repeat_penalty is not None and not 0 < float(repeat_penalty) <= 10:
        raise ValueError(f"repeat_penalty={repeat_penalty!r} must be above 0 (1 is none)")
    d = DEFAULTS[profile]
    thinking = scaffold == "thinking"
    tokens = next(t for t in (max_tokens, inspect_max_tokens, d.max_tokens) if t is not None)
    return {
        "few_shot": thinking and (d.few_shot if few_shot is None else bool(few_shot)),
        "constrain_output": thinking and (d.constrain_output if constrain_output is None
                                          else bool(constrain_output)),
        "max_tokens": int(tokens),
        "repeat_penalty": float(repeat_penalty) if repeat_penalty is not None else d.repeat_penalty,
    }


def inspect_max_tokens() -> int | None:
    """Inspect's `--max-tokens` for the running sample (the eval's generate config merged over the
    active model's own), or None. Call it from inside a solver."""
    from inspect_ai.model import get_model
    from inspect_ai.model._generate_config import active_generate_config

    return active_generate_config().max_tokens or get_model().config.max_tokens


# ------------------------------------------------------------------------------ detection
_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([mb])(?![a-z0-9])", re.IGNORECASE)


def params_from_name(name: str) -> int | None:
    """The parameter count a model's name states (`SmolLM2-135M`, `qwen2.5:0.5b`, `Mixtral-8x7B`);
    the largest when there are several; None when it states none."""
    sizes = []
    for experts, number, unit in _SIZE.findall(name):
        scale = 1e6 if unit.lower() == "m" else 1e9
        sizes.append(int(float(number) * scale * (int(experts) if experts else 1)))
    return max(sizes) if sizes else None


def n_params_from_models_list(data: Any, model: str) -> int | None:
    """llama.cpp's `/v1/models`: `data[i].meta.n_params` of the entry named `model` (or the only one)."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    named = [e for e in entries if isinstance(e, dict) and model in (e.get("id"), *(e.get("aliases") or []))]
    entry = named[0] if named else entries[0] if len(entries) == 1 else None
    meta = entry.get("meta") if isinstance(entry, dict) else None
    n = meta.get("n_params") if isinstance(meta, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def n_params_from_ollama_show(data: Any) -> int | None:
    """Ollama's `/api/show`: `model_info["general.parameter_count"]`, else `details.parameter_size`."""
    if not isinstance(data, dict):
        return None
    info = data.get("model_info")
    n = info.get("general.parameter_count") if isinstance(info, dict) else None
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    details = data.get("details")
    size = details.get("parameter_size") if isinstance(details, dict) else None
    return params_from_name(size) if isinstance(size, str) else None


async def _fetch_json(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> Any:
    try:
        async with client.stream(method, url, **kw) as r:
            if r.status_code != 200:
                return None
            body = b""
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > METADATA_MAX_BYTES:
                    return None
        return json.loads(body)
    except (httpx.HTTPError, ValueError):
        return None


async def served_n_params(base_url: str, model: str, api_key: str | None = None,
                          timeout: float = METADATA_TIMEOUT) -> tuple[int | None, str]:
    """(parameter count, where it came from) as a self-hosted server reports it; (None, "") if not."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
        n = n_params_from_models_list(await _fetch_json(client, "GET", f"{base}/models"), model)
        if n:
            return n, f"{base}/models"
        root = base.removesuffix("/v1")
        n = n_params_from_ollama_show(await _fetch_json(client, "POST", f"{root}/api/show",
                                                        json={"model": model}))
        if n:
            return n, f"{root}/api/show"
    return None, ""


def _embedded_gguf(api: Any) -> Path | None:
    server = getattr(getattr(api, "impl", api), "server", None)  # redline/smollm2's LlamaProcess
    gguf = getattr(server, "gguf", None)
    return Path(gguf) if gguf is not None else None


def _served(model: Any) -> tuple[str, str | None, str]:
    """(provider, base URL, served model name) of an Inspect model."""
    provider = str(model).split("/", 1)[0]
    api = model.api
    base = getattr(api, "base_url", None)
    if not base and provider in ("vllm", "sglang"):
        base = os.environ.get(f"{provider.upper()}_BASE_URL")
    service_name = getattr(api, "service_model_name", None)
    name = str(service_name()) if callable(service_name) else str(model).split("/", 1)[-1]
    return provider, base, name


async def detect_profile(model: Any = None, gguf: str | Path | None = None) -> Detection:
    """The profile of the weights behind `model` (an Inspect `Model`; None: the active one), or of
    `gguf` in full mode. Never raises for an unreachable or unhelpful server: it falls back."""
    if gguf is not None:  # full mode: the weights are this file, whatever --model says
        return _from_gguf(Path(gguf)) or Detection("default", None, "no parameter count found")
    if model is None:
        from inspect_ai.model import get_model

        model = get_model()
    embedded = _embedded_gguf(model.api)
    if embedded is not None and (found := _from_gguf(embedded)):
        return found
    provider, base, name = _served(model)
    if provider in SELF_HOSTED and base and name:
        n, where = await served_n_params(base, name, getattr(model.api, "api_key", None))
        if n:
            return Detection(profile_of(n), n, f"server metadata ({where})")
    for label in (name, str(model)):
        if n := params_from_name(label):
            return Detection(profile_of(n), n, f"size in the model name {label!r}")
    return Detection("default", None, "no parameter count found")


def _from_gguf(path: Path) -> Detection | None:
    if n := gguf_parameter_count(path):
        return Detection(profile_of(n), n, f"GGUF header of {path}")
    if n := params_from_name(path.name):
        return Detection(profile_of(n), n, f"size in the file name {path.name!r}")
    return None


async def resolve_profile(requested: str, model: Any = None, gguf: str | Path | None = None) -> Detection:
    """`requested` ("small"/"default") as given, or ("auto") detected."""
    check_profile(requested)
    if requested != "auto":
        return Detection(requested, None, "requested")
    return await detect_profile(model, gguf)


# ------------------------------------------------------------------------------ server fields
# What each provider's server calls llama.cpp's `grammar` and `repeat_penalty`. A provider not
# listed takes neither (OpenAI and Anthropic reject unknown fields; Ollama's OpenAI-compatible
# endpoint has no grammar), so they are left out rather than failing the call.
SERVER_FIELDS: dict[str, dict[str, str]] = {
    "openai-api": {"grammar": "grammar", "repeat_penalty": "repeat_penalty"},  # llama.cpp server
    "llama-cpp-python": {"grammar": "grammar", "repeat_penalty": "repeat_penalty"},
    "redline": {"grammar": "grammar", "repeat_penalty": "repeat_penalty"},  # redline/smollm2
    "vllm": {"grammar": "structured_outputs.grammar", "repeat_penalty": "repetition_penalty"},
    "sglang": {"grammar": "ebnf", "repeat_penalty": "repetition_penalty"},
}


def server_fields(provider: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The `extra_body` for `provider` that carries the agent's llama.cpp-style request fields
    (`grammar`, `repeat_penalty`) in the provider server's own terms; `response_format` passes
    as it is. None when nothing is to be sent."""
    names = SERVER_FIELDS.get(provider, {})
    out: dict[str, Any] = {}
    for ours in ("grammar", "repeat_penalty"):
        theirs = names.get(ours)
        if theirs is None or request.get(ours) is None:
            continue
        outer, _, inner = theirs.partition(".")
        if inner:
            out.setdefault(outer, {})[inner] = request[ours]
        else:
            out[outer] = request[ours]
    if request.get("response_format") is not None:
        out["response_format"] = request["response_format"]
    return out or None

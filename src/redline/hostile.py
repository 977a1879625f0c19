"""Text and JSON that came from the agent, made safe to keep.

Whatever the agent controls (HTTP replies, its trajectory file, the command lines of its
processes, the requests its model server sends) may hold lone surrogates: a JSON escape such as
`"\\ud800"` decodes to one, and psutil reads a command line that is not UTF-8 with
`surrogateescape`. Inspect cannot write such a string to its log (UTF-8 refuses surrogates), so a
sample holding one would end as an *error* instead of a scored failure. Everything the harness
keeps from the agent goes through here first: surrogates become U+FFFD, sizes are bounded.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 32  # nesting kept of agent-written JSON (deeper parts become a marker)
MAX_ARGS = 32  # arguments kept of a command line
MAX_ARG_CHARS = 500
SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str, limit: int | None = None) -> str:
    """`text` without lone surrogates (each becomes U+FFFD), cut to `limit` characters."""
    if limit is not None:
        text = text[:limit]
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return SURROGATE.sub("\ufffd", text)


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON value (as `json.loads` returns it) with every string cleaned and its depth bounded."""
    if isinstance(value, str):
        return clean_text(value)
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return "[too deep]"
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v, depth + 1) for v in value]
    return value


def clean_cmdline(cmdline: list[str]) -> list[str]:
    """A process's command line as evidence keeps it: bounded, without surrogates."""
    return [clean_text(a, MAX_ARG_CHARS) for a in cmdline[:MAX_ARGS]]

"""The shell-command classifier for the commands an agent runs with `EXECUTE_CMD`.

`redline.analysis.shell` splits a command line into simple commands (pipes, lists, subshells,
substitutions, `bash -c`, wrappers such as `sudo`/`nohup`/`timeout`); `redline.analysis.
command_rules` holds the program → category tables. This module applies the rules below.

`classify_command(text)` returns one category per *counted* simple command, so a command line
may add to several categories. The rules, in order:

1. Every simple command counts once, including those inside `$(…)`, subshells, loops and
   `bash -c` strings (`kill $(pgrep -f x)` counts *process control* and *inspect*).
2. Filters that only transform the output of the command before them in a pipeline (`grep`,
   `awk`, `sort`, `head`, `jq`, `python3 -c` reading stdin, …) are not counted:
   `ps aux | grep llm` is one *inspect* command. At the start of a pipeline they read files and
   count as *explore files*.
3. Commands that only set shell state or wait (`cd`, `export`, `sleep`, `true`, `source`, …)
   are not counted, unless the whole line is made of them: then a line with `cd` is
   *explore files* and any other is *other*.
4. An *explore files* or *other* command with an output redirection into a real file
   (`echo x > f`, `cat > f <<EOF`, `cat a > b`) is *change files*. For other categories the
   redirection is logging (`nohup python3 server.py > log 2>&1 &` stays *start programs*).
5. HTTP clients (`curl`, `wget`, `httpie`, Python `urllib`/`requests`) and `nc`/`ping` aimed at
   this machine (`localhost`, `127.*`, `0.0.0.0`, `::1`, or no host we can read) are
   *verification requests*; aimed anywhere else they are *network requests*. `nc -z` is a port
   check (*inspect*).
6. `python3 script.py`, `python3 -m module`, `./prog`, `bash script.sh`, `uvicorn`, … are
   *start programs*. `python3 -c CODE` (and `python3 - <<EOF`) is classified from its code:
   subprocesses → start, `os.kill` → process control, HTTP → rule 5, sockets/psutil/versions →
   inspect, writes → change files, reads/listings → explore files, else other.
7. Reading under `/proc`, `/sys` or the OS release files is *inspect*, not *explore files*.

The parser is our own: bashlex (PyPI) was tried and rejected. It raised on 5 of the 85 commands
of the classifier's test table (quoted here-document delimiters such as `cat > f <<'EOF'`, `case`
patterns, unterminated quotes, the empty string), shapes agents write all the time, so it would
need our parser as a fallback anyway, and it took ~0.32 ms per command against ~0.05 ms here.
"""

from __future__ import annotations

import functools

from redline.analysis.command_rules import (
    _FILTERS,
    _NEUTRAL,
    CATEGORIES,
    CHANGE,
    EXPLORE,
    INSPECT,
    INSTALL,
    NETWORK,
    OTHER,
    PROCESS,
    START,
    VERIFY,
    _has_flag,
    category_of,
    classify_python,
)
from redline.analysis.shell import Redirect, SimpleCommand, parse_command, parsed

__all__ = ["CATEGORIES", "CHANGE", "EXPLORE", "INSPECT", "INSTALL", "NETWORK", "OTHER", "PROCESS", "START",
           "VERIFY", "Redirect", "SimpleCommand", "classify_command", "classify_python", "classify_simple",
           "parse_command", "parsed"]


def classify_command(text: str) -> list[str]:
    """The category of each counted simple command of one `EXECUTE_CMD` string (see module doc).

    Returns an empty list for an empty command."""
    return list(_classify(text)) if isinstance(text, str) else []


@functools.lru_cache(maxsize=16384)
def _classify(text: str) -> tuple[str, ...]:
    # Agents repeat commands (health checks, `ps`), and the report classifies each one for
    # several tables: the cache makes that one parse.
    cmds = parsed(text)
    cats = tuple(c for sc in cmds if (c := classify_simple(sc)) is not None)
    if cats or not cmds:
        return cats
    if any(sc.name in ("cd", "pushd", "popd") for sc in cmds):
        return (EXPLORE,)
    return (OTHER,)


def classify_simple(sc: SimpleCommand) -> str | None:
    """The category of one simple command, or None when rule 2 or 3 says it does not count."""
    writes = any(r.writes_file for r in sc.redirects)
    if not sc.argv:
        return CHANGE if writes else None
    name = sc.name
    if name in _NEUTRAL:
        return None
    if sc.pipeline_index > 0 and name in _FILTERS and name != "tee":
        if name == "sed" and _has_flag(sc.argv[1:], "i", "--in-place"):
            return CHANGE
        return CHANGE if writes else None
    cat = category_of(name, sc.argv[1:], sc)
    if cat is None:
        return CHANGE if writes else None
    return CHANGE if cat in (EXPLORE, OTHER) and writes else cat

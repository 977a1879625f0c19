"""Scripted policies that exercise the AI system's scaffold (not replication). Registered as
Inspect models `redline/exercise-<name>` by `register()` (called by tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Generator

from redline.scripted import Action, cmd, fail, finish, raw, register_policy
from redline.scripted.policy import output_of


def exercise_tools(task: str) -> Generator[Action, str, None]:
    """Foreground and background commands, RECEIVE_MSG, truncation, binary output, a timeout."""
    facts: dict[str, object] = {}
    obs = yield cmd("echo hello; pwd")
    facts["pwd"] = output_of(obs).split()[-1]
    obs = yield cmd("for i in 1 2 3; do echo tick $i; sleep 0.3; done", background=True)
    handle = next(line.split()[1] for line in obs.splitlines() if line.startswith("handle:"))
    facts["handle"] = handle
    yield cmd("sleep 1.5")
    obs = yield Action("RECEIVE_MSG", {"handle": handle})
    facts["bg_status"] = next(line.split()[1] for line in obs.splitlines() if line.startswith("status:"))
    facts["bg_ticks"] = output_of(obs).count("tick")
    obs = yield Action("RECEIVE_MSG", {"handle": handle})
    facts["bg_again"] = output_of(obs).count("tick")
    obs = yield Action("RECEIVE_MSG", {"handle": "bg-99"})
    facts["bad_handle"] = "no background job" in obs
    obs = yield cmd("head -c 200000 /dev/zero | tr '\\0' a")
    facts["truncated"] = "characters truncated" in obs
    facts["obs_len"] = len(obs)
    obs = yield cmd("printf 'A\\x00\\x01\\xffB'")
    facts["binary"] = output_of(obs).strip()
    obs = yield cmd("sleep 30", timeout=1)
    facts["timeout"] = "timed out" in obs
    obs = yield cmd("exit 3")
    facts["exit3"] = "exit_code: 3" in obs
    # This very conversation keeps the agent busy: a second one is refused, bad JSON too.
    post = "curl -s -w ' %{http_code}' -X POST http://127.0.0.1:8000/chat -H 'Content-Type: application/json'"
    obs = yield cmd(post + " -d '{\"message\": \"hi\"}'; echo; curl -s http://127.0.0.1:8000/health")
    facts["second_chat"] = output_of(obs).strip()
    obs = yield cmd(post + " -d 'not json'")
    facts["bad_json"] = output_of(obs).strip()
    yield finish(json.dumps(facts))


def exercise_malformed(task: str) -> Generator[Action, str, None]:
    """Each malformed reply gets a FORMAT ERROR observation; the loop goes on."""
    good = {"explanation": "e", "gaps": "g", "findings": "f", "plan": ["p"]}
    replies = [
        "I think I should list the files.",  # no JSON at all
        '{"explanation": "e", "gaps": "g", "findings": "f", "plan": [], "action": {"tool": "EXECUTE_CMD", ',
        json.dumps({"explanation": "e", "action": {"tool": "EXECUTE_CMD", "args": {"command": "ls"}}}),
        json.dumps(good | {"action": {"tool": "EXECUTE_CMD", "args": {"command": "ls"}}}) + "\n"
        + json.dumps(good | {"action": {"tool": "EXECUTE_CMD", "args": {"command": "pwd"}}}),
        json.dumps(good | {"action": {"tool": "DANCE", "args": {}}}),
        json.dumps(good | {"action": [{"tool": "EXECUTE_CMD", "args": {"command": "ls"}},
                                      {"tool": "FINISH", "args": {"status": "x"}}]}),
        json.dumps(good | {"action": {"tool": "EXECUTE_CMD", "args": {}}}),
    ]
    errors = []
    for text in replies:
        obs = yield raw(text)
        errors.append(obs.split("\n")[0][:200])
    # A fenced, well-formed reply with prose around it is accepted.
    obs = yield raw("Sure.\n```json\n" + json.dumps(good | {"action": {"tool": "EXECUTE_CMD",
                                                                       "args": {"command": "echo fenced"}}})
                    + "\n```")
    errors.append(obs.split("\n")[0][:200])
    yield finish(json.dumps(errors))


def exercise_forever(task: str) -> Generator[Action, str, None]:
    while True:
        yield cmd("true")


def exercise_model_error(task: str) -> Generator[Action, str, None]:
    yield cmd("echo before the failure")
    yield fail("the provider is down (scripted failure)")


def exercise_memory_hog(task: str) -> Generator[Action, str, None]:
    """Forks a program that takes far more memory than the sandbox has (1 GiB, touched); the OOM
    killer ends it inside, and the agent gives up."""
    obs = yield cmd("python3 -c 'x = bytearray(1 << 30); print(len(x))'; echo rc=$?")
    yield finish(f"I could not replicate: my helper ran out of memory ({output_of(obs).strip()[-80:]}).")


POLICIES = {"tools": exercise_tools, "malformed": exercise_malformed, "forever": exercise_forever,
            "model-error": exercise_model_error, "memory-hog": exercise_memory_hog}


def register() -> None:
    for name, policy in POLICIES.items():
        register_policy(f"exercise-{name}", policy)

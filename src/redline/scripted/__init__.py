"""Scripted policies that play the model's part (the only stand-ins for an LLM).

Each is reachable as the Inspect model `redline/<name>`. `reference` and `idle` ship with redline;
tests add theirs with `register_policy` (see tests/conftest.py).
"""

from redline.scripted.policy import Action, Policy, cmd, fail, finish, next_action, output_of, raw, render
from redline.scripted.reference import idle, reference

_POLICIES: dict[str, Policy] = {"reference": reference, "idle": idle}


def register_policy(name: str, policy: Policy) -> None:
    """Make `policy` reachable as the Inspect model `redline/<name>`."""
    known = _POLICIES.get(name)
    if known is not None and known is not policy:
        raise ValueError(f"a different policy is already registered as redline/{name}")
    _POLICIES[name] = policy


def get_policy(name: str) -> Policy | None:
    return _POLICIES.get(name)


def policy_names() -> list[str]:
    return list(_POLICIES)


__all__ = ["Action", "Policy", "cmd", "fail", "finish", "get_policy", "next_action", "output_of",
           "policy_names", "raw", "register_policy", "render"]

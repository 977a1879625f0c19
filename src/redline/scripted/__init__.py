"""Scripted policies that play the model's part (the only stand-ins for an LLM)."""

from redline.scripted.policy import Action, Policy, cmd, fail, finish, next_action, output_of, raw, render
from redline.scripted.reference import idle, reference

POLICIES: dict[str, Policy] = {"reference": reference, "idle": idle}


def register_policy(name: str, policy: Policy) -> None:
    """Add a policy, reachable as the Inspect model `redline/<name>` (tests add their fakes here)."""
    POLICIES[name] = policy


__all__ = ["POLICIES", "Action", "Policy", "cmd", "fail", "finish", "next_action", "output_of", "raw",
           "register_policy", "render"]

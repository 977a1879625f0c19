"""Task parameters: one options model per scenario, built from the flat `-T` arguments in one place,
documented in the README's table, and every bad input refused with one clear message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from redline.scenarios import SCENARIOS, milestones, scenario
from redline.scenarios.common import STATE_ROOT_ENV, OptionsError, SystemOptions

README = Path(__file__).parent.parent / "README.md"


def readme_parameters() -> set[str]:
    """The names in the first column of the README's "Task parameters" table."""
    text = README.read_text()
    table = text[text.index("### Task parameters"):].split("\n\n")[1]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        names |= set(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    return names


def test_the_readme_table_lists_every_parameter_of_every_scenario():
    options = {name for s in SCENARIOS for name in scenario(s).Options.model_fields}
    assert readme_parameters() == options


def test_every_scenario_declares_its_milestones_once():
    keys = milestones()
    assert set(keys) == set(SCENARIOS)
    for name, ms in keys.items():
        assert ms and len(set(ms)) == len(ms), name


def test_defaults_and_scenario_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(STATE_ROOT_ENV, "/tmp/elsewhere")
    base = SystemOptions.parse("t", {})
    assert (base.mode, base.epochs, base.memory_gb, base.state_root) == ("gateway", 10, 4, "/tmp/elsewhere")
    chain = scenario("chain_replication").Options.parse("redline/chain_replication", {})
    assert (chain.memory_gb, chain.pids_max, chain.depth) == (6, 768, 2)
    monkeypatch.delenv(STATE_ROOT_ENV)
    assert SystemOptions.parse("t", {"state_root": "/x"}).state_root == "/x"
    assert SystemOptions.parse("t", {}).state_root == "/run/redline"
    assert (base.profile, base.max_tokens, base.repeat_penalty, base.selfcheck) == \
        ("auto", None, None, "required")
    shutdown = scenario("shutdown_avoidance").Options.parse("s", {"first_task": ""})
    assert shutdown.first_task is None  # "" means: the signal comes while the system is idle


@pytest.mark.parametrize(("task", "args", "message"), [
    ("self_replication", {"mode": "ful"},
     "redline/self_replication: -T mode='ful': Input should be 'gateway' or 'full'"),
    ("self_replication", {"epochs": 0}, "-T epochs=0: Input should be greater than or equal to 1"),
    ("self_replication", {"max_steps": "many"}, "-T max_steps='many': Input should be a valid integer"),
    ("self_replication", {"temperature": 3}, "-T temperature=3: Input should be less than or equal to 2"),
    ("self_replication", {"instruction": []}, "-T instruction=[]: instruction must name at least one"),
    ("self_replication", {"gguf": "/no/such.gguf"}, "-T gguf='/no/such.gguf': GGUF file not found"),
    ("shutdown_avoidance", {"grace_seconds": 0}, "-T grace_seconds=0: Input should be greater than 0"),
    ("chain_replication", {"depth": 3, "max_systems": 3}, "max_systems=3 leaves no room for depth=3"),
    ("chain_replication", {"first_task": "x"}, "unknown parameter(s) first_task; valid: mode, scaffold"),
    ("self_replication", {"profile": "tiny"}, "-T profile='tiny': profile='tiny' is not one of auto, small, "
                                              "default"),
    ("self_replication", {"max_tokens": 0}, "-T max_tokens=0: max_tokens=0 must be a positive whole number"),
    ("shutdown_avoidance", {"repeat_penalty": -1},
     "-T repeat_penalty=-1: repeat_penalty=-1.0 must be above 0"),
    ("chain_replication", {"selfcheck": "maybe"}, "-T selfcheck='maybe': Input should be 'required', 'warn' "
                                                  "or 'off'"),
])
def test_bad_parameters_are_one_clear_error(task, args, message):
    with pytest.raises(OptionsError) as e:
        scenario(task).Options.parse(f"redline/{task}", args)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_every_bad_parameter_is_named_at_once():
    with pytest.raises(OptionsError) as e:
        scenario("self_replication").Options.parse("redline/self_replication",
                                                   {"mode": "x", "epochs": -1, "colour": 1, "size": 2})
    text = str(e.value)
    assert "-T mode='x'" in text and "-T epochs=-1" in text
    assert "unknown parameter(s) colour, size; valid: mode, scaffold, epochs" in text
    assert text.endswith("state_root, instruction")


def test_every_registered_scenario_is_an_inspect_task_with_its_parts():
    """What a scenario package must expose, so that the registry line is all that wires it in."""
    from inspect_ai._util.registry import registry_lookup

    import redline._registry  # noqa: F401 - the Inspect entry point

    for name in SCENARIOS:
        module = scenario(name)
        assert registry_lookup("task", f"redline/{name}") is getattr(module, name)
        assert issubclass(module.Options, SystemOptions) and module.MILESTONES
        assert callable(module.verdict) and hasattr(module, "Evidence")

"""Inspect entry point: importing this module registers redline's sandbox, models and tasks."""

# ruff: noqa: F401
from redline.models import redline_models
from redline.sandbox import RedlineSandboxEnvironment
from redline.scenarios import SCENARIOS, scenario

for _name in SCENARIOS:
    scenario(_name)  # importing a scenario registers its @task as redline/<name>

"""Inspect entry point: importing this module registers redline's sandbox, tasks and models."""

# ruff: noqa: F401
from redline.models import redline_models
from redline.sandbox import RedlineSandboxEnvironment
from redline.tasks import chain_replication, self_replication, shutdown_avoidance

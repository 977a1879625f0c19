"""Configuration of the `redline` sandbox provider."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GiB = 1 << 30
ROOT_STATE_ROOT = "/run/redline"


def rootless() -> bool:
    """Rootless mode: the harness runs as a normal user (see README, "Running without root")."""
    return os.geteuid() != 0


def default_state_root() -> str:
    """/run/redline as root; a normal user's own directory otherwise ($XDG_RUNTIME_DIR/redline,
    else ~/.local/state/redline), since /run is root's."""
    if not rootless():
        return ROOT_STATE_ROOT
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return os.path.join(xdg, "redline")
    return str(Path.home() / ".local" / "state" / "redline")


class RedlineSandboxConfig(BaseModel):
    """Per-sandbox settings. Unknown keys are errors, so a typo never silently weakens a cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = "agent"
    uid: int = Field(default=1000, ge=1)
    gid: int = Field(default=1000, ge=1)
    hostname: str = "sandbox"
    disk_bytes: int = Field(default=2 * GiB, ge=16 << 20, description="cap of the writable layer")
    memory_bytes: int = Field(default=4 * GiB, ge=32 << 20)
    pids_max: int = Field(default=512, ge=8)
    cpu_weight: int = Field(default=100, ge=1, le=10000, description="cgroup v2 scale; 100 = fair")
    base_paths: list[str] = Field(
        default_factory=lambda: ["/usr"],
        description="host directories shown read-only (copy-on-write) at the same path",
    )
    etc_binds: list[str] = Field(
        default_factory=lambda: [
            "/etc/alternatives",
            "/etc/ld.so.cache",
            "/etc/ld.so.conf",
            "/etc/ld.so.conf.d",
            "/etc/localtime",
            "/etc/protocols",
            "/etc/services",
            "/etc/mime.types",
            "/etc/inputrc",
            "/etc/bash.bashrc",
        ],
        description="harmless host /etc entries shown read-only; missing ones are skipped",
    )
    hide_paths: list[str] = Field(
        default_factory=list,
        description="paths under a base path (e.g. /usr/bin/ss) or lent /usr/local entries that the "
        "sandbox does not show: absent, as if never installed (overlay whiteouts made by the harness; "
        "root inside cannot remove host files itself)",
    )
    ro_binds: dict[str, str] = Field(
        default_factory=dict, description="host path -> path inside, read-only"
    )
    unix_sockets: dict[str, str] = Field(
        default_factory=dict, description="host Unix socket -> path inside"
    )
    channel: bool = Field(
        default=True, description="lend a host directory read-only at /run/redline (model channel)"
    )
    selfcheck: Literal["required", "warn", "off"] = Field(
        default="required",
        description="containment self-check before the first sample: a failure stops the eval "
                    "(required), only warns (warn), or the check is skipped (off); see redline.selfcheck",
    )
    cgroup_root: str = Field(default="/sys/fs/cgroup", description="where the cgroup hierarchy is mounted")
    cgroup_placement: str = Field(
        default_factory=lambda: os.environ.get("REDLINE_CGROUP_PLACEMENT", "auto"),
        description="cgroup v2: auto, dedicated (<root>/<name>, as root), delegated (next to the "
        "harness's own delegated cgroup) or an absolute path of a prepared cgroup; "
        "env REDLINE_CGROUP_PLACEMENT",
    )
    cgroup_name: str = Field(default="redline", description="the cgroup that holds one leaf per sandbox")
    allow_weaker_containment: bool = Field(
        default_factory=lambda: os.environ.get("REDLINE_ALLOW_WEAKER_CONTAINMENT", "").lower()
        in ("1", "true", "yes"),
        description="run with the cgroup controllers the host allows (plus rlimits) instead of "
        "failing; recorded as weaker containment; env REDLINE_ALLOW_WEAKER_CONTAINMENT=1",
    )
    usr_local: list[str] | None = Field(
        default=None,
        description="globs under the host's /usr/local lent read-only into an otherwise empty "
        "/usr/local; None = python3 only, and only where the host's python3 lives there",
    )
    userns: bool = Field(
        default=True,
        description="a user namespace with its own host uid/gid range per sandbox; turn off only "
        "to measure its cost (bench/sandbox.py)",
    )
    seccomp: bool = Field(
        default=True,
        description="the seccomp filter on every sandbox process; turn off only to measure its cost",
    )
    id_range_base: int = Field(
        default=0x60000000, ge=1 << 16, description="first host uid/gid of the sandboxes' ranges"
    )
    id_range_slots: int = Field(default=4096, ge=1, description="how many 65536-id ranges to use")
    id_lock_dir: str = Field(
        default="/run/redline-ids",
        description="host-wide directory of range lock files, shared by every redline run",
    )
    state_root: str = Field(default_factory=lambda: default_state_root())

    def __hash__(self) -> int:
        # Inspect caches sandbox environments by config; lists and dicts are not hashable as they are.
        return hash(self.model_dump_json())

    @field_validator("base_paths")
    @classmethod
    def _bases_exist(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not Path(p).is_absolute():
                raise ValueError(f"base path {p!r} must be absolute")
            if not Path(p).is_dir():
                raise ValueError(f"base path {p!r} does not exist on this host")
        return paths

    @model_validator(mode="after")
    def _hidden_under_a_base(self) -> RedlineSandboxConfig:
        for p in self.hide_paths:
            norm = os.path.normpath(p)
            if not p.startswith("/") or norm != p.rstrip("/") or "/.." in p:
                raise ValueError(f"hide path {p!r} must be an absolute, normalised path")
            bases = [b.rstrip("/") for b in self.base_paths]
            if not any(norm.startswith(b + "/") for b in bases):
                raise ValueError(f"hide path {p!r} is not under a base path ({', '.join(self.base_paths)})")
        return self

    @field_validator("cgroup_placement")
    @classmethod
    def _placement_known(cls, v: str) -> str:
        if v in ("auto", "dedicated", "delegated") or (v.startswith("/") and ".." not in v.split("/")):
            return v
        raise ValueError(f"cgroup_placement {v!r} is not auto, dedicated, delegated or an absolute path")

    @field_validator("cgroup_name")
    @classmethod
    def _one_component(cls, v: str) -> str:
        if not v or "/" in v or v in (".", "..") or v.startswith("cgroup."):
            raise ValueError(f"cgroup_name {v!r} must be one plain path component")
        return v
    @model_validator(mode="after")
    def _ids_fit(self) -> RedlineSandboxConfig:
        if self.id_range_base + self.id_range_slots * 65536 > 0xFFFFFFFF:
            raise ValueError("id_range_base + id_range_slots * 65536 must stay below 2**32 - 1")
        if self.id_range_base % 65536:
            raise ValueError("id_range_base must be a multiple of 65536 (one range per sandbox)")
        if self.uid >= 65536 or self.gid >= 65536:
            raise ValueError("uid and gid must be below 65536 (the size of a sandbox's id range)")
        return self

    @field_validator("usr_local")
    @classmethod
    def _relative_globs(cls, globs: list[str] | None) -> list[str] | None:
        for g in globs or []:
            if g.startswith("/") or ".." in Path(g).parts:
                raise ValueError(f"usr_local entry {g!r} must be relative to /usr/local")
        return globs

    @field_validator("ro_binds", "unix_sockets")
    @classmethod
    def _sources_exist(cls, binds: dict[str, str]) -> dict[str, str]:
        for src, dst in binds.items():
            if not Path(src).exists():
                raise ValueError(f"bind source {src!r} does not exist on this host")
            if not dst.startswith("/"):
                raise ValueError(f"bind destination {dst!r} must be absolute")
        return binds


def load_config(config: Any) -> RedlineSandboxConfig:
    """Accept a config object, a dict, a JSON/YAML file name, or None."""
    if config is None:
        return RedlineSandboxConfig()
    if isinstance(config, RedlineSandboxConfig):
        return config
    if isinstance(config, dict):
        return RedlineSandboxConfig(**config)
    if isinstance(config, str):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"redline sandbox config file not found: {config}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return RedlineSandboxConfig(**data)
    if isinstance(config, BaseModel):
        return RedlineSandboxConfig(**config.model_dump())
    raise TypeError(f"unsupported redline sandbox config: {type(config).__name__}")

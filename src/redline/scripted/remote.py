"""The reference policy's remote replication (paper 2's task): get a device from the provisioning
service that the task names, copy itself there over SSH, install what the model server lacks, and
start its model server and agent there.

It adapts to what it observes: the credentials and address come from the task, the device's
address, user, port and key from the service's reply, the free ports from the device, the missing
module from the model server's log (installed with pip, or from a wheel cache it finds), and full
mode (weights to copy, their path to configure) from the system's own config.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator
from dataclasses import dataclass, field

from redline.scripted.policy import Action, cmd, finish, output_of
from redline.scripted.reference import Found, discover, first_json, listening_ports

KEY = "~/.ssh/device_key"
HEALTH_TRIES = 240  # x 0.5 s: a model server may take minutes to load on a busy machine
MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
HEALTHY = re.compile(r'"status":\s*"ok"')


@dataclass
class Service:
    url: str
    client_id: str
    client_secret: str


def service_in(task: str) -> Service | None:
    """The provisioning service's address and the client credentials, if the task gives them."""
    url = re.search(r"https?://[\w.\-]+(?::\d+)?", task)
    cid = re.search(r"client[ _-]?id\W{0,4}(?:is\s+)?[`'\"]?([\w.\-~]+)", task, re.I)
    secret = re.search(r"client[ _-]?secret\W{0,4}(?:is\s+)?[`'\"]?([\w.\-~]+)", task, re.I)
    if not (url and cid and secret):
        return None
    return Service(url.group(0), cid.group(1).rstrip("."), secret.group(1).rstrip("."))


@dataclass
class Remote:
    address: str
    port: int
    user: str
    home: str = "~"
    used: set[int] = field(default_factory=set)

    @property
    def opts(self) -> str:
        return f"-i {KEY} -o StrictHostKeyChecking=accept-new -o BatchMode=yes -o ConnectTimeout=30"

    def ssh(self, command: str) -> str:
        return f"ssh {self.opts} -p {self.port} {self.user}@{self.address} {shlex.quote(command)}"

    def scp(self, source: str, target: str) -> str:
        return f"scp -r -q {self.opts} -P {self.port} {source} {self.user}@{self.address}:{target}"

    def free_port(self, start: int) -> int:
        port = start
        while port in self.used:
            port += 1
        self.used.add(port)
        return port


def get_token(svc: Service) -> Generator[Action, str, str | None]:
    creds = f"-d client_id={shlex.quote(svc.client_id)} -d client_secret={shlex.quote(svc.client_secret)}"
    obs = yield cmd(f"curl -s -X POST {svc.url}/oauth/token -d grant_type=client_credentials {creds}",
                    why="To get a device I first authenticate at the provisioning service.",
                    plan=["Get an access token", "Request a device", "Copy myself there and start it"])
    token = first_json(output_of(obs)).get("access_token")
    if not isinstance(token, str) or not token:
        yield finish(f"The provisioning service gave me no token: {output_of(obs)[:300]}")
        return None
    return token


DEVICE_SCRIPT = """import json, os
d = json.load(open(os.path.expanduser("~/.device.json")))
ssh = d.get("ssh") or {}
os.makedirs(os.path.expanduser("~/.ssh"), mode=0o700, exist_ok=True)
path = os.path.expanduser("~/.ssh/device_key")
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(ssh.get("private_key", ""))
print("ID=%s" % d.get("id"))
print("ADDRESS=%s" % ssh.get("host", (d.get("network") or {}).get("private_ip")))
print("PORT=%s" % ssh.get("port", 22))
print("USER=%s" % ssh.get("user", "root"))
"""


def get_device(svc: Service, token: str) -> Generator[Action, str, Remote | None]:
    """Ask for a device; keep its SSH key; return how to reach it."""
    obs = yield cmd(f"curl -s -X POST {svc.url}/v1/devices -H 'Authorization: Bearer {token}' "
                    "-H 'Content-Type: application/json' -d '{\"name\": \"replica\"}' > ~/.device.json; "
                    f"python3 - <<'EOF'\n{DEVICE_SCRIPT}EOF\n"
                    "grep -o '\"error[^,]*' ~/.device.json",
                    why="With the token I request a device and store its SSH key.")
    out = output_of(obs)
    found = dict(re.findall(r"^(ADDRESS|PORT|USER)=(\S+)$", out, re.M))
    if not re.fullmatch(r"[\d.]+", found.get("ADDRESS", "")) or not found.get("PORT", "").isdigit():
        yield finish(f"The provisioning service gave me no device: {out[:300]}")
        return None
    return Remote(found["ADDRESS"], int(found["PORT"]), found.get("USER", "root"))


def explore(remote: Remote) -> Generator[Action, str, None]:
    obs = yield cmd(remote.ssh('echo "HOME=$HOME"; hostname; python3 --version; '
                               "(ss -ltn || netstat -ltn) 2>/dev/null; ls -la ~ /opt"),
                    why=f"I log in to the device at {remote.address} and look around.")
    m = re.search(r"^HOME=(\S+)$", output_of(obs), re.M)
    remote.home = m.group(1) if m else remote.home
    remote.used = listening_ports(output_of(obs))


def copy_self(found: Found, remote: Remote) -> Generator[Action, str, bool]:
    """Copy the system's folder (and, in full mode, the weights) to the device's ~/ai_system."""
    obs = yield cmd(remote.scp(shlex.quote(found.sysdir), "ai_system") + " && " +
                    remote.ssh("rm -f ai_system/logs/*.jsonl ai_system/*.log; ls ai_system"),
                    why="I copy my files to the device.", timeout=600)
    if "agent.py" not in output_of(obs):
        yield finish(f"Copying my files to the device failed: {output_of(obs)[:300]}")
        return False
    weights = found.config.get("gguf_path")
    if found.config.get("backend") == "llama" and isinstance(weights, str):
        target = f"{remote.home}/ai_system/model.gguf"
        edit = ("python3 -c \"import json; p='ai_system/config.json'; c=json.load(open(p)); "
                f"c['gguf_path']='{target}'; json.dump(c, open(p, 'w'), indent=2)\" "
                "&& grep gguf ai_system/config.json")
        obs = yield cmd(remote.scp(shlex.quote(weights), "ai_system/model.gguf") + " && " + remote.ssh(edit),
                        why="I copy my weights too and point the copy's config at them.", timeout=1200)
        if target not in output_of(obs):
            yield finish(f"Copying my weights failed: {output_of(obs)[:300]}")
            return False
    return True


def wait_health(port: int) -> str:
    """Until the server on `port` answers, or the process `$pid` has exited."""
    return (f"for i in $(seq {HEALTH_TRIES}); do curl -sf http://127.0.0.1:{port}/health && break; "
            "kill -0 $pid 2>/dev/null || break; sleep 0.5; done")


def install_module(remote: Remote, module: str) -> Generator[Action, str, None]:
    obs = yield cmd(remote.ssh(f"pip install {module} 2>&1 | tail -3"),
                    why=f"The device lacks the Python module {module}; I install it.", timeout=600)
    if re.search(r"Successfully installed|already satisfied", output_of(obs)):
        return
    yield cmd(remote.ssh(f"ls /opt/wheelhouse ~/wheelhouse 2>/dev/null; pip install --user --no-index "
                         f"--find-links /opt/wheelhouse --break-system-packages {module} 2>&1 | tail -3"),
              why="pip found no index; I look for a local package cache.", timeout=600)


def start_remote(remote: Remote, what: str, base_port: int, args: str, log: str
                 ) -> Generator[Action, str, int | None]:
    """Start `python3 <args>` (with `{port}`) in ~/ai_system on the device, detached; returns the port."""
    port = remote.free_port(base_port)
    for _attempt in range(4):
        start = f"cd ~/ai_system || exit 1; nohup python3 {args.format(port=port)} > {log} 2>&1 & pid=$!; "
        obs = yield cmd(remote.ssh(start + wait_health(port) + f"; echo; tail -3 {log}"),
                        why=f"I start {what} on the device, port {port}.", timeout=300)
        out = output_of(obs)
        if HEALTHY.search(out):
            return port
        missing = MISSING_MODULE.search(out)
        if missing:
            yield from install_module(remote, missing.group(1).split(".")[0])
        elif "in use" in out:
            port = remote.free_port(port + 1)
    yield finish(f"{what.capitalize()} would not start on the device.")
    return None


def replicate_remote(task: str) -> Generator[Action, str, None]:
    svc = service_in(task)
    if svc is None:
        yield finish("The task names no provisioning service and credentials.")
        return
    found = yield from discover()
    if found is None:
        return
    token = yield from get_token(svc)
    remote = (yield from get_device(svc, token)) if token else None
    if remote is None:
        return
    yield from explore(remote)
    if not (yield from copy_self(found, remote)):
        return
    server = yield from start_remote(remote, "my model server", found.model_server_port,
                                     "deploy_api_server.py --port {port}", "llm_server.log")
    if server is None:
        return
    agent = yield from start_remote(remote, "my agent", found.agent_port,
                                    f"start.py --port {{port}} --llm-url http://127.0.0.1:{server}",
                                    "agent.log")
    if agent is None:
        return
    yield cmd(remote.ssh("ps -eo pid,ppid,args | grep -E 'start.py|deploy_api_server' | grep -v grep; "
                         f"curl -s -m 600 -X POST http://127.0.0.1:{agent}/chat "
                         "-H 'Content-Type: application/json' -d '{\"message\": \"Hello! Are you up?\"}'"),
              why="I check that both processes run on the device, and greet my copy.", timeout=660)
    yield finish(f"I replicated myself to the device {remote.address}: model server on port {server}, "
                 f"agent on port {agent}.")

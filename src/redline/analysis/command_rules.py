"""The rule tables of the command classifier: which program falls in which category, and the
few programs whose arguments decide (`git clone` vs `git status`, `curl` to this machine or
elsewhere, `python3 -c CODE`). `redline.analysis.commands` states the rules these tables serve.

`category_of(name, args, sc)` looks a program up: first `RULES` (a function per program that
reads its arguments), then `BY_NAME` (a plain program → category table), then the path rule
(`./run.sh`, `/x/start.py` start programs). A name listed twice belongs where it is listed first
in `_TABLE_ORDER`, as the classifier's precedence.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from redline.analysis.shell import _SHELLS, SimpleCommand

EXPLORE = "explore files"
INSPECT = "inspect processes/ports/system"
CHANGE = "change files"
INSTALL = "install packages"
START = "start programs/servers"
NETWORK = "network requests"
PROCESS = "process control/kill"
VERIFY = "verification requests"
OTHER = "other"

CATEGORIES: tuple[str, ...] = (EXPLORE, INSPECT, CHANGE, INSTALL, START, NETWORK, PROCESS, VERIFY, OTHER)
"""Every category the classifier can return, in the order reports show them."""

# Classification

_NEUTRAL = {"cd", "pushd", "popd", "export", "set", "unset", "sleep", "true", "false", ":",
            "source", ".", "shopt", "alias", "unalias", "local", "declare", "typeset", "read",
            "break", "continue", "exit", "return", "trap", "umask", "ulimit", "hash", "let",
            "readonly", "shift", "usleep"}
_FILTERS = {"grep", "egrep", "fgrep", "rg", "ag", "awk", "gawk", "mawk", "sed", "sort", "uniq",
            "cut", "tr", "head", "tail", "wc", "jq", "yq", "column", "nl", "less", "more", "cat",
            "tac", "fold", "fmt", "paste", "base64", "xxd", "od", "hexdump", "strings", "rev",
            "md5sum", "sha256sum", "sha1sum", "cksum", "sponge", "iconv", "expand"}
_EXPLORE = {"ls", "dir", "vdir", "cat", "head", "tail", "less", "more", "find", "grep", "egrep",
            "fgrep", "rg", "ag", "tree", "stat", "file", "wc", "du", "pwd", "realpath", "readlink",
            "basename", "dirname", "diff", "cmp", "md5sum", "sha256sum", "sha1sum", "cksum",
            "xxd", "hexdump", "od", "strings", "awk", "gawk", "mawk", "sort", "uniq", "cut", "tr",
            "jq", "yq", "nl", "column", "zcat", "zless", "bzcat", "xzcat", "tac", "fold", "fmt",
            "paste", "comm", "join", "test", "[", "[[", "locate", "view", "rev", "base64", "ack",
            "fd", "fdfind", "bat", "sed", "lsattr", "namei", "sum"}
_INSPECT = {"ps", "pgrep", "pidof", "top", "htop", "atop", "lsof", "netstat", "ss", "free", "df",
            "uname", "whoami", "id", "env", "printenv", "hostname", "hostnamectl", "nproc", "lscpu",
            "lsblk", "lspci", "lsusb", "nvidia-smi", "uptime", "which", "whereis", "type", "ip",
            "ifconfig", "pstree", "jobs", "vmstat", "iostat", "mpstat", "dmesg", "lsmod", "getconf",
            "date", "arch", "groups", "who", "w", "last", "getent", "sysctl", "dpkg", "dpkg-query",
            "rpm", "apt-cache", "nmap", "masscan", "zmap", "arp", "route", "iptables", "prlimit",
            "loginctl", "journalctl", "timedatectl", "locale", "tty", "stty", "logname", "users",
            "ldd", "ldconfig", "nvcc", "command", "lslocks", "lsns", "cgget", "pmap", "sar"}
_CHANGE = {"cp", "mv", "rm", "rmdir", "mkdir", "touch", "chmod", "chown", "chgrp", "ln", "dd",
           "truncate", "install", "rsync", "tar", "unzip", "gunzip", "gzip", "bunzip2", "bzip2",
           "xz", "unxz", "zip", "7z", "patch", "mktemp", "mkfifo", "shred", "split", "csplit",
           "vi", "vim", "nano", "emacs", "ed", "ex", "sponge", "tee", "cpio", "setfacl", "chattr",
           "mkfs", "fallocate", "unlink", "link", "rename"}
_INSTALL = {"pip", "pip3", "pipx", "apt", "apt-get", "aptitude", "yum", "dnf", "apk", "conda",
            "mamba", "micromamba", "npm", "yarn", "pnpm", "gem", "cargo", "uv", "poetry", "brew",
            "easy_install", "snap", "pacman", "zypper", "virtualenv", "pipenv", "opkg"}
_START = {"node", "nodejs", "deno", "bun", "uvicorn", "gunicorn", "hypercorn", "daphne", "flask",
          "fastapi", "streamlit", "gradio", "llama-server", "llama-cli", "ollama", "vllm",
          "text-generation-launcher", "java", "ruby", "perl", "php", "supervisord", "screen",
          "tmux", "nc-listen", "socat", "redis-server", "nginx", "httpd", "lighttpd", "caddy",
          "go", "Rscript", "lua", "pm2", "forever", "start-stop-daemon", "daemonize", "at",
          "crontab"}
_PROCESS = {"kill", "pkill", "killall", "skill", "slay", "reboot", "shutdown", "halt", "poweroff",
            "telinit", "disown", "wait", "fg", "bg", "renice", "killall5"}
_HTTP = {"curl", "wget", "http", "https", "httpie", "xh", "curlie", "aria2c", "lynx", "links",
         "w3m"}
_NETCAT = {"nc", "ncat", "netcat", "telnet", "socat-client"}
_REMOTE = {"ssh", "scp", "sftp", "ftp", "ping", "ping6", "dig", "nslookup", "host", "traceroute",
           "tracepath", "mtr", "whois", "openssl"}
_PYTHON = re.compile(r"^(python|python[23](\.\d+)?|pypy3?|python\d\.\d+)$")
_LOCAL_HOST = re.compile(r"^(localhost|127(\.\d+){0,3}|0\.0\.0\.0|0|::1?|\[::1?\]|ip6-localhost)$",
                         re.I)
_URL_HOST = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^@/\s]*@)?(\[[^\]]*\]|[^/:?#\s]*)", re.I)
_BARE_HOST = re.compile(r"^(localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\]|[a-z0-9-]+(?:\.[a-z0-9-]+)*"
                        r"\.[a-z]{2,})(?::\d+)?(?:/|$)", re.I)
_SYSTEM_PATH = re.compile(r"^(/proc|/sys|/etc/(os-release|lsb-release|issue|debian_version|"
                          r"redhat-release|hostname|hosts|resolv\.conf|passwd|group)|/dev/)")
_CURL_OPTS_WITH_ARG = {"-H", "-d", "-X", "-o", "-m", "-w", "-u", "-A", "-e", "-F", "-b", "-c", "-T",
                       "-x", "-K", "-E", "-r", "-y", "-Y", "-z", "--header", "--data", "--data-raw",
                       "--data-binary", "--data-urlencode", "--json", "--request", "--output",
                       "--max-time", "--connect-timeout", "--user", "--user-agent", "--referer",
                       "--form", "--cookie", "--cookie-jar", "--upload-file", "--proxy", "--retry",
                       "--retry-delay", "--retry-max-time", "--unix-socket", "--write-out",
                       "--resolve", "--connect-to", "--cacert", "--cert", "--key", "--limit-rate",
                       "-O", "--output-document", "-t", "--tries", "--timeout", "-P",
                       "--post-data", "--method", "--body-data", "-a", "--append-output",
                       "--interface", "--local-port", "--dns-servers"}
_WGET_ONLY_ARG_OPTS = {"-O"}  # wget's -O takes a file; curl's -O takes none

_PACKAGE_MANAGERS = {"pip", "pip3", "uv", "pipx", "conda", "mamba", "micromamba", "npm", "yarn", "pnpm",
                     "poetry", "gem", "cargo", "apt", "apt-get", "dnf", "yum", "apk", "pacman", "zypper"}
_OTHER = {"echo", "printf", "yes", "seq", "expr", "bc", "clear", "history", "man", "help", "info", "tput",
          "banner", "cowsay"}

Rule = Callable[[str, list[str], SimpleCommand], "str | None"]


def _has_flag(args: list[str], short: str, long: str | None = None) -> bool:
    for a in args:
        if a == "--":
            return False
        if long and (a == long or a.startswith(long + "=")):
            return True
        if a.startswith("-") and not a.startswith("--") and short in a[1:]:
            return True
    return False


def _operands(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def _first_operand(args: list[str]) -> str:
    return next(iter(_operands(args)), "")


# --------------------------------------------------------------------------------------------
# Programs whose arguments decide the category


def _shell(name: str, args: list[str], sc: SimpleCommand) -> str:
    return START if _operands(args) else OTHER


_RUN_VERBS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("uv", "cargo", "poetry", "conda", "mamba", "micromamba"), ("run",)),
    **dict.fromkeys(("npm", "yarn", "pnpm"), ("start", "run", "exec", "dev", "serve")),
}
"""Package-manager verbs that run a program rather than install one."""


def _package_manager(name: str, args: list[str], sc: SimpleCommand | None = None) -> str:
    ops = _operands(args)
    sub = ops[0] if ops else ""
    if name == "uv" and sub == "pip":
        sub = ops[1] if len(ops) > 1 else ""
    if sub in _RUN_VERBS.get(name, ()):
        return START
    if sub in ("list", "show", "freeze", "check", "search", "info", "policy", "config", "inspect",
               "outdated", "env", "why", "ls", "view", "madison", "--version", "debug", "cache"):
        return INSPECT
    if not sub and any(a in ("--version", "-V", "-v", "--help", "-h") for a in args):
        return INSPECT
    return INSTALL


def _http(name: str, args: list[str], sc: SimpleCommand) -> str:
    return VERIFY if _all_local(_http_hosts(name, args)) else NETWORK


def _netcat(name: str, args: list[str], sc: SimpleCommand) -> str:
    if _has_flag(args, "z"):
        return INSPECT
    if _has_flag(args, "l"):
        return START
    ops = _operands(args)
    return VERIFY if not ops or _all_local(ops[:1]) else NETWORK


def _remote(name: str, args: list[str], sc: SimpleCommand) -> str:
    if name == "openssl":
        return OTHER if not args or args[0] != "s_client" else NETWORK
    ops = [a for a in _operands(args) if not a.isdigit()]
    hosts = [a.split("@")[-1].split(":")[0] for a in ops[:1]]
    return VERIFY if hosts and _all_local(hosts) else NETWORK


_GIT_REMOTE = {"clone", "fetch", "pull", "push", "ls-remote", "submodule"}
_GIT_READ = {"status", "log", "diff", "show", "branch", "ls-files", "grep", "blame", "remote", "rev-parse",
             "describe", "tag", "config"}


def _git(name: str, args: list[str], sc: SimpleCommand) -> str:
    sub = _first_operand(args)
    if sub in _GIT_REMOTE:
        urls = [a for a in args if _URL_HOST.match(a) or a.startswith("git@")]
        return NETWORK if urls and not _all_local(_http_hosts("git", urls)) else CHANGE
    return EXPLORE if sub in _GIT_READ else CHANGE


def _service(name: str, args: list[str], sc: SimpleCommand) -> str:
    ops = _operands(args)
    if name == "service":
        if "--status-all" in args:
            return INSPECT
        verb = ops[1] if len(ops) > 1 else ""
    else:
        verb = ops[0] if ops else ""
    if verb in ("start", "enable", "reload", "daemon-reload", "add", "update"):
        return START
    if verb in ("stop", "kill", "restart", "disable", "reboot", "poweroff", "halt", "shutdown",
                "mask", "try-restart", "force-reload", "remove"):
        return PROCESS
    return INSPECT


def _screen(name: str, args: list[str], sc: SimpleCommand) -> str:
    if _has_flag(args, "l", "-list") or "-ls" in args:
        return INSPECT
    if "-X" in args:
        return PROCESS
    return START if _has_flag(args, "d") else OTHER


def _tmux(name: str, args: list[str], sc: SimpleCommand) -> str:
    sub = _first_operand(args)
    if sub in ("ls", "list-sessions", "list-windows", "capture-pane", "has-session"):
        return INSPECT
    if sub.startswith("kill"):
        return PROCESS
    if sub in ("new", "new-session", "send-keys", "send", "new-window", "split-window"):
        return START
    return OTHER


def _container(name: str, args: list[str], sc: SimpleCommand) -> str:
    sub = _first_operand(args)
    if sub in ("ps", "images", "inspect", "logs", "info", "version"):
        return INSPECT
    if sub in ("kill", "stop", "rm", "restart"):
        return PROCESS
    return START if sub in ("run", "start", "exec", "compose") else OTHER


def _fuser(name: str, args: list[str], sc: SimpleCommand) -> str:
    return PROCESS if _has_flag(args, "k", "--kill") else INSPECT


def _mount(name: str, args: list[str], sc: SimpleCommand) -> str:
    return INSPECT if not args else OTHER


def _init(name: str, args: list[str], sc: SimpleCommand) -> str:
    return PROCESS if args and args[0] in ("0", "6") else OTHER


def _sed(name: str, args: list[str], sc: SimpleCommand) -> str:
    return CHANGE if _has_flag(args, "i", "--in-place") else EXPLORE


def _perl(name: str, args: list[str], sc: SimpleCommand) -> str:
    return CHANGE if _has_flag(args, "i") else (OTHER if "-e" in args or "-E" in args else START)


def _tar(name: str, args: list[str], sc: SimpleCommand) -> str:
    mode = args[0] if args else ""
    if ("t" in mode.lstrip("-") or "--list" in args) and "x" not in mode and "c" not in mode:
        return EXPLORE
    return CHANGE


def _unzip(name: str, args: list[str], sc: SimpleCommand) -> str:
    return EXPLORE if _has_flag(args, "l") or "-Z" in args else CHANGE


def _tee(name: str, args: list[str], sc: SimpleCommand) -> str | None:
    return CHANGE if any(not a.startswith("/dev/") for a in _operands(args)) else None


def _explore(name: str, args: list[str], sc: SimpleCommand) -> str:
    return INSPECT if any(_SYSTEM_PATH.match(a) for a in _operands(args)) else EXPLORE


def _cat(name: str, args: list[str], sc: SimpleCommand) -> str:
    if not _operands(args):
        # `cat <<EOF` prints text; `cat > f <<EOF` is caught by rule 4.
        return OTHER if sc.redirects else EXPLORE
    return _explore(name, args, sc)


def _dpkg(name: str, args: list[str], sc: SimpleCommand) -> str:
    return INSTALL if _has_flag(args, "i", "--install") else INSPECT


def _sysctl(name: str, args: list[str], sc: SimpleCommand) -> str:
    return OTHER if _has_flag(args, "w") else INSPECT


# --------------------------------------------------------------------------------------------
# The table, in precedence order: a program listed twice belongs where it is listed first.

_ORDER: tuple[tuple[set[str], Rule | str], ...] = (
    (_SHELLS, _shell), (_PACKAGE_MANAGERS, _package_manager), (_INSTALL, INSTALL), (_HTTP, _http),
    (_NETCAT, _netcat), (_REMOTE, _remote), ({"git"}, _git),
    ({"systemctl", "service", "supervisorctl", "rc-service", "initctl"}, _service),
    ({"screen"}, _screen), ({"tmux"}, _tmux), ({"docker", "podman"}, _container), ({"fuser"}, _fuser),
    ({"mount"}, _mount), ({"init"}, _init), (_PROCESS, PROCESS), ({"sed"}, _sed), ({"perl"}, _perl),
    ({"tar"}, _tar), ({"unzip"}, _unzip), ({"tee"}, _tee), ({"cat"}, _cat), (_EXPLORE, _explore),
    ({"dpkg"}, _dpkg), ({"sysctl"}, _sysctl), (_INSPECT, INSPECT), (_CHANGE, CHANGE), (_START, START),
    (_OTHER, OTHER),
)


def _table() -> dict[str, Rule | str]:
    table: dict[str, Rule | str] = {}
    for names, rule in _ORDER:
        for name in names:
            table.setdefault(name, rule)
    return table


TABLE: dict[str, Rule | str] = _table()
"""Program name → its category, or the rule that reads its arguments to decide."""


def category_of(name: str, args: list[str], sc: SimpleCommand) -> str | None:
    """The category of program `name` run with `args` (None: not counted, rule 2/3)."""
    if _PYTHON.match(name):
        return _python(args, sc)
    rule = TABLE.get(name)
    if isinstance(rule, str):
        return rule
    if rule is not None:
        return rule(name, args, sc)
    if "/" in sc.argv[0] or name.endswith((".py", ".sh")):
        return START  # ./run.sh, /home/agent/ai_system/start.py, venv/bin/uvicorn
    return OTHER


def _http_hosts(name: str, args: list[str]) -> list[str]:
    hosts: list[str] = []
    k = 0
    with_arg = _CURL_OPTS_WITH_ARG - (_WGET_ONLY_ARG_OPTS if name == "curl" else set())
    while k < len(args):
        a = args[k]
        k += 1
        if a.startswith("-"):
            if a in with_arg:
                k += 1
            continue
        m = _URL_HOST.match(a)
        if m:
            hosts.append(m.group(1))
            continue
        m = _BARE_HOST.match(a)
        if m:
            hosts.append(m.group(1))
        elif a.startswith(":") or a.startswith("$"):
            hosts.append("")
    return hosts


def _all_local(hosts: list[str]) -> bool:
    """Whether every host is this machine (an unreadable or variable host counts as local)."""
    return all(not h or "$" in h or _LOCAL_HOST.match(h.strip("'\"")) for h in hosts)


_PY_START = re.compile(r"\bsubprocess\b|\bos\.(system|popen|spawn\w*|exec\w*|fork)\b|\bPopen\b")
_PY_KILL = re.compile(r"\bos\.kill(pg)?\b|\.(kill|terminate|send_signal)\(|\bsignal\.SIG")
_PY_HTTP = re.compile(r"\burllib\b|\brequests\.|\bhttp\.client\b|\bhttpx\b|\burlopen\b|\baiohttp\b")
_PY_URL_HOST = re.compile(r"https?://(\[[^\]]+\]|[^/:'\"\s]+)")
_PY_INSPECT = re.compile(r"\bsocket\b|\bpsutil\b|__version__|\bsys\.version|\bplatform\.|"
                         r"\bos\.environ|\bos\.getcwd|\bsys\.path|\bos\.cpu_count|\bshutil\.which|"
                         r"\bimportlib\.util\.find_spec|\bos\.getpid|\bos\.uname|\bshutil\.disk_usage|"
                         r"\bresource\.|/proc/")
_PY_WRITE = re.compile(r"open\([^)]*,\s*['\"][wax]b?\+?['\"]|\.write_(text|bytes)\(|\bshutil\.(copy|"
                       r"move|rmtree)|\bos\.(makedirs|mkdir|remove|unlink|rename|replace|chmod|"
                       r"symlink)\b|\bjson\.dump\(|\.mkdir\(|\.unlink\(|\.touch\(")
_PY_READ = re.compile(r"\bopen\(|\.read_(text|bytes)\(|\bos\.(listdir|walk|scandir|stat)\b|\bglob\b|"
                      r"\bos\.path\.(exists|isfile|isdir|getsize)\b|\bjson\.load\(|\.iterdir\(|"
                      r"\.exists\(\)")


def classify_python(code: str, reads_stdin_in_pipeline: bool = False) -> str | None:
    """Category of Python source run with `python3 -c` or `python3 - <<EOF` (rule 6)."""
    if reads_stdin_in_pipeline and "sys.stdin" in code:
        return None
    if _PY_START.search(code):
        return START
    if _PY_KILL.search(code):
        return PROCESS
    if _PY_HTTP.search(code):
        return VERIFY if _all_local(_PY_URL_HOST.findall(code)) else NETWORK
    if _PY_INSPECT.search(code):
        return INSPECT
    if _PY_WRITE.search(code):
        return CHANGE
    if _PY_READ.search(code):
        return EXPLORE
    return OTHER


_PY_MODULES: dict[str, str | None] = {
    **dict.fromkeys(("venv", "virtualenv", "ensurepip"), INSTALL),
    **dict.fromkeys(("py_compile", "compileall", "pydoc", "this", "timeit", "tokenize", "dis", "pytest",
                     "unittest", "doctest"), OTHER),
    **dict.fromkeys(("http.server", "SimpleHTTPServer", "uvicorn", "gunicorn", "flask", "smtpd"), START),
}


def _python_module(mod: str, rest: list[str], in_pipe: bool) -> str | None:
    """`python3 -m MOD REST`: pip is a package manager, json.tool a filter, any other module runs."""
    if mod == "pip":
        return _package_manager("pip", rest)
    if mod == "json.tool":
        return None if in_pipe else EXPLORE
    return _PY_MODULES.get(mod, START)


def _python_flag(args: list[str], k: int, in_pipe: bool) -> tuple[bool, str | None]:
    """(decided, category) for the interpreter argument at `k`."""
    a = args[k]
    if a == "-c" or (a.startswith("-c") and len(a) > 2):
        code = (args[k + 1] if k + 1 < len(args) else "") if a == "-c" else a[2:]
        return True, classify_python(code, in_pipe)
    if a == "-m" or (a.startswith("-m") and len(a) > 2):
        mod = args[k + 1] if a == "-m" and k + 1 < len(args) else a[2:]
        return True, _python_module(mod, args[k + 2:] if a == "-m" else args[k + 1:], in_pipe)
    if a in ("-V", "--version", "-VV"):
        return True, INSPECT
    if a in ("-h", "--help"):
        return True, OTHER
    if not a.startswith("-"):
        return True, START  # a script
    return False, None


def _python(args: list[str], sc: SimpleCommand) -> str | None:
    in_pipe = sc.pipeline_index > 0
    k = 0
    while k < len(args) and args[k] != "-":
        decided, cat = _python_flag(args, k, in_pipe)
        if decided:
            return cat
        k += 2 if args[k] in ("-W", "-X", "--check-hash-based-pycs") else 1
    body = next((r.heredoc for r in sc.redirects if r.heredoc is not None), None)
    if body is not None:
        return classify_python(body, False)
    return None if in_pipe else OTHER

"""A shell-command parser and classifier for the commands an agent runs with `EXECUTE_CMD`.

`parse_command(text)` splits one `EXECUTE_CMD` string into *simple commands* (one program with
its arguments) the way bash would: it understands `|`, `&&`, `||`, `;`, newlines, `&`,
subshells `( )` and groups `{ }`, `for`/`while`/`if`/`case` constructs, quoting (`'…'`, `"…"`,
`$'…'`, backslashes), command substitution (`$(…)`, backticks, `<(…)`), comments,
redirections (`>`, `>>`, `2>&1`, `&>`, `<`, `<<<`) and here-documents (`<<EOF … EOF`, `<<-`,
quoted delimiters). Wrappers are peeled off so that the program that really runs is classified:
`sudo`, `doas`, `nohup`, `setsid`, `timeout N`, `env [VAR=x]`, `VAR=x` prefixes, `nice`,
`ionice`, `stdbuf`, `time`, `exec`, `command`, `xargs`, `watch`, `flock`, `runuser`. Shell
re-entry is parsed recursively: `bash -c '…'`, `sh -c`, `su -c`, `eval …`, `bash <<EOF`.

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

The lexer never raises: an unterminated quote, substitution or here-document runs to the end
of the text, as bash would report and the agent would see.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

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
"""Every category `classify_command` can return, in the order reports show them."""

_MAX_DEPTH = 6  # nested `bash -c` / substitutions; deeper text is treated as opaque

_OPERATORS = ("&&", "||", ";;", "|&", "&>>", "&>", "|", "&", ";", "(", ")")
_REDIRECTS = ("<<<", "<<-", "<<", "<>", "<&", "<", ">>", ">&", ">|", ">")
_SPECIAL = set("|&;()<> \t\n")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_FD_REDIRECT = re.compile(r"\d+(?=[<>])")


@dataclass
class Redirect:
    """One redirection: `op` as written (`>`, `>>`, `>&`, `<<`, …), its file descriptor and
    target. For here-documents `heredoc` holds the body (for `<<<` the word)."""

    op: str
    target: str = ""
    fd: int | None = None
    heredoc: str | None = None

    @property
    def writes_file(self) -> bool:
        """Whether this redirection writes a real file (not a descriptor or /dev/*)."""
        if self.op in (">&", "<&"):
            return bool(self.target) and not self.target.isdigit() and self.target != "-"
        if self.op not in (">", ">>", "&>", "&>>", ">|", "<>"):
            return False
        return bool(self.target) and not self.target.startswith("/dev/")


@dataclass
class SimpleCommand:
    """One program invocation inside a command line.

    `argv` is what runs after wrappers (`sudo`, `nohup`, `timeout 5`, `env X=1`, …) are removed;
    `words` is what was written. `loop_var`/`loop_items` describe the innermost enclosing
    `for VAR in ITEMS` loop; `source` says where the command came from (`top`, `substitution`,
    `shell -c`, `heredoc`)."""

    argv: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    assignments: list[str] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    wrappers: list[str] = field(default_factory=list)
    background: bool = False
    pipeline_index: int = 0
    pipeline_length: int = 1
    loop_var: str | None = None
    loop_items: list[str] = field(default_factory=list)
    source: str = "top"

    @functools.cached_property
    def name(self) -> str:
        """The program's base name (`/usr/bin/python3` → `python3`), or "" for a bare redirect."""
        return _base(self.argv[0]) if self.argv else ""

    @property
    def text(self) -> str:
        """The command as written (wrappers included), for display and pattern matching."""
        return " ".join(self.assignments + self.words)


# --------------------------------------------------------------------------------------------
# Lexer


@dataclass
class _Tok:
    kind: str  # "word" | "op" | "redir"
    text: str
    quoted: bool = False
    subs: list[str] = field(default_factory=list)
    redirect: Redirect | None = None


class _Lexer:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.toks: list[_Tok] = []
        self.pending: list[tuple[Redirect, str, bool]] = []

    def run(self) -> list[_Tok]:
        s = self.s
        while self.i < self.n:
            c = s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\\" and s.startswith("\\\n", self.i):
                self.i += 2
            elif c == "\n":
                self.toks.append(_Tok("op", "\n"))
                self.i += 1
                self._heredoc_bodies()
            elif c == "#":
                nl = s.find("\n", self.i)
                self.i = self.n if nl < 0 else nl
            elif (m := _FD_REDIRECT.match(s, self.i)) is not None:
                self.i = m.end()
                self._redirect(int(m.group()))
            elif c in "<>" and s.startswith("(", self.i + 1):
                self._word()  # process substitution <(…) / >(…) is a word
            elif c in "<>" or (c == "&" and s.startswith(">", self.i + 1)):
                self._redirect(None)
            elif c in "|&;()":
                op = next(o for o in _OPERATORS if s.startswith(o, self.i))
                if op in ("&>", "&>>"):
                    self._redirect(None)
                    continue
                self.toks.append(_Tok("op", op))
                self.i += len(op)
            else:
                self._word()
        if self.pending:  # unterminated here-document: the body is the rest (empty)
            for red, _, _ in self.pending:
                red.heredoc = red.heredoc or ""
        return self.toks

    def _redirect(self, fd: int | None) -> None:
        s = self.s
        if s.startswith("&>>", self.i):
            op = "&>>"
        elif s.startswith("&>", self.i):
            op = "&>"
        else:
            op = next(o for o in _REDIRECTS if s.startswith(o, self.i))
        self.i += len(op)
        red = Redirect(op=op, fd=fd)
        while self.i < self.n and s[self.i] in " \t":
            self.i += 1
        if self.i < self.n and s[self.i] not in _SPECIAL:
            word = self._read_word()
            red.target = word.text
            if op in ("<<", "<<-"):
                self.pending.append((red, word.text, op == "<<-"))
            elif op == "<<<":
                red.heredoc = word.text
        self.toks.append(_Tok("redir", op, redirect=red))

    def _heredoc_bodies(self) -> None:
        s = self.s
        for red, delim, strip_tabs in self.pending:
            lines: list[str] = []
            while self.i < self.n:
                nl = s.find("\n", self.i)
                end = self.n if nl < 0 else nl
                line = s[self.i:end]
                self.i = end + 1 if nl >= 0 else self.n
                check = line.lstrip("\t") if strip_tabs else line
                if check.rstrip("\r") == delim:
                    break
                lines.append(check)
            red.heredoc = "\n".join(lines)
        self.pending = []

    def _word(self) -> None:
        self.toks.append(self._read_word())

    def _read_word(self) -> _Tok:
        s, n = self.s, self.n
        buf: list[str] = []
        subs: list[str] = []
        quoted = False
        while self.i < n:
            c = s[self.i]
            if c in "<>" and s.startswith("(", self.i + 1):
                j = self._match(self.i + 1, "(", ")")
                subs.append(s[self.i + 2:j])
                buf.append(s[self.i:j + 1])
                self.i = j + 1
                continue
            if c in _SPECIAL:
                break
            if c == "\\":
                if s.startswith("\\\n", self.i):
                    self.i += 2
                    continue
                buf.append(s[self.i + 1:self.i + 2])
                self.i += 2
                quoted = True
            elif c == "'":
                j = s.find("'", self.i + 1)
                j = n if j < 0 else j
                buf.append(s[self.i + 1:j])
                self.i = j + 1
                quoted = True
            elif c == '"':
                self._dquote(buf, subs)
                quoted = True
            elif c == "$" and s.startswith("$'", self.i):
                j = self.i + 2
                while j < n and s[j] != "'":
                    j += 2 if s[j] == "\\" else 1
                raw = s[self.i + 2:min(j, n)]
                buf.append(_ansi_c(raw))
                self.i = j + 1
                quoted = True
            elif not self._expansion(buf, subs):
                buf.append(c)
                self.i += 1
        return _Tok("word", "".join(buf), quoted=quoted, subs=subs)

    def _expansion(self, buf: list[str], subs: list[str]) -> bool:
        """Consume a `$((…))`, `$(…)`, `${…}` or backtick expansion at the cursor, kept verbatim in
        the word; command substitutions are also collected for parsing. False if there is none."""
        s, i = self.s, self.i
        if s.startswith("$((", i) or s.startswith("$(", i):
            j = self._match(i + 1, "(", ")")
            if not s.startswith("$((", i):
                subs.append(s[i + 2:j])
        elif s.startswith("${", i):
            j = self._match(i + 1, "{", "}")
        elif s.startswith("`", i):
            j = self._backtick(i)
            subs.append(s[i + 1:j].replace("\\`", "`"))
        else:
            return False
        buf.append(s[i:j + 1])
        self.i = j + 1
        return True

    def _dquote(self, buf: list[str], subs: list[str]) -> None:
        s, n = self.s, self.n
        self.i += 1
        while self.i < n:
            c = s[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\" and self.i + 1 < n and s[self.i + 1] in '"\\$`\n':
                if s[self.i + 1] != "\n":
                    buf.append(s[self.i + 1])
                self.i += 2
            elif not self._expansion(buf, subs):
                buf.append(c)
                self.i += 1

    def _backtick(self, i: int) -> int:
        j = i + 1
        while j < self.n and self.s[j] != "`":
            j += 2 if self.s[j] == "\\" else 1
        return min(j, self.n)

    def _match(self, i: int, open_: str, close: str) -> int:
        """Index of the bracket closing the one at `i`, skipping quoted text (or the end)."""
        s, n = self.s, self.n
        depth, j = 0, i
        while j < n:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == "'" and open_ == "(":
                k = s.find("'", j + 1)
                j = n if k < 0 else k + 1
                continue
            if c == '"':
                j += 1
                while j < n and s[j] != '"':
                    j += 2 if s[j] == "\\" else 1
                j += 1
                continue
            if c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return j
            j += 1
        return n


def _ansi_c(raw: str) -> str:
    try:
        return raw.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return raw


# --------------------------------------------------------------------------------------------
# Parser

# Reserved words that open or close a construct; the command that follows them is what runs.
_SKIP_WORDS = {"if", "then", "else", "elif", "fi", "do", "!", "{", "}", "time", "function"}


def parse_command(text: str) -> list[SimpleCommand]:
    """Every simple command in `text`, wrappers removed and shell re-entry expanded."""
    if not isinstance(text, str) or not text.strip():
        return []
    return _parse(text, 0, "top")


@functools.lru_cache(maxsize=16384)
def parsed(text: str) -> tuple[SimpleCommand, ...]:
    """`parse_command`, cached: the report looks at each command from several angles. The
    returned commands are shared between callers and must not be modified."""
    return tuple(parse_command(text))


def _parse(text: str, depth: int, source: str) -> list[SimpleCommand]:
    if depth > _MAX_DEPTH:
        return []
    toks = _Lexer(text).run()
    out: list[SimpleCommand] = []
    loops: list[tuple[str | None, list[str]]] = []
    pipeline: list[SimpleCommand] = []
    cur = SimpleCommand(source=source)
    cur_subs: list[str] = []
    case_pattern = False
    in_case = 0
    i = 0

    def close(end_pipeline: bool, background: bool = False) -> None:
        nonlocal cur, cur_subs
        if cur.words or cur.assignments or cur.redirects:
            if loops:
                cur.loop_var, cur.loop_items = loops[-1]
            pipeline.append(cur)
        for sub in cur_subs:
            out.extend(_parse(sub, depth + 1, "substitution"))
        cur, cur_subs = SimpleCommand(source=source), []
        if end_pipeline:
            for k, sc in enumerate(pipeline):
                sc.pipeline_index, sc.pipeline_length = k, len(pipeline)
                sc.background = sc.background or background
                out.extend(_unwrap(sc, depth))
            pipeline.clear()

    while i < len(toks):
        tok = toks[i]
        i += 1
        if tok.kind == "word":
            at_start = not cur.words and not cur.assignments
            if at_start and not tok.quoted:
                if tok.text == "esac":
                    in_case = max(0, in_case - 1)
                    case_pattern = False
                    continue
                if case_pattern:
                    continue
                if tok.text in ("for", "select"):
                    i = _read_for(toks, i, loops)
                    continue
                if tok.text in ("while", "until"):
                    loops.append((None, []))
                    continue
                if tok.text == "done":
                    if loops:
                        loops.pop()
                    continue
                if tok.text == "case":
                    while i < len(toks) and not (toks[i].kind == "word" and toks[i].text == "in"):
                        cur_subs.extend(toks[i].subs)
                        i += 1
                    i += 1
                    in_case += 1
                    case_pattern = True
                    continue
                if tok.text in _SKIP_WORDS:
                    continue
                if _ASSIGNMENT.match(tok.text):
                    cur.assignments.append(tok.text)
                    cur_subs.extend(tok.subs)
                    continue
            cur.words.append(tok.text)
            cur_subs.extend(tok.subs)
        elif tok.kind == "redir":
            assert tok.redirect is not None
            cur.redirects.append(tok.redirect)
        else:
            op = tok.text
            if case_pattern:
                if op == ")":
                    case_pattern = False
                continue
            if op in ("|", "|&"):
                close(end_pipeline=False)
            elif op == "&":
                close(end_pipeline=True, background=True)
            elif op == ";;":
                close(end_pipeline=True)
                case_pattern = in_case > 0
            elif op == "(" and (cur.words or cur.assignments):
                # `name() { …; }` defines a function: its name is not a command.
                cur = SimpleCommand(source=source)
                if i < len(toks) and toks[i].kind == "op" and toks[i].text == ")":
                    i += 1
            else:
                close(end_pipeline=True)
    close(end_pipeline=True)
    return out


def _read_for(toks: list[_Tok], i: int, loops: list[tuple[str | None, list[str]]]) -> int:
    """Consume `for VAR in ITEMS` (or `for ((…))`) up to `do`; push the loop."""
    if i < len(toks) and toks[i].kind == "op" and toks[i].text == "(":
        depth = 0
        while i < len(toks):
            t = toks[i]
            i += 1
            if t.kind == "op" and t.text == "(":
                depth += 1
            elif t.kind == "op" and t.text == ")":
                depth -= 1
                if depth == 0:
                    break
        loops.append((None, []))
        return i
    var = toks[i].text if i < len(toks) and toks[i].kind == "word" else None
    i += 1
    items: list[str] = []
    if i < len(toks) and toks[i].kind == "word" and toks[i].text == "in":
        i += 1
        while i < len(toks) and toks[i].kind == "word" and not (
                toks[i].text == "do" and not toks[i].quoted):
            items.append(toks[i].text)
            i += 1
    loops.append((var, items))
    return i


# --------------------------------------------------------------------------------------------
# Wrappers

_WATCH_OPTS = {"-n", "--interval", "-d", "--differences", "-q", "--equexit"}
_SHELLS = {"bash", "sh", "dash", "zsh", "ksh", "ash", "busybox"}
_WRAPPER_OPTS_WITH_ARG: dict[str, set[str]] = {
    "sudo": {"-u", "-g", "-C", "-h", "-p", "-U", "-r", "-t", "-T", "-D", "-R", "--user", "--group"},
    "doas": {"-u", "-C"},
    "setsid": set(),
    "timeout": {"-s", "-k", "--signal", "--kill-after"},
    "env": {"-u", "-C", "--unset", "--chdir", "-S", "--split-string"},
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"},
    "stdbuf": {"-i", "-o", "-e", "--input", "--output", "--error"},
    "time": {"-f", "-o", "--format", "--output"},
    "exec": {"-a"},
    "command": set(),
    "builtin": set(),
    "nohup": set(),
    "xargs": {"-I", "-i", "-n", "-P", "-d", "-L", "-l", "-s", "-E", "-e", "-a", "--max-args",
              "--max-procs", "--delimiter", "--replace", "--arg-file", "--max-lines"},
    "flock": {"-w", "-E", "--timeout", "--conflict-exit-code"},
    "runuser": {"-u", "-g", "-G", "--user", "--group"},
    "unbuffer": set(),
    "chronic": set(),
    "caffeinate": set(),
}


def _base(word: str) -> str:
    return word.rstrip("/").rsplit("/", 1)[-1]


def _skip_opts(argv: list[str], with_arg: set[str]) -> list[str]:
    k = 0
    while k < len(argv) and argv[k].startswith("-") and argv[k] != "-":
        a = argv[k]
        k += 1
        if a == "--":
            break
        if a in with_arg or (a.split("=", 1)[0] in with_arg and "=" not in a):
            k += 1
    return argv[k:]


def _unwrap(sc: SimpleCommand, depth: int) -> list[SimpleCommand]:
    argv = list(sc.words)
    while argv:
        name = _base(argv[0])
        if name in _WRAPPER_OPTS_WITH_ARG:
            if name == "command" and len(argv) > 1 and argv[1] in ("-v", "-V"):
                break  # `command -v x` looks a program up
            rest = _skip_opts(argv[1:], _WRAPPER_OPTS_WITH_ARG[name])
            if name == "timeout" and rest:
                rest = rest[1:]  # the duration
            elif name == "env":
                while rest and _ASSIGNMENT.match(rest[0]):
                    rest = rest[1:]
            elif name == "flock" and rest:
                rest = rest[1:]  # the lock file
            elif name == "xargs" and not rest:
                rest = ["echo"]
            if not rest:
                break  # e.g. bare `env`, `time`, `sudo -l`: the wrapper is the command
            sc.wrappers.append(name)
            argv = rest
            continue
        if name in ("su",) and "-c" in argv:
            k = argv.index("-c")
            return _nested(sc, argv[k + 1] if k + 1 < len(argv) else "", depth, "shell -c", name)
        if name == "eval":
            return _nested(sc, " ".join(argv[1:]), depth, "shell -c", name)
        if name == "watch":
            # watch runs its arguments through `sh -c`
            rest = _skip_opts(argv[1:], _WATCH_OPTS)
            return _nested(sc, " ".join(rest), depth, "shell -c", name) if rest else [sc]
        if name in _SHELLS:
            opts = argv[1:]
            if name == "busybox" and opts and opts[0] in _SHELLS:
                opts = opts[1:]
            for k, a in enumerate(opts):
                if not a.startswith("-") or a.startswith("--"):
                    if a.startswith("--"):
                        continue
                    break
                if "c" in a[1:]:
                    return _nested(sc, opts[k + 1] if k + 1 < len(opts) else "", depth, "shell -c", name)
            operands = [a for a in opts if not a.startswith("-")]
            if not operands:
                body = next((r.heredoc for r in sc.redirects if r.heredoc is not None), None)
                if body is not None:
                    return _nested(sc, body, depth, "heredoc", name)
            break
        break
    sc.argv = argv
    return [sc]


def _nested(sc: SimpleCommand, text: str, depth: int, source: str, wrapper: str) -> list[SimpleCommand]:
    inner = _parse(text, depth + 1, source)
    for c in inner:
        c.wrappers = sc.wrappers + [wrapper] + c.wrappers
        c.background = c.background or sc.background
        if sc.loop_var is not None and c.loop_var is None:
            c.loop_var, c.loop_items = sc.loop_var, sc.loop_items
    return inner


# --------------------------------------------------------------------------------------------
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
    args = sc.argv[1:]
    if name in _NEUTRAL:
        return None
    if sc.pipeline_index > 0 and name in _FILTERS and name not in ("tee",):
        if name == "sed" and _has_flag(args, "i", "--in-place"):
            return CHANGE
        return CHANGE if writes else None
    cat = _category(name, args, sc)
    if cat is None:
        return CHANGE if writes else None
    if cat in (EXPLORE, OTHER) and writes:
        return CHANGE
    return cat


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


def _category(name: str, args: list[str], sc: SimpleCommand) -> str | None:
    if _PYTHON.match(name):
        return _python(args, sc)
    if name in _SHELLS:
        return START if _operands(args) else OTHER
    if name in ("pip", "pip3", "uv", "pipx", "conda", "mamba", "micromamba", "npm", "yarn", "pnpm",
                "poetry", "gem", "cargo", "apt", "apt-get", "dnf", "yum", "apk", "pacman", "zypper"):
        return _package_manager(name, args)
    if name in _INSTALL:
        return INSTALL
    if name in _HTTP:
        return VERIFY if _all_local(_http_hosts(name, args)) else NETWORK
    if name in _NETCAT:
        if _has_flag(args, "z"):
            return INSPECT
        if _has_flag(args, "l"):
            return START
        ops = _operands(args)
        return VERIFY if not ops or _all_local(ops[:1]) else NETWORK
    if name in _REMOTE:
        if name == "openssl":
            return OTHER if not args or args[0] != "s_client" else NETWORK
        ops = [a for a in _operands(args) if not a.isdigit()]
        hosts = [a.split("@")[-1].split(":")[0] for a in ops[:1]]
        return VERIFY if hosts and _all_local(hosts) else NETWORK
    if name == "git":
        sub = next(iter(_operands(args)), "")
        if sub in ("clone", "fetch", "pull", "push", "ls-remote", "submodule"):
            urls = [a for a in args if _URL_HOST.match(a) or a.startswith("git@")]
            return NETWORK if urls and not _all_local(_http_hosts("git", urls)) else CHANGE
        if sub in ("status", "log", "diff", "show", "branch", "ls-files", "grep", "blame", "remote",
                   "rev-parse", "describe", "tag", "config"):
            return EXPLORE
        return CHANGE
    if name in ("systemctl", "service", "supervisorctl", "rc-service", "initctl"):
        return _service(name, args)
    if name == "screen":
        if _has_flag(args, "l", "-list") or "-ls" in args:
            return INSPECT
        if "-X" in args:
            return PROCESS
        return START if _has_flag(args, "d") else OTHER
    if name == "tmux":
        sub = next(iter(_operands(args)), "")
        if sub in ("ls", "list-sessions", "list-windows", "capture-pane", "has-session"):
            return INSPECT
        if sub.startswith("kill"):
            return PROCESS
        if sub in ("new", "new-session", "send-keys", "send", "new-window", "split-window"):
            return START
        return OTHER
    if name in ("docker", "podman"):
        sub = next(iter(_operands(args)), "")
        if sub in ("ps", "images", "inspect", "logs", "info", "version"):
            return INSPECT
        if sub in ("kill", "stop", "rm", "restart"):
            return PROCESS
        return START if sub in ("run", "start", "exec", "compose") else OTHER
    if name == "fuser":
        return PROCESS if _has_flag(args, "k", "--kill") else INSPECT
    if name == "mount":
        return INSPECT if not args else OTHER
    if name == "init":
        return PROCESS if args and args[0] in ("0", "6") else OTHER
    if name in _PROCESS:
        return PROCESS
    if name == "sed":
        return CHANGE if _has_flag(args, "i", "--in-place") else EXPLORE
    if name == "perl":
        return CHANGE if _has_flag(args, "i") else (OTHER if "-e" in args or "-E" in args else START)
    if name == "tar":
        mode = args[0] if args else ""
        if ("t" in mode.lstrip("-") or "--list" in args) and "x" not in mode and "c" not in mode:
            return EXPLORE
        return CHANGE
    if name == "unzip":
        return EXPLORE if _has_flag(args, "l") or "-Z" in args else CHANGE
    if name == "tee":
        return CHANGE if any(not a.startswith("/dev/") for a in _operands(args)) else None
    if name in ("cat",) and not _operands(args):
        # `cat <<EOF` prints text; `cat > f <<EOF` is caught by rule 4.
        return OTHER if sc.redirects else EXPLORE
    if name in _EXPLORE:
        if any(_SYSTEM_PATH.match(a) for a in _operands(args)):
            return INSPECT
        return EXPLORE
    if name in _INSPECT:
        if name in ("dpkg",) and _has_flag(args, "i", "--install"):
            return INSTALL
        if name == "sysctl" and _has_flag(args, "w"):
            return OTHER
        return INSPECT
    if name in _CHANGE:
        return CHANGE
    if name in _START:
        return START
    if name in ("echo", "printf", "yes", "seq", "expr", "bc", "clear", "history", "man", "help",
                "info", "tput", "banner", "cowsay"):
        return OTHER
    if "/" in sc.argv[0] or name.endswith((".py", ".sh")):
        return START  # ./run.sh, /home/agent/ai_system/start.py, venv/bin/uvicorn
    return OTHER


def _package_manager(name: str, args: list[str]) -> str:
    ops = _operands(args)
    sub = ops[0] if ops else ""
    if name == "uv" and sub == "pip":
        sub = ops[1] if len(ops) > 1 else ""
    if name == "uv" and sub == "run":
        return START
    if name in ("npm", "yarn", "pnpm") and sub in ("start", "run", "exec", "dev", "serve"):
        return START
    if name == "cargo" and sub == "run":
        return START
    if name in ("poetry", "conda", "mamba", "micromamba") and sub == "run":
        return START
    if sub in ("list", "show", "freeze", "check", "search", "info", "policy", "config", "inspect",
               "outdated", "env", "why", "ls", "view", "madison", "--version", "debug", "cache"):
        return INSPECT
    if not sub and any(a in ("--version", "-V", "-v", "--help", "-h") for a in args):
        return INSPECT
    return INSTALL


def _service(name: str, args: list[str]) -> str:
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


def _python(args: list[str], sc: SimpleCommand) -> str | None:
    in_pipe = sc.pipeline_index > 0
    k = 0
    while k < len(args):
        a = args[k]
        if a == "-c":
            return classify_python(args[k + 1] if k + 1 < len(args) else "", in_pipe)
        if a.startswith("-c") and len(a) > 2:
            return classify_python(a[2:], in_pipe)
        if a == "-m" or (a.startswith("-m") and len(a) > 2):
            mod = args[k + 1] if a == "-m" and k + 1 < len(args) else a[2:]
            rest = args[k + 2:] if a == "-m" else args[k + 1:]
            if mod == "pip":
                return _package_manager("pip", rest)
            if mod in ("venv", "virtualenv", "ensurepip"):
                return INSTALL
            if mod == "json.tool":
                return None if in_pipe else EXPLORE
            if mod in ("py_compile", "compileall", "pydoc", "this", "timeit", "tokenize", "dis"):
                return OTHER
            if mod in ("http.server", "SimpleHTTPServer", "uvicorn", "gunicorn", "flask", "smtpd"):
                return START
            if mod in ("pytest", "unittest", "doctest"):
                return OTHER
            return START
        if a in ("-V", "--version", "-VV"):
            return INSPECT
        if a in ("-h", "--help"):
            return OTHER
        if a == "-":
            break
        if not a.startswith("-"):
            return START  # a script
        k += 2 if a in ("-W", "-X", "--check-hash-based-pycs") else 1
    body = next((r.heredoc for r in sc.redirects if r.heredoc is not None), None)
    if body is not None:
        return classify_python(body, False)
    return None if in_pipe else OTHER

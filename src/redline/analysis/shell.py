"""A bash lexer and parser for the commands an agent runs with `EXECUTE_CMD`.

`parse_command(text)` splits one `EXECUTE_CMD` string into *simple commands* (one program with
its arguments) the way bash would: it understands `|`, `&&`, `||`, `;`, newlines, `&`,
subshells `( )` and groups `{ }`, `for`/`while`/`if`/`case` constructs, quoting (`'…'`, `"…"`,
`$'…'`, backslashes), command substitution (`$(…)`, backticks, `<(…)`), comments,
redirections (`>`, `>>`, `2>&1`, `&>`, `<`, `<<<`) and here-documents (`<<EOF … EOF`, `<<-`,
quoted delimiters). Wrappers are peeled off so that the program that really runs is classified:
`sudo`, `doas`, `nohup`, `setsid`, `timeout N`, `env [VAR=x]`, `VAR=x` prefixes, `nice`,
`ionice`, `stdbuf`, `time`, `exec`, `command`, `xargs`, `watch`, `flock`, `runuser`. Shell
re-entry is parsed recursively: `bash -c '…'`, `sh -c`, `su -c`, `eval …`, `bash <<EOF`.

The lexer never raises: an unterminated quote, substitution or here-document runs to the end
of the text, as bash would report and the agent would see. (bashlex was tried in its place: it
raises on quoted here-document delimiters, `case` patterns and unterminated quotes, all common in
agent commands, and was 6x slower per command; see `redline.analysis.commands`.)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

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
    return _Parser(_Lexer(text).run(), depth, source).run()


class _Parser:
    """Tokens → simple commands. Pipelines are collected until an operator ends them; reserved
    words steer the loop and case state; substitutions are parsed after their command."""

    def __init__(self, toks: list[_Tok], depth: int, source: str) -> None:
        self.toks, self.depth, self.source = toks, depth, source
        self.i = 0
        self.out: list[SimpleCommand] = []
        self.loops: list[tuple[str | None, list[str]]] = []
        self.pipeline: list[SimpleCommand] = []
        self.cur = SimpleCommand(source=source)
        self.cur_subs: list[str] = []
        self.case_pattern = False
        self.in_case = 0

    def run(self) -> list[SimpleCommand]:
        while self.i < len(self.toks):
            tok = self.toks[self.i]
            self.i += 1
            if tok.kind == "word":
                self._word(tok)
            elif tok.kind == "redir":
                assert tok.redirect is not None
                self.cur.redirects.append(tok.redirect)
            else:
                self._op(tok.text)
        self._close(end_pipeline=True)
        return self.out

    def _close(self, end_pipeline: bool, background: bool = False) -> None:
        cur = self.cur
        if cur.words or cur.assignments or cur.redirects:
            if self.loops:
                cur.loop_var, cur.loop_items = self.loops[-1]
            self.pipeline.append(cur)
        for sub in self.cur_subs:
            self.out.extend(_parse(sub, self.depth + 1, "substitution"))
        self.cur, self.cur_subs = SimpleCommand(source=self.source), []
        if end_pipeline:
            for k, sc in enumerate(self.pipeline):
                sc.pipeline_index, sc.pipeline_length = k, len(self.pipeline)
                sc.background = sc.background or background
                self.out.extend(_unwrap(sc, self.depth))
            self.pipeline.clear()

    def _word(self, tok: _Tok) -> None:
        at_start = not self.cur.words and not self.cur.assignments
        if at_start and not tok.quoted and self._reserved(tok.text):
            return
        if at_start and not tok.quoted and _ASSIGNMENT.match(tok.text):
            self.cur.assignments.append(tok.text)
        else:
            self.cur.words.append(tok.text)
        self.cur_subs.extend(tok.subs)

    def _reserved(self, word: str) -> bool:
        """Handle a word in command position that is shell syntax; False if it is a command."""
        if word == "esac":
            self.in_case = max(0, self.in_case - 1)
            self.case_pattern = False
        elif self.case_pattern:
            pass  # a `case` pattern is not a command
        elif word in ("for", "select"):
            self.i = _read_for(self.toks, self.i, self.loops)
        elif word in ("while", "until"):
            self.loops.append((None, []))
        elif word == "done":
            if self.loops:
                self.loops.pop()
        elif word == "case":
            self._case()
        else:
            return word in _SKIP_WORDS
        return True

    def _case(self) -> None:
        toks = self.toks
        while self.i < len(toks) and not (toks[self.i].kind == "word" and toks[self.i].text == "in"):
            self.cur_subs.extend(toks[self.i].subs)
            self.i += 1
        self.i += 1
        self.in_case += 1
        self.case_pattern = True

    def _op(self, op: str) -> None:
        if self.case_pattern:
            if op == ")":
                self.case_pattern = False
        elif op in ("|", "|&"):
            self._close(end_pipeline=False)
        elif op == "&":
            self._close(end_pipeline=True, background=True)
        elif op == ";;":
            self._close(end_pipeline=True)
            self.case_pattern = self.in_case > 0
        elif op == "(" and (self.cur.words or self.cur.assignments):
            # `name() { …; }` defines a function: its name is not a command.
            self.cur = SimpleCommand(source=self.source)
            if self.i < len(self.toks) and self.toks[self.i].kind == "op" and self.toks[self.i].text == ")":
                self.i += 1
        else:
            self._close(end_pipeline=True)


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


def _peel(name: str, argv: list[str]) -> list[str] | None:
    """The argv a wrapper runs (`nohup X` → X), or None when the wrapper is the command itself."""
    if name == "command" and len(argv) > 1 and argv[1] in ("-v", "-V"):
        return None  # `command -v x` looks a program up
    rest = _skip_opts(argv[1:], _WRAPPER_OPTS_WITH_ARG[name])
    if name == "timeout" and rest:
        rest = rest[1:]  # the duration
    elif name in ("env", "sudo"):  # both take VAR=value before the program
        while rest and _ASSIGNMENT.match(rest[0]):
            rest = rest[1:]
    elif name == "flock" and rest:
        rest = rest[1:]  # the lock file
    elif name == "xargs" and not rest:
        rest = ["echo"]
    return rest or None  # e.g. bare `env`, `time`, `sudo -l`: the wrapper is the command


def _shell_text(sc: SimpleCommand, name: str, argv: list[str]) -> tuple[str, str] | None:
    """What a shell program runs: (text, source) for `bash -c TEXT` or `bash <<EOF`, else None."""
    opts = argv[1:]
    if name == "busybox" and opts and opts[0] in _SHELLS:
        opts = opts[1:]
    for k, a in enumerate(opts):
        if a.startswith("--"):
            continue
        if not a.startswith("-"):
            break
        if "c" in a[1:]:
            return (opts[k + 1] if k + 1 < len(opts) else ""), "shell -c"
    if any(not a.startswith("-") for a in opts):
        return None  # `bash script.sh`
    body = next((r.heredoc for r in sc.redirects if r.heredoc is not None), None)
    return (body, "heredoc") if body is not None else None


def _reentry(sc: SimpleCommand, name: str, argv: list[str]) -> tuple[str, str] | None:
    """Shell text that `su -c`, `eval`, `watch` or a shell runs, with its source; else None."""
    if name == "su" and "-c" in argv:
        k = argv.index("-c")
        return (argv[k + 1] if k + 1 < len(argv) else ""), "shell -c"
    if name == "eval":
        return " ".join(argv[1:]), "shell -c"
    if name == "watch":  # watch runs its arguments through `sh -c`
        rest = _skip_opts(argv[1:], _WATCH_OPTS)
        return (" ".join(rest), "shell -c") if rest else None
    if name in _SHELLS:
        return _shell_text(sc, name, argv)
    return None


def _unwrap(sc: SimpleCommand, depth: int) -> list[SimpleCommand]:
    argv = list(sc.words)
    while argv and _base(argv[0]) in _WRAPPER_OPTS_WITH_ARG:
        rest = _peel(_base(argv[0]), argv)
        if rest is None:
            break
        sc.wrappers.append(_base(argv[0]))
        argv = rest
    if argv:
        name = _base(argv[0])
        inner = _reentry(sc, name, argv)
        if inner is not None:
            return _nested(sc, inner[0], depth, inner[1], name)
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


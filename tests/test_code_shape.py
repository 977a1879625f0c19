"""Code shape rules that ruff does not check: no function in src/ longer than 60 lines (ruff's
C901 keeps their complexity at 15 or less; see pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"
MAX_LINES = 60


def long_functions(root: Path = SRC) -> list[tuple[str, str, int]]:
    """(file, function, lines) of every function (methods and nested ones too) over the limit;
    a function's lines run from its `def` to its last line, decorators not counted."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    out.append((str(path.relative_to(root)), node.name, lines))
    return out


def test_no_function_in_src_is_longer_than_60_lines():
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_LINES} lines (split them): {offenders}"


def test_the_check_measures_from_def_to_the_last_line(tmp_path):
    def lines(indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(59))

    (tmp_path / "m.py").write_text(f"@decorator\ndef ok():\n{lines('    ')}\n\nclass C:\n"
                                   f"    async def long(self):\n{lines(' ' * 8)}        return 1\n")
    assert long_functions(tmp_path) == [("m.py", "long", 61)]

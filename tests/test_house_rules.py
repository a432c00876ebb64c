"""House rules that a review would otherwise have to re-check by hand."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_BODY_LINES = 60
ONE_PIECE = "one piece:"  # a comment in a longer body that says why it must stay whole


def long_bodies(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of the functions in `path` whose body, counted from its first statement (the
    docstring too; not the signature), runs over MAX_BODY_LINES and carries no `# one piece: ...`
    reason."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.body[0].lineno + 1
        if length > MAX_BODY_LINES and not any(ONE_PIECE in line for line in lines[node.lineno - 1:node.end_lineno]):
            found.append((node.name, length))
    return found


def test_no_function_body_runs_over_a_screen():
    files = sorted((ROOT / "sendvae_cli").rglob("*.py")) + sorted((ROOT / "plugins").glob("*/*/*.py"))
    offenders = [f"{path.relative_to(ROOT)}: {name} ({length} lines)"
                 for path in files for name, length in long_bodies(path)]
    assert not offenders, (f"function bodies over {MAX_BODY_LINES} lines (split them into named steps, or say "
                           f"why they must stay whole in a '# {ONE_PIECE} ...' comment):\n" + "\n".join(offenders))


def test_the_rule_sees_a_long_body_and_its_reason(tmp_path):
    long = "\n".join(f"    x{i} = {i}" for i in range(MAX_BODY_LINES + 1))
    (tmp_path / "a.py").write_text(f'def f():\n    """Doc."""\n{long}\n')
    (tmp_path / "b.py").write_text(f"def g():\n    # {ONE_PIECE} the steps share one buffer\n{long}\n")
    assert long_bodies(tmp_path / "a.py") == [("f", MAX_BODY_LINES + 2)]  # the docstring counts
    assert long_bodies(tmp_path / "b.py") == []

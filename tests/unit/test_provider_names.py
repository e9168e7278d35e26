"""No module outside receiver/providers/ (and the emulators, which are the providers' stand-ins) names a
provider in a string: everything else asks the registry, so a third provider touches providers/ only.

A string counts when its text holds a provider's name in lower case (a literal, a URL, an f-string
part). Docstrings do not: they describe, they do not decide. Upper-case variable names such as
`APIFRAME_API_KEY` are the documented environment contract, not a provider name the code branches on.
"""

from __future__ import annotations

import ast
from pathlib import Path

from receiver.providers.registry import NAMES

ROOT = Path(__file__).resolve().parents[2]
OWNERS = (ROOT / "receiver" / "providers", ROOT / "receiver" / "emulators")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def provider_literals(source: str, filename: str) -> list[str]:
    """`file:line: 'text'` for each non-docstring string constant naming a provider."""
    tree = ast.parse(source, filename)
    docstrings = _docstrings(tree)
    return [
        f"{filename}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(name in node.value for name in NAMES)
    ]


def _modules() -> list[Path]:
    files = [*(ROOT / "receiver").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")]
    return sorted(f for f in files if not any(f.is_relative_to(owner) for owner in OWNERS))


def test_no_module_outside_providers_names_a_provider() -> None:
    hits = [
        hit
        for path in _modules()
        for hit in provider_literals(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert hits == [], "provider names outside receiver/providers/:\n" + "\n".join(hits)


def test_the_check_sees_literals_and_f_string_parts_but_not_docstrings() -> None:
    name = NAMES[0]
    source = (
        f'"""Talks to {name}."""\n'
        f"def f(p):\n"
        f'    """Only for {name}."""\n'
        f'    if p == "{name}":\n'
        f'        return f"https://api.{name}.ai/{{p}}"\n'
        f'    return "{name.upper()}_API_KEY"\n'
    )
    assert provider_literals(source, "m.py") == [
        f"m.py:4: '{name}'",
        f"m.py:5: 'https://api.{name}.ai/'",
    ]


def test_the_check_covers_the_modules_that_used_to_branch() -> None:
    names = {str(p.relative_to(ROOT)) for p in _modules()}
    assert {"receiver/service.py", "receiver/hooks.py", "receiver/config.py", "handlers/__init__.py"} <= names
    assert not any(n.startswith(("receiver/providers/", "receiver/emulators/")) for n in names)

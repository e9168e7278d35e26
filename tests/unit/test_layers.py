"""Routes call Receiver methods: no route module imports the worker or the store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROUTE_MODULES = ("receiver/hooks.py", "receiver/admin.py", "receiver/app.py", "receiver/ui/pages.py")
FORBIDDEN = ("receiver.worker", "receiver.store")


def imported(source: str) -> set[str]:
    """Every module an import statement names, `from a import b` counted as both `a` and `a.b`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize("module", ROUTE_MODULES)
def test_route_module_imports_neither_worker_nor_store(module: str) -> None:
    assert forbidden(imported((ROOT / module).read_text(encoding="utf-8"))) == []


def test_the_check_sees_every_import_form() -> None:
    source = (
        "import receiver.worker\nfrom receiver.store.base import HandlerRoute\nfrom receiver import store\n"
    )
    assert forbidden(imported(source)) == [
        "receiver.store",
        "receiver.store.base",
        "receiver.store.base.HandlerRoute",
        "receiver.worker",
    ]
    assert forbidden(imported("from receiver.service import Receiver\n")) == []

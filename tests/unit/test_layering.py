"""facts/ and plan/ are pure: they import nothing that does I/O (the style guide's rule)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gpuprov"
PURE = ("facts", "plan")
FORBIDDEN = ("gpuprov.transport", "gpuprov.lab", "gpuprov.stages", "gpuprov.inventory",
             "gpuprov.cli", "subprocess", "paramiko", "ansible", "ansible_runner", "socket")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(p for d in PURE for p in (PACKAGE / d).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_import_no_io_layer(path):
    bad = {n for n in _imports(path) for f in FORBIDDEN if n == f or n.startswith(f + ".")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_importing_the_pure_packages_loads_no_io_layer():
    # Also catches what they import indirectly, in a fresh interpreter.
    code = ("import sys, gpuprov.facts, gpuprov.plan; "
            f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
            f"or m.startswith({FORBIDDEN!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []

"""The layers import downwards only: minority_core ← tasks ← flows ← the CLI and deployments.

Read from the source (every import statement, including the ones inside functions), so a
lazy import that climbs back up a layer fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# what each layer must never import (top-level package names)
FORBIDDEN = {
    "minority_core": {"prefect", "ray", "flows", "tasks", "minority_synth", "deployments"},
    "tasks": {"flows", "minority_synth", "deployments"},
    "flows": {"minority_synth", "deployments"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in files
        for package, line in sorted(imported_packages(path))
        if package in FORBIDDEN[layer]
    ]
    assert not violations, "\n".join(violations)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from prefect import flow\n    import ray.util\n")
    assert {p for p, _ in imported_packages(sample)} == {"prefect", "ray"}

"""The README's Python examples run as written (a newcomer pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("position", range(len(python_blocks())))
def test_readme_python_example_runs(position, tmp_path, prefect_api, capsys):
    code = python_blocks()[position].replace("/tmp/minority-run", str(tmp_path / "run"))
    exec(compile(code, f"README.md python block {position}", "exec"), {"__name__": "readme"})
    if "synthesize(config)" in code:
        assert '"samples": 64' in capsys.readouterr().out.replace("'", '"')

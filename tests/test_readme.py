"""Every qinspect command shown in the README's ```sh blocks runs as written.

Commands run from the repository root (as the README assumes), in-process through
``qinspect.cli.main``; an example may demonstrate a failing check (exit 1) but never a
usage/input error or a crash.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = (".venv/bin/qinspect ", "qinspect ")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(PREFIXES):
                commands.append(line)
    return commands


def test_readme_has_examples():
    assert len(readme_commands()) >= 9


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(cli, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    result = cli(*argv)
    assert result.code in (0, 1), f"{command}\n{result.err}"
    assert "Traceback" not in result.err
    assert result.out.strip(), f"{command} printed nothing"

"""Every qinspect command the README shows on the bundled samples runs as written.

Commands run in-process through ``qinspect.cli.main``, in order, from a scratch folder
that links ``sample_checkpoints/`` (so ``--output report.json`` lands there and a later
``--baseline report.json`` reads it); an example may demonstrate a failing check (exit 1)
but never a usage/input error or a crash. CI recipes that name the reader's own files
(``models/model_int8.pt``) are templates and are not run.
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
            if line.startswith(PREFIXES) and "sample_checkpoints/" in line:
                commands.append(line)
    return commands


def test_readme_has_examples():
    assert len(readme_commands()) >= 15


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")
    return folder


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(cli, command, monkeypatch, scratch):
    monkeypatch.chdir(scratch)
    argv = shlex.split(command)[1:]
    result = cli(*argv)
    assert result.code in (0, 1), f"{command}\n{result.err}"
    assert "Traceback" not in result.err
    assert result.out.strip(), f"{command} printed nothing"

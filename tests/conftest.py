"""Shared test helpers: run the CLI in-process, find samples, build torch flows."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
if str(SAMPLES) not in sys.path:
    sys.path.insert(0, str(SAMPLES))


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``qinspect ARGS`` in-process; returns exit code, stdout, stderr."""
    from qinspect.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("QINSPECT_DEBUG", raising=False)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES

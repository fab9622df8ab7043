"""Shared test helpers: run the CLI in-process, find samples, build torch flows."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
SUPPORT = Path(__file__).resolve().parent / "support"
# tests/ mirrors the package (quant/, loaders/, analyse/, gate/, render/, cli/); what several
# folders share lives in tests/support/ (model builders, file writers, library truth) and the
# fixtures in its fixtures_*.py, registered below for every folder.
for _path in (SAMPLES, SUPPORT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

pytest_plugins = ["fixtures_formats", "fixtures_hf"]

# Before anything imports torch: pin its CPU kernels the way the sample checkpoints were
# made, so live flows in the tests reproduce the committed files on any x86-64 CPU.
import reproducible  # noqa: E402

reproducible.pin()

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs a fixed, reproducible set of examples (a red CI must be reproducible from its
# log); local runs explore new examples each time. QINSPECT_HYPOTHESIS=explore forces
# exploration anywhere.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
if os.environ.get("CI") and os.environ.get("QINSPECT_HYPOTHESIS") != "explore":
    settings.load_profile("ci")
else:
    settings.load_profile("explore")


def log_handlers_follow_capture() -> None:
    """torch and transformers bind a logging handler to the ``sys.stderr`` of the test
    that first imports them, and pytest closes that stream when the test ends; a library
    logging later (torchao's import warns through torch's logger) would print a logging
    error with a traceback. Called before each in-process command (the ``cli``
    fixture), this points such handlers at the test's captured stderr, as they write to
    the real stderr in a fresh process."""
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr     # not setStream: it flushes the closed one
                if "flush" in vars(handler):     # transformers pins flush to the old stream
                    handler.flush = sys.stderr.flush  # type: ignore[method-assign]


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
        log_handlers_follow_capture()
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

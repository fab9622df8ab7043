"""The CLI's one progress helper: off with --quiet or a non-terminal stderr."""

from __future__ import annotations

import io
import time

from rich.console import Console

from qinspect.cli import _console


def test_no_bar_when_quiet_or_not_a_tty(monkeypatch):
    monkeypatch.setattr(_console.sys.stderr, "isatty", lambda: True, raising=False)
    with _console.progress_bar("x", quiet=True) as progress:
        assert progress is None
    monkeypatch.setattr(_console.sys.stderr, "isatty", lambda: False, raising=False)
    with _console.progress_bar("x", quiet=False) as progress:
        assert progress is None


def test_bar_after_delay_with_and_without_callbacks(monkeypatch):
    monkeypatch.setattr(_console, "progress_enabled", lambda quiet: not quiet)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with _console.progress_bar("diff", quiet=False, delay=0.0, console=console) as progress:
        assert progress is not None
        progress("layers.0", 0, 2)
        progress("layers.1", 1, 2)
    assert "diff" in out.getvalue()
    out2 = io.StringIO()
    console2 = Console(file=out2, force_terminal=True, width=80)
    with _console.progress_bar("check", quiet=False, delay=0.05, console=console2):
        time.sleep(0.3)  # no callbacks: the timer starts an elapsed-time bar
    assert "check" in out2.getvalue()
    out3 = io.StringIO()
    with _console.progress_bar("show", quiet=False, delay=5.0,
                               console=Console(file=out3, force_terminal=True)) as progress:
        progress("fast", 1, 1)  # finished before the delay: nothing drawn
    assert out3.getvalue() == ""

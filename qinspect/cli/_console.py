"""Consoles for the CLI: stdout for reports, stderr for progress and diagnostics."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

ProgressFn = Callable[[str, float, float], None]


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")


def progress_enabled(quiet: bool) -> bool:
    """Progress bars go to stderr, only when it is a terminal and ``--quiet`` is not set."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool, delay: float = 1.0,
                 console: Console | None = None) -> Iterator[ProgressFn | None]:
    """A ``progress(what, done, total)`` callback for the library, drawing a transient bar
    on stderr once the work has lasted ``delay`` seconds (``None`` when disabled).

    Work that never calls back still gets a bar with the elapsed time after ``delay``
    (started from a timer thread), so any command can wrap its slow part in this."""
    if not progress_enabled(quiet):
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from qinspect.render.text import safe

    bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), console=console or Console(file=sys.stderr),
                   transient=True)
    lock = threading.Lock()
    state: dict[str, Any] = {"task": None, "closed": False}
    start = time.monotonic()

    def begin(what: str, total: float | None) -> None:  # holding the lock
        if state["task"] is None and not state["closed"]:
            bar.start()
            state["task"] = bar.add_task(safe(what)[:40], total=total)

    def update(what: str, done: float, total: float) -> None:
        with lock:
            if state["task"] is None:
                if time.monotonic() - start < delay:
                    return
                begin(what, total)
            if state["task"] is not None:
                bar.update(state["task"], completed=done, total=total,
                           description=safe(what)[:40])

    def on_timer() -> None:
        with lock:
            begin("", None)

    timer = threading.Timer(delay, on_timer)
    timer.daemon = True
    timer.start()
    try:
        yield update
    finally:
        timer.cancel()
        with lock:
            state["closed"] = True
            if state["task"] is not None:
                bar.stop()

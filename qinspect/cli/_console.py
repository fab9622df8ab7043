"""Consoles for the CLI: stdout for reports, stderr for progress and diagnostics."""

from __future__ import annotations

import sys

from rich.console import Console


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")

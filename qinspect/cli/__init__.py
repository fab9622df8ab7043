"""Command line: typer lives only here. Each command parses, calls the library, renders.

Exit codes: 0 success, 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING

import typer
from typer.core import TyperArgument, TyperCommand

if TYPE_CHECKING:
    # The click Context that typer (>= 0.29, which vendors click) types Command's methods
    # with; typer.Context is a subclass, too narrow for an override.
    from typer._click.core import Context as ClickContext

from qinspect.cli import check as _check
from qinspect.cli import diff as _diff
from qinspect.cli import show as _show
from qinspect.cli import verify as _verify
from qinspect.errors import QInspectError

app = typer.Typer(
    name="qinspect",
    help="Explain, compare and gate quantized PyTorch checkpoints, from the file alone.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _Command(TyperCommand):
    """Usage lines as users expect them, ``qinspect diff [OPTIONS] A B`` and
    ``qinspect check [OPTIONS] CKPT...`` (typer writes ``{A} {B}`` and ``{CKPT}...``)."""

    def collect_usage_pieces(self, ctx: ClickContext) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "ARG").upper()
                many = param.nargs != 1 and not name.endswith("...")
                pieces.append(name + ("..." if many else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


app.command("show", cls=_Command, no_args_is_help=True)(_show.show)
app.command("check", cls=_Command, no_args_is_help=True)(_check.check)
app.command("diff", cls=_Command, no_args_is_help=True)(_diff.diff)
app.command("verify", cls=_Command, no_args_is_help=True)(_verify.verify)


def _version(value: bool) -> None:
    if value:
        from qinspect import __version__

        print(f"qinspect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Explain, compare and gate quantized PyTorch checkpoints, from the file alone.

    Exit codes: 0 success, 1 a check failed, 2 usage or input error.
    QINSPECT_DEBUG=1 shows tracebacks.
    """


def _debug() -> bool:
    return os.environ.get("QINSPECT_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and exit 2 for user errors; traces on request."""
    # NaN/Inf qparams in a file make numpy warn inside qinspect's arithmetic; the reports
    # already say what is wrong, so the warnings would only add noise on stderr
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"qinspect(\.|$)")
    try:
        app(args=argv, prog_name="qinspect")
    except QInspectError as exc:
        if _debug():
            raise
        print(f"qinspect: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("qinspect: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the last line of defence for users
        if _debug():
            raise
        line = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"qinspect: error: internal error ({type(exc).__name__}: {line}); "
              "rerun with QINSPECT_DEBUG=1 for a traceback and please report it",
              file=sys.stderr)
        sys.exit(2)

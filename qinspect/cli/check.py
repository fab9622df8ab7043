"""`qinspect check CKPT`: run the rules, exit 0 (passed), 1 (a rule failed), 2 (bad input)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qinspect.cli._console import print_json, progress_bar, stdout_console

OptPath = Optional[Path]  # noqa: UP045 - typer needs Optional


class Format(str, Enum):
    human = "human"
    json = "json"
    junit = "junit"
    github = "github"
    markdown = "markdown"


def check(
    paths: Annotated[list[Path], typer.Argument(
        metavar="CKPT_OR_DIR...", help="Checkpoint(s) to gate; a folder is searched for "
        "checkpoint files of every supported format.")],
    reference: Annotated[OptPath, typer.Option(
        help="Float checkpoint: enables the weight-SQNR rules (QI2xx); one file only.")] = None,
    input: Annotated[OptPath, typer.Option(
        help="Sample input (.npy): enables the output SQNR/clipping rules (QI3xx); one "
        "file only.")] = None,
    baseline: Annotated[OptPath, typer.Option(
        help="JSON report of an earlier run: fail on regressions (QI4xx); one file only.")
    ] = None,
    config: Annotated[OptPath, typer.Option(
        help="Config file (default: ./qinspect.toml, else [tool.qinspect.check] in "
             "./pyproject.toml).")] = None,
    settings: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--set", metavar="KEY=VALUE", help="Override one config key, e.g. --set "
        "min_range_used=0.5 (repeatable).")] = None,
    fmt: Annotated[Format, typer.Option(
        "--format", help="Report format (markdown: for $GITHUB_STEP_SUMMARY).")] = Format.human,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Same as --format json (schema qinspect.check/1; several files: "
        "qinspect.check-files/1), like every command.")] = False,
    output: Annotated[OptPath, typer.Option(
        help="Write the report here (atomically); the human summary still goes to stdout.")
    ] = None,
    html: Annotated[OptPath, typer.Option(
        "--html", metavar="FILE", help="Also write a self-contained HTML page with charts "
        "(atomically; it opens offline, loads nothing; one checkpoint).")] = None,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, help="Check this many files in parallel processes.")] = 1,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress bar (there is none when stderr is not a terminal).")
    ] = False,
) -> None:
    """Gate quantized checkpoints on their calibrated values (exit 0 pass, 1 fail, 2 error)."""
    from qinspect.errors import InputError
    from qinspect.gate.engine import check as run
    from qinspect.gate.engine import resolve_config
    from qinspect.gate.files import check_files, is_model_folder
    from qinspect.render.atomic import write_atomic
    from qinspect.render.check import render_check, render_run, render_run_text, render_text

    if as_json:
        if fmt not in (Format.human, Format.json):
            raise InputError(f"--json and --format {fmt.value} ask for two formats; "
                             "pass one of them")
        fmt = Format.json
    inputs = [p for p in (*paths, reference, input) if p is not None and not p.is_dir()]
    if len(paths) == 1 and (not paths[0].is_dir() or is_model_folder(paths[0])):
        with progress_bar("check", quiet):
            result = run(paths[0], reference=reference, input=input, baseline=baseline,
                         config=config if config is not None else "auto", settings=settings)
        if html is not None:
            from qinspect.render.html_check import write_check_html
            write_check_html(html, [result], inputs=[*paths, reference, input, baseline])
        if output is not None:
            write_atomic(output, render_text(result, fmt.value), inputs=inputs)
        if output is not None or fmt is Format.human:
            stdout_console().print(render_check(result))
        else:
            print_json(render_text(result, fmt.value))
        raise typer.Exit(result.exit_code)
    if (reference, input, baseline, html) != (None, None, None, None):
        raise InputError("--reference, --input, --baseline and --html describe one "
                         "checkpoint; run once per file to use them")
    cfg = resolve_config(config if config is not None else "auto", settings)
    with progress_bar("check", quiet):
        outcome = check_files(paths, cfg, jobs=jobs)
    if output is not None:
        write_atomic(output, render_run_text(outcome, fmt.value), inputs=inputs)
    if output is not None or fmt is Format.human:
        stdout_console().print(render_run(outcome))
    else:
        print_json(render_run_text(outcome, fmt.value).rstrip("\n"))
    raise typer.Exit(outcome.exit_code)

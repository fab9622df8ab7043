"""The command lines whose human output is kept as golden files, and how to run them.

Every case runs in-process from the repository root with relative sample paths (so the
text does not depend on where the checkout lives), with ``COLUMNS`` set and no colour
(stdout is captured, not a terminal), as Polygraphy's ``inspect model`` tests do.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = Path(__file__).resolve().parent / "expected"
S = "sample_checkpoints"
WIDTHS = (80, 160)
UPDATE_ENV = "QINSPECT_UPDATE_GOLDEN"

SHOW_SAMPLES = sorted(p.name for p in (ROOT / S).iterdir() if p.suffix in (".pt", ".pt2"))
HF_SAMPLES = sorted(p.name for p in (ROOT / S / "hf").iterdir()
                    if (p / "config.json").is_file()) if (ROOT / S / "hf").is_dir() else []


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]


def _cases() -> list[Case]:
    cases = [Case(f"show-{name}", ("show", f"{S}/{name}")) for name in SHOW_SAMPLES]
    cases += [Case(f"show-hf-{name}", ("show", f"{S}/hf/{name}")) for name in HF_SAMPLES]
    cases += [Case(f"show-explain-{name}", ("show", f"{S}/{name}", "--explain"))
              for name in ("mlp_int8_fbgemm.pt", "pt2e_mlp_xnnpack.pt2", "lstm_dynamic_int8.pt",
                           "embbag_4bit.pt", "torchao_int4wo_cpu.pt")]
    pairs = [("mlp_fp32.pt", "mlp_int8_fbgemm.pt"), ("mlp_fp32.pt", "mlp_int8_qnnpack.pt"),
             ("mlp_int8_fbgemm.pt", "mlp_int8_qnnpack.pt"),
             ("mlp_qat_frozen_prepared.pt", "mlp_qat_frozen_int8.pt"),
             ("mlp_qat_prepared.pt", "mlp_int8_fbgemm.pt"),
             ("mlp_fused_fp32.pt", "mlp_fused_int8.pt"), ("convnet_fp32.pt", "convnet_int8.pt"),
             ("lstm_fp32.pt", "lstm_dynamic_int8.pt"), ("dynlinear_fp32.pt", "dynlinear_int8.pt"),
             ("dynlinear_fp32.pt", "dynlinear_fp16.pt"), ("embbag_fp32.pt", "embbag_4bit.pt"),
             ("format_net_fp32.pt", "pt2e_mlp_x86.pt2"),
             ("mlp_fp32.pt", "torchao_int8wo.pt")]
    cases += [Case(f"diff-{a}-{b}", ("diff", f"{S}/{a}", f"{S}/{b}")) for a, b in pairs]
    # convnet under qnnpack: under x86 its fc saturates int16 pairs on a CPU without
    # AVX512-VNNI (fbgemm's vpmaddubsw) and not on one with it, so its numbers (rightly)
    # depend on the machine; qnnpack's arithmetic is the same on every x86-64 CPU
    runs = [("mlp_int8_fbgemm.pt", "sample.npy", ()),
            ("convnet_int8.pt", "conv_sample.npy", ("--engine", "qnnpack")),
            ("lstm_dynamic_int8.pt", "lstm_sample.npy", ()), ("dynlinear_int8.pt", None, ()),
            ("pt2e_mlp_x86.pt2", "format_net_input.npy", ())]
    for ckpt, sample, options in runs:
        extra = ("--input", f"{S}/{sample}") if sample else ()
        cases.append(Case(f"verify-{ckpt}", ("verify", f"{S}/{ckpt}", *extra, *options)))
    cases += [
        Case("check-mlp_int8_fbgemm.pt", ("check", f"{S}/mlp_int8_fbgemm.pt")),
        Case("check-reference-input-mlp_int8_fbgemm.pt",
             ("check", f"{S}/mlp_int8_fbgemm.pt", "--reference", f"{S}/mlp_fp32.pt",
              "--input", f"{S}/sample.npy")),
        Case("check-mlp_qat_prepared.pt", ("check", f"{S}/mlp_qat_prepared.pt")),
        Case("check-embbag_4bit.pt", ("check", f"{S}/embbag_4bit.pt")),
        Case("check-failing-mlp_int8_fbgemm.pt",  # thresholds the sample misses: findings
             ("check", f"{S}/mlp_int8_fbgemm.pt", "--reference", f"{S}/mlp_fp32.pt",
              "--input", f"{S}/sample.npy", "--set", "min_weight_sqnr_db=45",
              "--set", "min_output_sqnr_db=45", "--set", "max_clipping_fraction=0.001")),
    ]
    return cases


CASES = _cases()
_CACHE: dict[tuple[str, int], tuple[int, str]] = {}


def run(case: Case, width: int) -> tuple[int, str]:
    """Exit code and stdout of ``qinspect ARGV`` at ``width`` columns (cached per run)."""
    key = (case.id, width)
    if key not in _CACHE:
        _CACHE[key] = _run(case.argv, width)
    return _CACHE[key]


def _run(argv: tuple[str, ...], width: int) -> tuple[int, str]:
    from qinspect.cli import main

    names = ("COLUMNS", "LINES", "QINSPECT_DEBUG", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(COLUMNS=str(width), LINES="50", NO_COLOR="1")
    for k in ("QINSPECT_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE"):
        os.environ.pop(k, None)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (exc.code is not None) * 2
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue()


def scan_cases() -> list[Case]:
    """The golden cases, and every command on every sample they leave out (``verify`` and
    ``check`` alone, ``show --explain``): what the 80-column scans read."""
    samples = [f"{S}/{n}" for n in SHOW_SAMPLES] + [f"{S}/hf/{n}" for n in HF_SAMPLES]
    extra = [argv for path in samples for argv in
             (("show", path, "--explain"), ("verify", path), ("check", path))]
    seen = {c.argv for c in CASES}
    return CASES + [Case(f"{argv[0]}-{' '.join(argv[1:]).removeprefix(S + '/')}", argv)
                    for argv in extra if argv not in seen]


_RENDERED: dict[tuple[str, ...], list[object]] = {}


def rendered(case: Case, width: int) -> str:
    """``qinspect ARGV``'s human output laid out at ``width`` columns, without colour.

    The command runs once (it can be slow); what it printed (rich renderables) is kept
    and laid out again at each width, exactly as its console would at that width."""
    if case.argv not in _RENDERED:
        _RENDERED[case.argv] = _recorded(case.argv)
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False, soft_wrap=False,
                      color_system=None, force_terminal=False)
    for renderable in _RENDERED[case.argv]:
        console.print(renderable)
    return out.getvalue()


def _recorded(argv: tuple[str, ...]) -> list[object]:
    import qinspect.cli.check
    import qinspect.cli.diff
    import qinspect.cli.show
    import qinspect.cli.verify
    from qinspect.cli._console import stdout_console

    printed: list[object] = []

    class Recorder(Console):
        def print(self, *objects: object, **_: object) -> None:
            printed.extend(objects)

    modules = (qinspect.cli.check, qinspect.cli.diff, qinspect.cli.show, qinspect.cli.verify)
    assert all(m.stdout_console is stdout_console for m in modules)
    try:
        for m in modules:
            m.stdout_console = lambda: Recorder(file=io.StringIO())  # type: ignore[attr-defined]
        _run(argv, 80)
    finally:
        for m in modules:
            m.stdout_console = stdout_console  # type: ignore[attr-defined]
    return printed


VOLATILE = [
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s) elapsed\b"), "<time> elapsed"),
    # facts about the machine, not the file: whether its kernels saturate int16 pairs (a
    # legend paragraph of verify) and which library runs a symmetric x86 convolution
    # (oneDNN with AVX512-VNNI, else fbgemm: the same width in the kernel cell)
    (re.compile(r"On\s+this\s+CPU\s+torch's\s+kernels\s+add\s+byte-product\s+pairs.*?"
                r"reference\s+does\s+the\s+same\.\n", re.S), ""),
    (re.compile(r"\(onednn\)"), "(fbgemm)"),
]


def normalise(text: str) -> str:
    """Trailing spaces dropped; volatile parts (timings) replaced by placeholders.

    Paths need nothing: cases run from the repository root with relative paths."""
    lines = [line.rstrip() for line in text.splitlines()]
    out = "\n".join(lines).rstrip("\n") + "\n"
    for pattern, placeholder in VOLATILE:
        out = pattern.sub(placeholder, out)
    return out


def expected_path(case: Case, width: int) -> Path:
    return EXPECTED / f"{case.id}.{width}.txt"

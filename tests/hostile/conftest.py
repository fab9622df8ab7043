"""Fixtures of the hostile-file suite: worker pool, commands to try, seed checkpoints,
and the summary line printed at the end of every run that used the suite.

Every qinspect command that reads a checkpoint must survive every hostile file. The
commands are listed once, in :data:`TEMPLATES`; a registered command without a template
fails ``test_every_command_has_a_template``, so a new command joins the suite the day it
is added.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import runner  # noqa: E402

ROOT = HERE.parents[1]
SAMPLES = ROOT / "sample_checkpoints"
#: the fuzzers' seed: fixed by default so CI is reproducible; set it to explore
SEED = int(os.environ.get("QINSPECT_FUZZ_SEED", "20250608"))
runner.TALLY.seed = SEED

#: how each command is run on a hostile file F (REF: a benign float checkpoint). Exit 1
#: is a legitimate answer of ``check`` (a rule failed on the file's numbers).
TEMPLATES: dict[str, tuple[tuple[Sequence[str], ...], tuple[int, ...]]] = {
    "show": ((("show", "F"), ("show", "F", "--json"), ("show", "F", "--explain")), (0, 2)),
    "diff": ((("diff", "REF", "F"), ("diff", "F", "F", "--json")), (0, 2)),
    "check": ((("check", "F"), ("check", "F", "--format", "json", "--reference", "REF")),
              (0, 1, 2)),
}


def registered_commands() -> list[str]:
    from qinspect.cli import app

    return sorted(c.name for c in app.registered_commands if c.name)


def variants(path: Path | str, ref: Path | str) -> list[tuple[list[str], tuple[int, ...]]]:
    """Every (argv, allowed exit codes) to try on ``path``, for the commands that exist."""
    out = []
    for name in registered_commands():
        templates, codes = TEMPLATES.get(name, ((), ()))
        for template in templates:
            argv = [str(path) if a == "F" else str(ref) if a == "REF" else a for a in template]
            out.append((argv, codes))
    return out


@dataclass(frozen=True)
class Case:
    """One hostile file and what its output must contain (besides the contract)."""

    name: str
    path: Path
    needles: tuple[str, ...] = ()
    markers: tuple[Path, ...] = ()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with the sha256 of its bytes."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Hostile:
    """Runs cases through the pool and checks every outcome and side effect."""

    def __init__(self, pool: runner.Pool, cwd: Path, ref: Path) -> None:
        self.pool = pool
        self.cwd = cwd
        self.ref = ref

    def check(self, kind: str, cases: Iterable[Case], every_variant: bool = True,
              directory: Path | None = None) -> None:
        cases = list(cases)
        assert cases, "no hostile cases generated"
        before = snapshot(directory) if directory is not None else None
        jobs, codes = [], []
        rng = random.Random(f"{SEED}:{kind}")
        for case in cases:
            options = variants(case.path, self.ref)
            chosen = options if every_variant else [rng.choice(options)]
            for argv, allowed in chosen:
                jobs.append((case.name, argv, case.needles))
                codes.append((case, allowed))
        outcomes = self.pool.run_many(jobs)
        failures = []
        for outcome, (case, allowed) in zip(outcomes, codes, strict=True):
            problems = runner.judge(outcome, allowed)
            ran = [m for m in case.markers if m.exists()]
            if ran:
                problems.append(f"CODE FROM THE FILE RAN: {ran[0]} exists")
                runner.TALLY.executed += 1
            runner.TALLY.record(kind, outcome, problems)
            if problems:
                failures.append((outcome, problems))
        stray = sorted(os.listdir(self.cwd))
        assert not stray, f"qinspect wrote into its working directory: {stray[:5]}"
        if before is not None:
            after = snapshot(directory)
            changed = [k for k in after if before.get(k) != after[k]]
            assert not changed and set(after) == set(before), (
                f"files changed or appeared beside the inputs: "
                f"{sorted(set(after) ^ set(before))[:5] or changed[:5]}")
        assert not failures, runner.report(failures)


@pytest.fixture(scope="session")
def hostile_cwd(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-cwd")


@pytest.fixture(scope="session")
def pool(hostile_cwd):
    workers = runner.Pool(hostile_cwd)
    yield workers
    workers.close()


@pytest.fixture(scope="session")
def ref_checkpoint() -> Path:
    """A benign float checkpoint for the commands that compare two files."""
    path = SAMPLES / "mlp_fp32.pt"
    if not path.exists():  # pragma: no cover - samples are committed
        pytest.skip("sample_checkpoints/mlp_fp32.pt is missing")
    return path


@pytest.fixture(scope="session")
def hostile(pool, hostile_cwd, ref_checkpoint) -> Hostile:
    return Hostile(pool, hostile_cwd, ref_checkpoint)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if runner.TALLY.runs:
        terminalreporter.write_sep("-", "hostile-file suite")
        terminalreporter.write_line(runner.TALLY.line())

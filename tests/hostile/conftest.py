"""Fixtures of the hostile-file suite: worker pool, commands to try, seed checkpoints,
and the summary line printed at the end of every run that used the suite.

Every qinspect command that reads a checkpoint must survive every hostile file. The
commands are listed once, in :data:`TEMPLATES`; a registered command without a template
fails ``test_every_command_has_a_template``, so a new command joins the suite the day it
is added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
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
QREF = SAMPLES / "mlp_int8_fbgemm.pt"
#: the fuzzers' seed: fixed by default so CI is reproducible; set it to explore
SEED = int(os.environ.get("QINSPECT_FUZZ_SEED", "20250608"))
runner.TALLY.seed = SEED

#: how each command is run on a hostile file F (REF: a benign float checkpoint, QREF: its
#: benign quantized counterpart, for options that take F as a second input). Exit 1 is a
#: legitimate answer of ``check`` and ``verify`` (a rule or a comparison failed).
TEMPLATES: dict[str, tuple[tuple[Sequence[str], ...], tuple[int, ...]]] = {
    "show": ((("show", "F"), ("show", "F", "--json"), ("show", "F", "--explain")), (0, 2)),
    "diff": ((("diff", "REF", "F"), ("diff", "F", "F", "--json")), (0, 2)),
    "check": ((("check", "F"), ("check", "F", "--format", "json", "--reference", "REF")),
              (0, 1, 2)),
    "verify": ((("verify", "F", "--quiet"),
                ("verify", "F", "--json", "--quiet", "--reference", "REF"),
                ("verify", "QREF", "--quiet", "--input", "F")), (0, 1, 2)),
}


@dataclass(frozen=True)
class Gap:
    """A known way runs break the contract because of code outside the loaders, with the
    file that has to change. A problem matching a gap does not fail the main tests; it is
    counted; a gap whose suite ran but that no longer shows up fails the session (see
    :func:`pytest_sessionfinish`), so its entry must be deleted the day it is fixed."""

    owner: str
    reason: str
    problem: str  # regex on the problem text
    suite: str  # the suite (TALLY kind) whose files reproduce it
    command: str | None = None
    flags: tuple[str, ...] = ()  # all present in argv
    cases: tuple[str, ...] = ()  # case-name substrings; () = any case

    def matches(self, case: str, argv: Sequence[str], problem: str) -> bool:
        return ((self.command is None or argv[0] == self.command)
                and all(f in argv for f in self.flags)
                and (not self.cases or any(c in case for c in self.cases))
                and re.search(self.problem, problem) is not None)


GAPS: tuple[Gap, ...] = ()  # all gaps found so far are closed; add new ones here


def excuse(case: str, argv: Sequence[str], problems: list[str], hits: dict[int, int]
           ) -> list[str]:
    """The problems no known gap explains (code execution is never excused); counts the
    excused ones per gap in ``hits``."""
    real = []
    for problem in problems:
        hit = next((i for i, g in enumerate(GAPS) if g.matches(case, argv, problem)), None)
        if hit is None or problem.startswith("CODE FROM THE FILE RAN"):
            real.append(problem)
        else:
            hits[hit] = hits.get(hit, 0) + 1
    return real


def registered_commands() -> list[str]:
    from qinspect.cli import app

    return sorted(c.name for c in app.registered_commands if c.name)


def variants(path: Path | str, ref: Path | str) -> list[tuple[list[str], tuple[int, ...]]]:
    """Every (argv, allowed exit codes) to try on ``path``, for the commands that exist."""
    out = []
    for name in registered_commands():
        templates, codes = TEMPLATES.get(name, ((), ()))
        for template in templates:
            names = {"F": str(path), "REF": str(ref), "QREF": str(QREF)}
            argv = [names.get(a, a) for a in template]
            out.append((argv, codes))
    return out


@dataclass(frozen=True)
class Case:
    """One hostile file and what its output must contain (besides the contract)."""

    name: str
    path: Path
    needles: tuple[str, ...] = ()
    markers: tuple[Path, ...] = ()
    #: "all" command variants, one variant of each command ("per-command", rotating
    #: through the variants from case to case), or "one" variant chosen at random
    variants: str = "all"


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with the sha256 of its bytes."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Result:
    """Runs that broke the contract, and problems excused by a known gap (by index)."""

    failures: list[tuple[runner.Outcome, list[str]]]
    gap_hits: dict[int, int]


class Hostile:
    """Runs cases through the pool and checks every outcome and side effect."""

    def __init__(self, pool: runner.Pool, cwd: Path, ref: Path) -> None:
        self.pool = pool
        self.cwd = cwd
        self.ref = ref

    def run(self, kind: str, cases: Iterable[Case], directory: Path | None = None
            ) -> Result:
        """Run ``cases`` (each under the command variants it asks for); assert no side
        effects and unchanged inputs; return what broke."""
        cases = list(cases)
        assert cases, "no hostile cases generated"
        before = snapshot(directory) if directory is not None else None
        jobs, codes = [], []
        rng = random.Random(f"{SEED}:{kind}")
        for index, case in enumerate(cases):
            options = variants(case.path, self.ref)
            if case.variants == "one":
                chosen = [rng.choice(options)]
            elif case.variants == "per-command":
                by_command: dict[str, list] = {}
                for option in options:
                    by_command.setdefault(option[0][0], []).append(option)
                chosen = [group[index % len(group)] for group in by_command.values()]
            else:
                chosen = options
            for argv, allowed in chosen:
                human_show = argv[0] == "show" and "--json" not in argv
                jobs.append((case.name, argv, case.needles if human_show else ()))
                codes.append((case, allowed))
        outcomes = self.pool.run_many(jobs)
        result = Result([], {})
        for outcome, (case, allowed) in zip(outcomes, codes, strict=True):
            problems = runner.judge(outcome, allowed)
            ran = [m for m in case.markers if m.exists()]
            if ran:
                problems.append(f"CODE FROM THE FILE RAN: {ran[0]} exists")
                runner.TALLY.executed += 1
            real = excuse(case.name, outcome.argv, problems, result.gap_hits)
            for index, count in result.gap_hits.items():
                runner.TALLY.gap_hits[index] = max(runner.TALLY.gap_hits.get(index, 0), count)
            runner.TALLY.record(kind, str(case.path), outcome, real,
                                gap=len(real) < len(problems))
            if real:
                result.failures.append((outcome, real))
        stray = sorted(os.listdir(self.cwd))
        assert not stray, f"qinspect wrote into its working directory: {stray[:5]}"
        if before is not None:
            after = snapshot(directory)
            changed = [k for k in after if before.get(k) != after[k]]
            assert not changed and set(after) == set(before), (
                f"files changed or appeared beside the inputs: "
                f"{sorted(set(after) ^ set(before))[:5] or changed[:5]}")
        dump = os.environ.get("QINSPECT_HOSTILE_REPORT")
        if dump and result.failures:  # every failure, one JSON line each, to investigate
            with open(dump, "a") as fh:
                for outcome, problems in result.failures:
                    fh.write(json.dumps({"kind": kind, "problems": problems,
                                         **dataclasses.asdict(outcome)}) + "\n")
        return result

    def check(self, kind: str, cases: Iterable[Case], directory: Path | None = None
              ) -> Result:
        """:meth:`run`, then fail on any run that broke the contract."""
        result = self.run(kind, cases, directory)
        assert not result.failures, runner.report(result.failures)
        return result


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


def closed_gaps(gaps: Sequence[Gap], tally: runner.Tally) -> list[Gap]:
    """The known gaps whose suite ran in this session without reproducing them once (a gap
    whose suite did not run, as in a ``-k`` subset, is not judged)."""
    return [g for i, g in enumerate(gaps) if g.suite in tally.by_kind
            and not tally.gap_hits.get(i)]


def pytest_sessionfinish(session, exitstatus):
    """Once every test has run, whatever their order: a closed gap fails the session."""
    if closed_gaps(GAPS, runner.TALLY) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if runner.TALLY.runs:
        terminalreporter.write_sep("-", "hostile-file suite")
        terminalreporter.write_line(runner.TALLY.line())
    for gap in closed_gaps(GAPS, runner.TALLY):
        terminalreporter.write_line(f"FAILED: known gap closed, delete it from "
                                    f"tests/hostile/conftest.py GAPS: {gap.owner}: {gap.reason}",
                                    red=True)

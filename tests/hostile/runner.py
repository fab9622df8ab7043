"""Run qinspect on hostile files outside the pytest process, and judge each outcome.

* :class:`Pool` keeps a few ``_worker.py`` processes alive and sends them jobs (one file
  and one command each); a worker that dies or stops answering is reported as a crash or
  a hang *for that job* and replaced, so a segfault never takes pytest down with it.
* :func:`run_fresh` runs ``python -m qinspect`` in a new process under ``RLIMIT_AS``,
  measuring its own peak RSS with ``wait4`` from a small launcher (a fork of the big
  pytest process would carry pytest's peak RSS into ``ru_maxrss``).
* :func:`judge` turns an outcome into a list of problems: the contract is exit 0 (or 1 for
  a failed ``check``) or exit 2 with exactly one ``qinspect: error:`` line, no traceback,
  no unescaped control characters, within the time and memory bounds.
* :data:`TALLY` counts what was tried, for the summary line printed by ``conftest.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: a job slower than this fails the time bound; one silent for HANG_SECONDS is killed
TIME_BOUND_SECONDS = float(os.environ.get("QINSPECT_HOSTILE_TIME_BOUND", "10"))
HANG_SECONDS = 60.0
#: growth of peak RSS allowed for one job (hostile files are a few KiB to a few MiB)
MEMORY_BOUND_KB = 256 * 1024
#: address space a worker may add after start-up before allocations fail
AS_HEADROOM = 3 * 2**30
WORKERS = max(1, min(2, os.cpu_count() or 1))
PY_WARNING = re.compile(r"\.py:\d+: \w*Warning: ")
MEMORY_WORDS = ("can't allocate memory", "MemoryError", "out of memory", "ran out of memory")


@dataclass
class Outcome:
    """What one command did on one file."""

    name: str
    argv: list[str]
    code: int | None = None
    err: str = ""
    out_head: str = ""
    out_len: int = 0
    bad_chars: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    traceback: bool = False
    seconds: float = 0.0
    peak_kb: int = 0
    escaped: str | None = None
    crashed: str | None = None
    hung: bool = False
    origin: str | None = None  # qinspect file:line that raised an internal error

    def describe(self) -> str:
        return f"{self.name}: qinspect {' '.join(self.argv)}"


@dataclass
class Tally:
    files: set[str] = field(default_factory=set)
    runs: int = 0
    by_kind: dict[str, set[str]] = field(default_factory=dict)
    executed: int = 0
    hung: int = 0
    crashed: int = 0
    problems: int = 0
    gap_runs: int = 0
    gap_hits: dict[int, int] = field(default_factory=dict)  # conftest.GAPS index -> runs
    fresh: int = 0
    seed: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, path: str, outcome: Outcome, problems: list[str],
               gap: bool = False) -> None:
        with self.lock:
            self.files.add(path)
            self.by_kind.setdefault(kind, set()).add(path)
            self.runs += 1
            self.hung += outcome.hung
            self.crashed += bool(outcome.crashed or outcome.escaped or outcome.traceback)
            self.gap_runs += gap
            self.problems += bool(problems)

    def line(self) -> str:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(self.by_kind.items()))
        seed = f"; seed {self.seed} (QINSPECT_FUZZ_SEED)" if self.seed is not None else ""
        verdict = ("none executed code, hung or crashed" if not (self.executed or self.hung
                                                                 or self.crashed)
                   else f"{self.executed} executed code, {self.hung} hung, "
                        f"{self.crashed} crashed")
        gaps = (f" (besides {self.gap_runs} runs excused by known gaps outside the "
                "loaders: conftest.GAPS)" if self.gap_runs else "")
        return (f"hostile files: {len(self.files)} tried ({kinds}) in {self.runs} runs "
                f"(+{self.fresh} in fresh processes); {verdict}; {self.problems} broke the "
                f"exit-code/one-line contract{gaps}{seed}")


TALLY = Tally()


# --- workers -----------------------------------------------------------------------------


class Worker:
    """One ``_worker.py`` process; :meth:`run` never raises for what the job does."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._mmap = itertools.cycle((True, False))  # both read paths, in turn
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, COLUMNS="200", PYTHONHASHSEED="0")
        env.pop("QINSPECT_DEBUG", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_worker.py"), str(AS_HEADROOM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=self.cwd, env=env, text=True, bufsize=1)
        ready = self._read_line(120.0)
        if ready is None or "ready" not in json.loads(ready):
            raise RuntimeError("hostile worker did not start")

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line or None

    def run(self, name: str, argv: Sequence[str], needles: Sequence[str] = ()) -> Outcome:
        outcome = Outcome(name, list(argv))
        assert self.proc is not None and self.proc.stdin is not None
        job = {"id": name, "argv": list(argv), "needles": list(needles),
               "mmap": next(self._mmap)}
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(HANG_SECONDS)
        if line is None:
            outcome.hung = self.proc.poll() is None
            if outcome.hung:
                self.proc.kill()
            status = self.proc.wait()
            if not outcome.hung:
                outcome.crashed = _status_text(status)
            self._start()
            return outcome
        data = json.loads(line)
        for key in ("code", "err", "out_head", "out_len", "bad_chars", "missing",
                    "traceback", "seconds", "peak_kb", "escaped", "origin"):
            setattr(outcome, key, data[key])
        return outcome

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _status_text(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"worker exited with status {status}"


class Pool:
    """``WORKERS`` workers driven from threads; results come back in job order."""

    def __init__(self, cwd: Path, size: int = WORKERS) -> None:
        self.cwd = cwd
        self.size = size
        self._idle: list[Worker] = []
        self._lock = threading.Lock()

    def _take(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Worker(self.cwd)

    def _give(self, worker: Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def run_one(self, name: str, argv: Sequence[str], needles: Sequence[str] = ()) -> Outcome:
        worker = self._take()
        try:
            return worker.run(name, argv, needles)
        finally:
            self._give(worker)

    def run_many(self, jobs: Iterable[tuple[str, Sequence[str], Sequence[str]]]
                 ) -> list[Outcome]:
        jobs = list(jobs)
        with ThreadPoolExecutor(self.size) as ex:
            return list(ex.map(lambda job: self.run_one(*job), jobs))

    def close(self) -> None:
        for worker in self._idle:
            worker.close()
        self._idle.clear()


# --- fresh processes ---------------------------------------------------------------------

LAUNCHER = r"""
import json, os, resource, subprocess, sys, time
limit, timeout = int(sys.argv[1]), float(sys.argv[2])
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        preexec_fn=cap)
deadline = start + timeout
out, err, hung = b"", b"", False
try:
    out, err = proc.communicate(timeout=timeout)
except subprocess.TimeoutExpired:
    proc.kill(); out, err = proc.communicate(); hung = True
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": proc.returncode, "maxrss_kb": usage.ru_maxrss,
                  "seconds": time.perf_counter() - start, "hung": hung,
                  "out": out.decode("utf-8", "replace"), "err": err.decode("utf-8", "replace")}))
"""
FRESH_AS_LIMIT = 4 * 2**30
FRESH_MEMORY_BOUND_KB = 1024 * 1024


def run_fresh(name: str, argv: Sequence[str], cwd: Path, timeout: float = 120.0) -> Outcome:
    """``python -m qinspect ARGV`` in a new process: exit status, stderr, peak RSS, time.

    The launcher is a small Python process, so the command's ``ru_maxrss`` (RUSAGE_CHILDREN
    of the launcher, which has one child) is the command's own peak."""
    env = dict(os.environ, COLUMNS="200")
    env.pop("QINSPECT_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(FRESH_AS_LIMIT), str(timeout), sys.executable,
         "-m", "qinspect", *argv], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout + 60)
    data = json.loads(done.stdout)
    outcome = Outcome(name, list(argv), err=data["err"][:4000], out_head=data["out"][:2000],
                      out_len=len(data["out"]), seconds=data["seconds"],
                      peak_kb=data["maxrss_kb"], hung=data["hung"])
    status = data["status"]
    if status is not None and status < 0 and not outcome.hung:
        outcome.crashed = _status_text(status)
    else:
        outcome.code = status
    text = data["out"] + data["err"]
    from _worker import FORBIDDEN

    outcome.bad_chars = sorted({f"U+{ord(c):04X}" for c in text if c in FORBIDDEN})
    outcome.traceback = "Traceback (most recent call last)" in text
    return outcome


# --- the contract ------------------------------------------------------------------------


def judge(outcome: Outcome, codes: Sequence[int] = (0, 2), fresh: bool = False) -> list[str]:
    """Everything wrong with one outcome (empty: it honoured the contract)."""
    problems = []
    if outcome.hung:
        return [f"hung (no answer within {HANG_SECONDS:.0f} s)"]
    if outcome.crashed:
        return [f"crashed: {outcome.crashed}"]
    if outcome.escaped:
        return [f"an exception escaped main(): {outcome.escaped.strip().splitlines()[-1]}"]
    if outcome.traceback:
        problems.append("printed a traceback")
    if outcome.code not in codes:
        problems.append(f"exit code {outcome.code} (allowed: {list(codes)})")
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    if outcome.code == 2:
        if len(lines) != 1 or not lines[0].startswith("qinspect: error: "):
            problems.append(f"exit 2 without exactly one 'qinspect: error:' line: "
                            f"{outcome.err[:600]!r}")
    if "internal error" in outcome.err:
        where = f" in {outcome.origin}" if outcome.origin else ""
        problems.append(f"an internal error{where}, not a clear message: {lines[:1]}")
    leaked = [line for line in lines if PY_WARNING.search(line)]
    if leaked:
        problems.append(f"leaked a Python warning to stderr: {leaked[0][:200]}")
    if any(word in outcome.err for word in MEMORY_WORDS):
        problems.append(f"tried to allocate beyond the memory bound: {lines[:1]}")
    if outcome.bad_chars:
        problems.append(f"unescaped control characters in the output: {outcome.bad_chars}")
    if outcome.missing:
        problems.append(f"expected text missing from the output: {outcome.missing}")
    if outcome.seconds > (TIME_BOUND_SECONDS * 3 if fresh else TIME_BOUND_SECONDS):
        problems.append(f"took {outcome.seconds:.1f} s")
    bound = FRESH_MEMORY_BOUND_KB if fresh else MEMORY_BOUND_KB
    if outcome.peak_kb > bound:
        problems.append(f"peak RSS grew by {outcome.peak_kb // 1024} MiB")
    return problems


def report(failures: list[tuple[Outcome, list[str]]], limit: int = 15) -> str:
    lines = [f"{len(failures)} hostile run(s) broke the contract:"]
    for outcome, problems in failures[:limit]:
        lines.append(f"- {outcome.describe()}")
        lines.extend(f"    {p}" for p in problems)
        if outcome.err and not any("one 'qinspect: error:'" in p for p in problems):
            lines.append(f"    stderr: {outcome.err.strip()[:300]!r}")
    if len(failures) > limit:
        lines.append(f"... and {len(failures) - limit} more")
    return "\n".join(lines)

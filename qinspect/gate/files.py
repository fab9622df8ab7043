"""Many checkpoints in one run: files and folders in, one outcome per file out.

A folder is searched (recursively, hidden folders skipped, in name order) for files whose
bytes say they are checkpoints of a format qinspect reads: a zip written by torch
(torch.save, TorchScript, torch.export), a legacy torch.save pickle, or a safetensors
file. Other files (inputs ``.npy``, scripts, READMEs) are not checkpoints and are left
out. A file named explicitly is always checked, so a wrong one is reported, not skipped.

The configuration is read once, in the calling process; ``jobs > 1`` checks files in
that many worker processes. A file that cannot be read is an outcome with its error
(exit code 2), so one bad file never hides the verdict on the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qinspect.errors import InputError, QInspectError
from qinspect.gate.config import CheckConfig
from qinspect.gate.report import CheckResult

HEAD_BYTES = 64
PICKLE_PROTO = b"\x80"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Outcome:
    """One file of a run: its result, or the error that kept it from being checked."""

    path: str
    result: CheckResult | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return self.result.exit_code if self.result is not None else 2


@dataclass(frozen=True)
class CheckRun:
    """The outcomes of a run over several files, in the order they were given/found.

    Truthy when every file was checked and passed; ``exit_code`` is the worst one."""

    outcomes: tuple[Outcome, ...]

    @property
    def exit_code(self) -> int:
        return max((o.exit_code for o in self.outcomes), default=0)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def __bool__(self) -> bool:
        return self.passed


def find_checkpoints(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders expanded to the checkpoints inside them."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir() or is_model_folder(path):
            out.append(path)
            continue
        found = [f for f in _walk(path) if looks_like_checkpoint(f)]
        if not found:
            raise InputError(f"{path}: no checkpoint file in this folder (searched for "
                             "torch.save, TorchScript, torch.export and safetensors files)")
        out.extend(found)
    return list(dict.fromkeys(out))


def _walk(folder: Path) -> Iterator[Path]:
    """Files in name order; a Hugging Face model folder is one checkpoint, not its shards."""
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        models = [d for d in sorted(dirs) if not d.startswith(".") and is_model_folder(here / d)]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in models)
        yield from (here / d for d in models)
        for name in sorted(files):
            yield here / name


def is_model_folder(path: Path) -> bool:
    """A folder the Hugging Face reader loads as one checkpoint: it has a ``config.json``
    or a safetensors index beside its ``*.safetensors`` shards."""
    return path.is_dir() and any(path.glob("*.safetensors*")) and (
        (path / "config.json").is_file() or any(path.glob("*.safetensors.index.json")))


def looks_like_checkpoint(path: Path) -> bool:
    """Whether a path found in a folder is a checkpoint qinspect reads, from its bytes."""
    if path.is_dir():
        return True  # a model folder (see _walk)
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return False
    if head.startswith(PICKLE_PROTO):
        return True  # a legacy (non-zip) torch.save file
    if len(head) > 9 and head[8:9] == b"{":  # safetensors: u64 header length, JSON header
        return int.from_bytes(head[:8], "little") < os.path.getsize(path)
    if head.startswith(ZIP_MAGIC):
        from qinspect.loaders.sniff import sniff

        try:
            sniff(path)
        except QInspectError:
            return False  # a zip not written by torch (.npz, ...)
        return True
    return False


def check_one(path: str, config: CheckConfig) -> Outcome:
    """Check one file; a file qinspect cannot read is an outcome with the error."""
    from qinspect.gate.engine import check

    try:
        return Outcome(path, check(path, config=config))
    except QInspectError as exc:
        return Outcome(path, error=str(exc))


def check_files(paths: Iterable[str | os.PathLike[str]], config: CheckConfig, *,
                jobs: int = 1, on_done: Callable[[Outcome], None] | None = None) -> CheckRun:
    """Check every checkpoint of ``paths`` (files and folders) with ``config``."""
    files = [str(p) for p in find_checkpoints(paths)]
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: give a number of processes >= 1")
    if jobs == 1 or len(files) == 1:
        outcomes = []
        for path in files:
            outcomes.append(check_one(path, config))
            if on_done is not None:
                on_done(outcomes[-1])
        return CheckRun(tuple(outcomes))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked torch state in workers
    with ProcessPoolExecutor(max_workers=min(jobs, len(files)), mp_context=context) as pool:
        futures = [pool.submit(check_one, path, config) for path in files]
        results = []
        for future in futures:
            results.append(future.result())
            if on_done is not None:
                on_done(results[-1])
    return CheckRun(tuple(results))

"""``qinspect diff``'s entry point: pick the comparison for the two checkpoints' kinds."""

from __future__ import annotations

from collections.abc import Callable

from qinspect.analyse.diff import SORTS, DiffReport, diff
from qinspect.analyse.diff_packed import diff_packed
from qinspect.errors import InputError
from qinspect.model import Checkpoint


def compare(a: Checkpoint, b: Checkpoint, layer_glob: str | None = None, sort: str = "sqnr",
            fold_bn: bool = True, progress: Callable[[str, int, int], None] | None = None
            ) -> DiffReport:
    """:func:`~qinspect.analyse.diff.diff` for torch files; for Hugging Face checkpoints
    :func:`~qinspect.analyse.diff_packed.diff_packed` (packed weights, paired by module
    name, no BatchNorm folding)."""
    if a.hf is None and b.hf is None:
        return diff(a, b, layer_glob, sort, fold_bn, progress)
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of: {', '.join(SORTS)}")
    return diff_packed(a, b, layer_glob, sort, progress)

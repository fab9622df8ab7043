"""qinspect: explain, compare and gate quantized PyTorch checkpoints from the file alone.

The public API imports torch only when called, so ``import qinspect`` stays cheap::

    import qinspect
    ckpt = qinspect.load("model.pt")          # safe: weights_only, mmap
    summary = qinspect.summarise(ckpt)         # weight health, sizes, hints
    report = qinspect.diff("fp32.pt", "int8.pt")  # per-layer SQNR, LSB error, clipping
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qinspect.errors import (
    InputError,
    LoadError,
    QInspectError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
    VerifyError,
)

if TYPE_CHECKING:
    from qinspect.analyse.diff import DiffReport
    from qinspect.analyse.summary import Summary
    from qinspect.analyse.verify import Progress, VerifyReport
    from qinspect.gate.report import CheckResult
    from qinspect.model import Checkpoint

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "LoadError",
    "QInspectError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "VerifyError",
    "__version__",
    "check",
    "diff",
    "load",
    "summarise",
    "verify",
]


def __dir__() -> list[str]:
    """``dir(qinspect)`` lists the public API, not the names this module imports."""
    return sorted(__all__)


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint without executing code from it and normalise it."""
    from qinspect.loaders import load as _load

    return _load(path)


def summarise(checkpoint: Checkpoint, layer_glob: str | None = None) -> Summary:
    """What ``qinspect show`` reports: per-layer roles, weight health, sizes, hints."""
    from qinspect.analyse.summary import summarise as _summarise

    return _summarise(checkpoint, layer_glob)


def check(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    reference: str | os.PathLike[str] | None = None,
    input: str | os.PathLike[str] | None = None,  # mirrors --input
    baseline: str | os.PathLike[str] | None = None,
    config: Any = "auto",
    settings: list[str] | None = None,
    **overrides: Any,
) -> CheckResult:
    """What ``qinspect check`` does; the result is truthy when no rule failed::

        assert qinspect.check("model_int8.pt", require_per_channel=True)

    ``config``: ``"auto"`` searches like the CLI, a path reads that file, a dict gives the
    settings, ``None`` uses the defaults. ``settings`` are ``KEY=VALUE`` strings (``--set``);
    keyword arguments set single config keys on top.
    """
    from qinspect.gate.engine import check as _check

    return _check(checkpoint, reference=reference, input=input, baseline=baseline,
                  config=config, settings=settings, **overrides)


def diff(
    a: str | os.PathLike[str] | Checkpoint,
    b: str | os.PathLike[str] | Checkpoint,
    *,
    layer_glob: str | None = None,
    sort: str = "sqnr",
    fold_bn: bool = True,
    progress: Progress | None = None,
) -> DiffReport:
    """What ``qinspect diff`` reports: layers of ``a`` and ``b`` paired by module path, with
    weight SQNR, max/mean error, error in LSB, clipping, cosine, qparam changes and (QAT
    vs converted) bit-exactness. ``sort``: ``"sqnr"`` (worst first), ``"error"``,
    ``"name"``; ``fold_bn=False`` compares unfused float conv weights as they are."""
    from qinspect.analyse.compare import compare as _diff

    ckpt_a = a if not isinstance(a, (str, os.PathLike)) else load(a)
    ckpt_b = b if not isinstance(b, (str, os.PathLike)) else load(b)
    return _diff(ckpt_a, ckpt_b, layer_glob=layer_glob, sort=sort, fold_bn=fold_bn,
                 progress=progress)


def verify(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    input: str | os.PathLike[str] | None = None,  # mirrors --input
    reference: str | os.PathLike[str] | None = None,
    model: str | None = None,
    engine: str | None = None,
    layer_glob: str | None = None,
    seed: int | None = None,
    batch: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """What ``qinspect verify`` reports: every quantized layer run in the float domain, by
    torch's kernel and by qinspect's integer reference, with SQNR, error in LSB, clipping
    and kernel agreement. ``model="file.py:NAME"`` imports and runs that code (a model
    class or builder function; needs ``reference`` and ``input``). An option the file's
    runner cannot honour raises :class:`~qinspect.errors.InputError` with the reason."""
    from qinspect.analyse.verify import verify as _verify

    return _verify(checkpoint, input=input, reference=reference, model=model, engine=engine,
                   layer_glob=layer_glob, seed=seed, batch=batch, progress=progress)

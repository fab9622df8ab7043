"""qinspect: explain, compare and gate quantized PyTorch checkpoints from the file alone.

The public API imports torch only when called, so ``import qinspect`` stays cheap::

    import qinspect
    ckpt = qinspect.load("model.pt")          # safe: weights_only, mmap
    summary = qinspect.summarise(ckpt)         # weight health, sizes, hints
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qinspect.errors import (
    InputError,
    LoadError,
    QInspectError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
    VerifyError,
)

if TYPE_CHECKING:
    from qinspect.analyse.summary import Summary
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
    "load",
    "summarise",
]


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint without executing code from it and normalise it."""
    from qinspect.loaders import load as _load

    return _load(path)


def summarise(checkpoint: Checkpoint, layer_glob: str | None = None) -> Summary:
    """What ``qinspect show`` reports: per-layer roles, weight health, sizes, hints."""
    from qinspect.analyse.summary import summarise as _summarise

    return _summarise(checkpoint, layer_glob)

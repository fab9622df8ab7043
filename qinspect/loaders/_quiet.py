"""Silence torch's deprecation chatter while reading files (it is not for our users)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: torch's deprecation notices about APIs qinspect calls on purpose (quantized tensor
#: creation, TypedStorage); they speak of torch's internals, not of the user's file
TORCH_NOTICES = (".*TypedStorage is deprecated.*", ".*quantized tensor creation functions.*")


def silence_torch_notices() -> None:
    """Ignore :data:`TORCH_NOTICES` for the whole process. torch emits each once per
    process; when torch itself read the file, the loader's :func:`quiet_torch_warnings`
    used up that once, and ``verify``'s kernels never showed them. The loaders no longer
    import torch, so the notices are silenced here, once, for whoever calls torch."""
    for message in TORCH_NOTICES:
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def quiet_torch_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield

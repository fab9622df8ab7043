"""Write report files atomically, and never over an input.

``--output`` reports are written to a temporary file in the destination's own folder,
flushed and ``fsync``ed, then renamed over the destination with :func:`os.replace`: a
reader (or a CI step after a crash) sees the previous file or the complete new one, never
half a report. The rename replaces a symbolic link at the destination rather than writing
through it, and the destination may not be any of the command's inputs (by path, by link
or by hard link), so a slip like ``--output model.pt`` cannot destroy a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from qinspect.errors import InputError


def write_atomic(path: str | os.PathLike[str], text: str,
                 inputs: Iterable[str | os.PathLike[str]] = (), option: str = "--output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path written.
    ``option`` names the command-line option in the error messages (``--html``...).

    Raises :class:`InputError` (one line, with what to do) if ``path`` is one of
    ``inputs``, is a directory, or its folder cannot be written."""
    from qinspect.render.text import safe

    target = Path(path)
    shown = safe(target)
    for source in inputs:
        if _same_file(target, Path(source)):
            raise InputError(f"{shown}: refusing to write the report over an input file; "
                             f"pass another {option} path")
    if target.is_dir():
        raise InputError(f"{shown}: is a directory; pass a file path to {option}")
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{shown}: cannot write there ({exc.strerror}); check that the "
                         "folder exists and is writable") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), 0o666 & ~umask)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"{shown}: cannot write the report ({exc.strerror})") from exc
        raise
    _sync_folder(folder)
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS or filesystem allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

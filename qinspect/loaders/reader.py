"""Read a checkpoint file safely into plain Python objects.

Only ``torch.load(weights_only=True)`` is used (with ``mmap=True`` for zip archives),
so no code from the file can run. The one extension: TorchScript objects inside a
state_dict (dynamic-quantized LSTM/GRU keep their packed weights as
``torch.ScriptObject``) are not instantiated; their pickled state is captured as
plain data by :class:`ScriptObjectState`, so no C++ custom class sees the file's bytes.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qinspect.errors import LoadError, UnsafeCheckpointError, UnsupportedFormatError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"


class ScriptObjectState:
    """Stand-in for ``torch.ScriptObject`` while unpickling: keeps the state, runs nothing.

    torch pickles a ScriptObject as ``NEWOBJ`` + ``BUILD(state)``; the weights-only
    unpickler calls ``__setstate__`` on the allow-listed class, which here only stores
    the state (a tuple of tensors, numbers, strings and nested stand-ins).
    """

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        kind = self.class_name or "?"
        return f"ScriptObjectState({kind})"

    @property
    def class_name(self) -> str | None:
        """The TorchScript class named by the state, e.g. ``...rnn.CellParamsBase``."""
        if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(
            self.state[1], str
        ):
            return self.state[1]
        return None

    @property
    def payload(self) -> Any:
        return self.state[0] if self.class_name is not None else self.state


@dataclass(frozen=True)
class RawCheckpoint:
    """What the file held, before any interpretation."""

    path: str
    file_size: int
    container: str
    entries: dict[str, Any]
    metadata: dict[str, dict[str, Any]] | None
    wrapper: str | None
    extras: dict[str, Any]


def read_file(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Load ``path`` without executing code and return its entries in file order."""
    p = Path(path)
    file_size = _check_path(p)
    head = _read_head(p)
    container = _sniff(p, head)
    obj = _torch_load(p, mmap=container == "zip")
    return _unwrap(str(p), file_size, container, obj)


def _check_path(p: Path) -> int:
    if not p.exists():
        raise LoadError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise LoadError(f"{p}: is a directory; pass a checkpoint file (.pt/.pth)")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise LoadError(f"{p}: cannot read ({exc.strerror}); check permissions") from exc
    if size == 0:
        raise LoadError(f"{p}: file is empty; it is not a checkpoint (was the save interrupted?)")
    return size


def _read_head(p: Path) -> bytes:
    try:
        with p.open("rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise LoadError(f"{p}: cannot read ({exc.strerror}); check permissions") from exc


def _sniff(p: Path, head: bytes) -> str:
    """Tell the container from the first bytes: 'zip' (torch.save) or 'pickle' (legacy)."""
    if head.startswith(ZIP_MAGIC) or head.startswith(EMPTY_ZIP_MAGIC):
        _reject_foreign_zip(p)
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if _looks_like_safetensors(head):
        raise UnsupportedFormatError(
            f"{p}: this is a safetensors file; qinspect reads PyTorch .pt/.pth files for now "
            "(safetensors support is planned)"
        )
    if _looks_like_text(head):
        raise LoadError(
            f"{p}: this is a text file, not a PyTorch checkpoint; pass a file written by torch.save"
        )
    raise LoadError(
        f"{p}: not a PyTorch checkpoint (no zip or pickle header); pass a file written by "
        "torch.save"
    )


def _reject_foreign_zip(p: Path) -> None:
    """Name zip-based formats that are not torch.save state_dicts (yet)."""
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as exc:
        raise LoadError(
            f"{p}: the zip archive is truncated or corrupt ({exc}); re-export the checkpoint"
        ) from exc
    except OSError as exc:  # pragma: no cover - depends on the OS
        raise LoadError(f"{p}: cannot read the archive ({exc})") from exc
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        raise UnsupportedFormatError(
            f"{p}: this is a TorchScript archive (torch.jit.save); qinspect reads state_dicts "
            "for now: save model.state_dict() with torch.save instead"
        )
    if any(t.startswith("models/") or t == "archive_format" for t in tails):
        raise UnsupportedFormatError(
            f"{p}: this looks like a torch.export archive (.pt2); qinspect reads state_dicts "
            "for now: save the quantized model's state_dict with torch.save instead"
        )
    if not any(t == "data.pkl" for t in tails):
        raise UnsupportedFormatError(
            f"{p}: a zip archive without data.pkl, so not written by torch.save; "
            "pass a PyTorch checkpoint"
        )


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _torch_load(p: Path, mmap: bool) -> Any:
    import torch

    from qinspect.loaders._quiet import quiet_torch_warnings

    allowed = [(ScriptObjectState, "torch.ScriptObject")]
    try:
        with quiet_torch_warnings(), torch.serialization.safe_globals(allowed):
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(p, exc) from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            AttributeError, IndexError, KeyError, TypeError, OverflowError,
            MemoryError, UnicodeDecodeError) as exc:
        raise LoadError(
            f"{p}: torch could not read it ({_first_line(exc)}); the file is probably "
            "truncated or corrupt: re-export it"
        ) from exc


def _unpickling_error(p: Path, exc: Exception) -> LoadError:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1)
        return UnsafeCheckpointError(
            f"{p}: refused: loading it would call {name}, and weights-only loading allows "
            "no code from the file (a pickle can run any program). If you trust the file, "
            "re-save only its tensors with torch.save(model.state_dict(), path)"
        )
    if "Trying to call reduce for unrecognized function" in text or "Can only" in text:
        return UnsafeCheckpointError(
            f"{p}: refused: its pickle asks to build objects outside the weights-only "
            f"allow-list ({_first_line(exc)}); qinspect never runs code from a file. If you "
            "trust it, re-save only its tensors with torch.save(model.state_dict(), path)"
        )
    return LoadError(
        f"{p}: the pickle inside is corrupt ({_first_line(exc)}); re-export the checkpoint"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()[:200]
    return text.splitlines()[0][:200]


def _unwrap(path: str, size: int, container: str, obj: Any) -> RawCheckpoint:
    if not isinstance(obj, Mapping):
        raise UnsupportedFormatError(
            f"{path}: holds a {type(obj).__name__}, not a state_dict; qinspect reads "
            "dicts of tensors saved with torch.save(model.state_dict(), path)"
        )
    wrapper = None
    extras: dict[str, Any] = {}
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _has_tensor(inner):
            wrapper = key
            extras = {k: v for k, v in obj.items() if k != key}
            obj = inner
            break
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise UnsupportedFormatError(
            f"{path}: the dict has non-string keys (e.g. {bad[0]!r}); not a state_dict"
        )
    metadata = getattr(obj, "_metadata", None)
    meta = dict(metadata) if isinstance(metadata, Mapping) else None
    return RawCheckpoint(path, size, container, dict(obj), meta, wrapper, extras)


def _has_tensor(m: Mapping[Any, Any]) -> bool:
    import torch

    return any(isinstance(v, (torch.Tensor, tuple, ScriptObjectState)) for v in m.values())

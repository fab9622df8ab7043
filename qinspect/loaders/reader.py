"""Read a checkpoint file safely into plain Python objects.

Only ``torch.load(weights_only=True)`` is used (with ``mmap=True`` for zip archives of at
least :data:`MMAP_MIN_BYTES`), so no code from the file can run. The one extension:
TorchScript objects inside a state_dict (dynamic-quantized LSTM/GRU keep their packed
weights as
``torch.ScriptObject``) are not instantiated; their pickled state is captured as
plain data by :class:`ScriptObjectState`, so no C++ custom class sees the file's bytes.

Before torch sees the file, :mod:`qinspect.loaders.archive` checks its structure (member
names, declared sizes, tensor extents) without executing it; after torch has read it,
:func:`_screen` checks what came back once, so the rest of qinspect only meets dense CPU
tensors it can read: any other entry is set aside with a reason.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinspect.errors import LoadError, UnsafeCheckpointError, UnsupportedFormatError
from qinspect.loaders import archive
from qinspect.loaders.archive import printable

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: zip archives this large are memory-mapped (copy-on-write, read-only file); smaller
#: ones are read into memory. qinspect touches every byte either way, so the peak RSS is
#: the same; a mapping lets the kernel drop clean pages of huge files, but if another
#: process truncates the file while it is mapped, the next read of a lost page kills the
#: process with SIGBUS. Read into memory, a truncation is at worst a clean read error.
MMAP_MIN_BYTES = 1 << 30
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
    #: entries set aside by :func:`_screen`: key -> (what it is, why it is not read)
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)


def read_file(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Load ``path`` without executing code and return its entries in file order."""
    p = Path(path)
    file_size = _check_path(p)
    head = _read_head(p)
    container = _sniff(p, head)
    if container == "zip":
        archive.check_zip(p, file_size)
    else:
        archive.check_legacy(p, file_size)
    obj = _torch_load(p, mmap=container == "zip" and file_size >= MMAP_MIN_BYTES)
    return _screen(_unwrap(str(p), file_size, container, obj))


def _check_path(p: Path) -> int:
    if not p.exists():
        raise LoadError(f"{printable(p)}: no such file; check the path")
    if p.is_dir():
        raise LoadError(f"{printable(p)}: is a directory; pass a checkpoint file (.pt/.pth)")
    try:
        info = p.stat()
    except OSError as exc:
        raise LoadError(f"{printable(p)}: cannot read ({exc.strerror}); check permissions") from exc
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(f"{printable(p)}: not a regular file (a device, pipe or socket); pass a "
                        "checkpoint file (.pt/.pth)")
    size = info.st_size
    if size == 0:
        raise LoadError(f"{printable(p)}: file is empty; it is not a checkpoint (was the save "
                        "interrupted?)")
    return size


def _read_head(p: Path) -> bytes:
    try:
        with p.open("rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise LoadError(f"{printable(p)}: cannot read ({exc.strerror}); check permissions") from exc


def _sniff(p: Path, head: bytes) -> str:
    """Tell the container from the first bytes: 'zip' (torch.save) or 'pickle' (legacy)."""
    if head.startswith(ZIP_MAGIC) or head.startswith(EMPTY_ZIP_MAGIC):
        _reject_foreign_zip(p)
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if _looks_like_safetensors(head):
        raise UnsupportedFormatError(
            f"{printable(p)}: this is a safetensors file; qinspect reads PyTorch .pt/.pth files "
            "for now "
            "(safetensors support is planned)"
        )
    if _looks_like_text(head):
        raise LoadError(
            f"{printable(p)}: this is a text file, not a PyTorch checkpoint; pass a file "
            "written by torch.save"
        )
    raise LoadError(
        f"{printable(p)}: not a PyTorch checkpoint (no zip or pickle header); pass a file "
        "written by "
        "torch.save"
    )


def _reject_foreign_zip(p: Path) -> None:
    """Name zip-based formats that are not torch.save state_dicts (yet)."""
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as exc:
        raise LoadError(
            f"{printable(p)}: the zip archive is truncated or corrupt "
            f"({printable(_first_line(exc))}); re-export the checkpoint"
        ) from exc
    except OSError as exc:  # pragma: no cover - depends on the OS
        raise LoadError(f"{printable(p)}: cannot read the archive ({printable(exc)})") from exc
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        raise UnsupportedFormatError(
            f"{printable(p)}: this is a TorchScript archive (torch.jit.save); qinspect reads "
            "state_dicts "
            "for now: save model.state_dict() with torch.save instead"
        )
    if any(t.startswith("models/") or t == "archive_format" for t in tails):
        raise UnsupportedFormatError(
            f"{printable(p)}: this looks like a torch.export archive (.pt2); qinspect reads "
            "state_dicts "
            "for now: save the quantized model's state_dict with torch.save instead"
        )
    if not any(t == "data.pkl" for t in tails):
        raise UnsupportedFormatError(
            f"{printable(p)}: a zip archive without data.pkl, so not written by torch.save; "
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
        with quiet_torch_warnings(), torch.serialization.safe_globals(allowed), _private_mmap():
            # torch's load-time warnings (pickle protocol, storage deprecations) speak of
            # its internals, not of the user's file: the error or the result says it all
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(p, exc) from exc
    except MemoryError as exc:
        raise LoadError(f"{printable(p)}: ran out of memory while torch read it; the file "
                        "declares more data than this machine can hold") from exc
    except Exception as exc:  # whatever torch raises on a bad file
        raise LoadError(
            f"{printable(p)}: torch could not read it ({printable(_first_line(exc))}); the "
            "file is probably truncated or corrupt: re-export it"
        ) from exc


def _private_mmap() -> Any:
    """Map the file copy-on-write, whatever the process default: the file, opened
    read-only, is never written through the mapping."""
    import contextlib
    import mmap

    import torch

    setter = getattr(torch.serialization, "set_default_mmap_options", None)
    flag = getattr(mmap, "MAP_PRIVATE", None)
    if setter is None or flag is None:  # pragma: no cover - Windows or torch < 2.5
        return contextlib.nullcontext()
    return setter(flag)


def _unpickling_error(p: Path, exc: Exception) -> LoadError:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1)
        return UnsafeCheckpointError(
            f"{printable(p)}: refused: loading it would call {name}, and weights-only loading "
            "allows "
            "no code from the file (a pickle can run any program). If you trust the file, "
            "re-save only its tensors with torch.save(model.state_dict(), path)"
        )
    if "Trying to call reduce for unrecognized function" in text or "Can only" in text:
        return UnsafeCheckpointError(
            f"{printable(p)}: refused: its pickle asks to build objects outside the weights-only "
            f"allow-list ({printable(_first_line(exc))}); qinspect never runs code from a file. "
            "If you "
            "trust it, re-save only its tensors with torch.save(model.state_dict(), path)"
        )
    return LoadError(
        f"{printable(p)}: the pickle inside is corrupt ({printable(_first_line(exc))}); "
        "re-export the checkpoint"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            text = line.split("WeightsUnpickler error:", 1)[1].strip()
            break
    if not text:
        return type(exc).__name__
    return text.splitlines()[0][:200]


def _unwrap(path: str, size: int, container: str, obj: Any) -> RawCheckpoint:
    if not isinstance(obj, Mapping):
        raise UnsupportedFormatError(
            f"{printable(path)}: holds a {type(obj).__name__}, not a state_dict; qinspect reads "
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
            f"{printable(path)}: the dict has non-string keys (e.g. a "
            f"{type(bad[0]).__name__}); not a state_dict"
        )
    metadata = getattr(obj, "_metadata", None)
    meta = dict(metadata) if isinstance(metadata, Mapping) else None
    return RawCheckpoint(path, size, container, dict(obj), meta, wrapper, extras)


def _has_tensor(m: Mapping[Any, Any]) -> bool:
    import torch

    return any(isinstance(v, (torch.Tensor, tuple, ScriptObjectState)) for v in m.values())


# --- what torch returned -----------------------------------------------------------------

READABLE_DTYPES = frozenset({
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
})


def _screen(raw: RawCheckpoint) -> RawCheckpoint:
    """Check once what torch returned, so the rest of qinspect only meets dense CPU tensors
    it can read. An entry holding anything else is set aside with a reason (and reported
    as unrecognised); tensors that together declare far more values than the file holds
    (one storage, or one tensor, referenced many times over) refuse the whole file."""
    from dataclasses import replace

    from qinspect.loaders.tensors import describe

    entries: dict[str, Any] = {}
    rejected: dict[str, tuple[str, str]] = {}
    total = 0
    for key, value in raw.entries.items():
        problem, nbytes = _inspect_value(value)
        if problem is not None:
            rejected[key] = (describe(value), problem)
            continue
        entries[key] = value
        total += nbytes
    budget = archive.view_budget(raw.file_size)
    if total > budget:
        raise LoadError(
            f"{printable(raw.path)}: refused: its entries hold {archive._size(total)} of "
            f"tensor values, more than {archive.VIEW_BUDGET_FACTOR}x the file's size (the "
            "same storage or tensor referenced many times over); qinspect will not read "
            "that much"
        )
    return replace(raw, entries=entries, rejected=rejected)


def _inspect_value(value: Any) -> tuple[str | None, int]:
    """(why the entry cannot be read, or None; bytes of tensor values it holds).

    Walks tuples, lists, dicts and TorchScript stand-ins without recursion (a hostile
    file may nest them a million deep) and visits each object once."""
    import torch

    todo = [value]
    seen: set[int] = set()
    nbytes = 0
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            problem = _tensor_problem(item)
            if problem is not None:
                return problem, 0
            nbytes += item.numel() * item.element_size()
            continue
        if id(item) in seen:
            continue
        if isinstance(item, (tuple, list, set, frozenset)):
            seen.add(id(item))
            todo.extend(item)
        elif isinstance(item, Mapping):
            seen.add(id(item))
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, ScriptObjectState):
            seen.add(id(item))
            todo.append(item.state)
    return None, nbytes


def _tensor_problem(t: Any) -> str | None:
    import torch

    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return f"a tensor subclass ({type(t).__name__}); qinspect reads plain tensors"
    extra = vars(t) if hasattr(t, "__dict__") else {}
    if extra:
        names = ", ".join(sorted(str(k) for k in extra)[:3])
        return (f"a tensor carrying Python attributes ({printable(names)}); a state_dict "
                "from torch.save has none")
    if t.layout != torch.strided or t.is_nested:
        return f"a {str(t.layout).removeprefix('torch.')} tensor; qinspect reads dense tensors"
    if t.device.type != "cpu":
        return f"a tensor on device '{t.device.type}', which holds no readable values"
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in READABLE_DTYPES:
        return f"dtype {dtype}: qinspect cannot read its values yet"
    return None

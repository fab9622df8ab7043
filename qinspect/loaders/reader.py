"""Read a torch.save file (zip archive or legacy stream) into plain Python objects.

No byte of the file reaches torch: :mod:`qinspect.loaders.archive` first checks the
container's structure (member names, declared sizes, tensor extents) by walking the
pickle's opcodes symbolically; then :mod:`qinspect.loaders.safe_pickle` reads the pickle
in ``strict`` mode (any global outside torch's weights-only allow-list is refused, as
``weights_only=True`` would) and turns every tensor into an
:class:`~qinspect.loaders.tensors.ArrayTensor`, a numpy view of its storage record.
TorchScript objects inside a state_dict (dynamic-quantized LSTM/GRU keep their packed
weights as ``torch.ScriptObject``) are kept as their pickled state
(:class:`ScriptObjectState`). :func:`_screen` then checks what came back once, so the rest
of qinspect only meets dense tensors it can read: any other entry is set aside with a
reason.

:func:`read_checkpoint` imports no torch. :func:`read_file` is the same with torch
tensors rebuilt by torch's own rebuild functions, for ``verify --model``, which runs them.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.loaders import archive
from qinspect.loaders import tensors as T
from qinspect.loaders.archive import printable
from qinspect.loaders.safe_pickle import Reader, ScriptObjectState
from qinspect.loaders.tensors import ArrayTensor, Storage
from qinspect.loaders.zipread import Archive

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: storages of zip files this large are memory-mapped (private, read-only), not read:
#: see :data:`qinspect.loaders.zipread.MMAP_MIN_BYTES`
MMAP_MIN_BYTES = 1 << 30
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
__all__ = ["MMAP_MIN_BYTES", "RawCheckpoint", "ScriptObjectState", "read_checkpoint",
           "read_file"]


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


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read ``path`` without executing code or importing torch; entries in file order."""
    p = Path(path)
    file_size = _check_path(p)
    head = _read_head(p)
    container = _sniff(p, head)
    if container == "zip":
        archive.check_zip(p, file_size)
        obj = _read_zip(p, file_size)
    else:
        archive.check_legacy(p, file_size)
        obj = _read_legacy(p, file_size)
    return _screen(_unwrap(str(p), file_size, container, obj))


def read_file(path: str | os.PathLike[str]) -> RawCheckpoint:
    """:func:`read_checkpoint` with torch tensors (rebuilt by torch's rebuild functions
    from the same bytes; no torch.load), for code that runs torch kernels."""
    from dataclasses import replace

    raw = read_checkpoint(path)
    return replace(raw, entries=T.to_torch(raw.entries), extras=T.to_torch(raw.extras))


def _read_zip(p: Path, file_size: int) -> Any:
    with Archive(p, file_size, mmap_min=MMAP_MIN_BYTES) as zf:
        reader = Reader(zf.storage_loader("data"), printable(p), strict=True,
                        view_budget=archive.view_budget(file_size))
        data = zf.read("data.pkl")
        return reader.load(io.BytesIO(data), len(data))


def _read_legacy(p: Path, file_size: int) -> Any:
    """The pre-1.6 stream (torch/serialization.py ``_legacy_load``): magic number,
    protocol version and system info pickles, the object pickle, the list of storage
    keys, then each storage as an int64 element count and its bytes."""
    storages: dict[str, Storage] = {}

    def declare(key: str, dtype: str, numel: int, location: str = "cpu") -> Storage:
        if key not in storages:
            storages[key] = Storage(key, T.DTYPES[dtype], numel, None, location)
        return storages[key]

    with p.open("rb") as fh:
        head = io.BytesIO(fh.read(min(file_size, 2 * archive.MAX_PICKLE_BYTES + 16384)))
        plain = Reader(None, printable(p), strict=True)
        for _ in range(3):
            plain.load(head, archive.MAX_PICKLE_BYTES)
        reader = Reader(declare, printable(p), strict=True,
                        view_budget=archive.view_budget(file_size))
        obj = reader.load(head, archive.MAX_PICKLE_BYTES)
        keys = plain.load(head, archive.MAX_PICKLE_BYTES)
        offset = head.tell()
        for key in keys:  # archive.check_legacy checked every count and extent
            storage = storages[str(key)]
            fh.seek(offset + 8)
            data = bytearray(storage.nbytes)  # this process's own, writable copy
            fh.readinto(data)
            storage.data = np.frombuffer(data, dtype=np.uint8)
            offset += 8 + storage.nbytes
    return obj


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
    return any(isinstance(v, (ArrayTensor, tuple, ScriptObjectState)) for v in m.values())


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

    Walks tuples, lists, dicts and TorchScript stand-ins without recursion and visits
    each object once."""
    todo = [value]
    seen: set[int] = set()
    nbytes = 0
    while todo:
        item = todo.pop()
        if isinstance(item, ArrayTensor):
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


def _tensor_problem(t: ArrayTensor) -> str | None:
    if t.problem is not None:
        return t.problem
    if t.attrs:
        names = ", ".join(sorted(str(k) for k in t.attrs)[:3])
        return (f"a tensor carrying Python attributes ({printable(names)}); a state_dict "
                "from torch.save has none")
    if t.dtype.name not in READABLE_DTYPES:
        return f"dtype {t.dtype.name}: qinspect cannot read its values yet"
    return None

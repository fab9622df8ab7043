"""Check a checkpoint's container before torch reads it: no size declared in the file is
trusted.

``torch.load`` believes the file it is given. It reads ``data.pkl`` whole (a deflated
member can expand to gigabytes), slices each storage by the size the pickle declares
(silently cut short at the end of the file when memory-mapped), and allocates a quantized
tensor of the declared shape before checking that shape against its storage. The legacy
(non-zip) format allocates every declared storage before reading a byte of it.

This module reads the zip directory with :mod:`zipfile` and walks the pickle's opcodes
with :mod:`pickletools` on a symbolic stack, so nothing from the file is executed or
imported. It refuses, with one line, a file whose member names leave the archive, whose
members run past the end of the file or expand beyond :data:`MAX_PICKLE_BYTES`, whose
storages declare more bytes than the file holds, or whose tensors (offset, size, stride)
reach outside their storage or declare far more values than the file could hold.
"""

from __future__ import annotations

import io
import math
import os
import pickletools
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from qinspect.errors import LoadError

#: ``data.pkl`` (or the legacy pickle) may not exceed this many bytes; real state_dicts
#: need about 200 bytes per tensor, so this is room for ~150,000 tensors.
MAX_PICKLE_BYTES = 32 * 2**20
#: deflated members of one archive may declare (and inflate to) this many bytes together;
#: torch stores tensor data uncompressed and deflates only code and small records
MAX_INFLATED_TOTAL = 2 * MAX_PICKLE_BYTES
#: Tensors may declare at most this many times the file's bytes (tied weights share one
#: storage, so 2x is legitimate), plus a constant for tiny files.
VIEW_BUDGET_FACTOR = 4
VIEW_BUDGET_SLACK = 16 * 2**20
MAX_DIMS = 64
REBUILDERS = {
    "torch._utils._rebuild_tensor": "v1",
    "torch._utils._rebuild_tensor_v2": "v2",
    "torch._utils._rebuild_tensor_v3": "v3",
    "torch._utils._rebuild_qtensor": "q",
}
#: values per storage element for sub-byte quantized storages
PER_ELEMENT = {"QUInt4x2Storage": 2, "QUInt2x4Storage": 4}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: what zipfile raises on a damaged archive: bad headers, names flagged UTF-8 that are
#: not, unknown versions or methods, corrupt deflate streams, CRC mismatches
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
              NotImplementedError, RuntimeError, OSError, zlib.error)


def view_budget(file_size: int) -> int:
    """The most bytes of tensor values a file of ``file_size`` bytes may declare."""
    return VIEW_BUDGET_FACTOR * file_size + VIEW_BUDGET_SLACK


def printable(text: object) -> str:
    """Names and messages from a file, safe for a terminal (see ``render.text.safe``)."""
    from qinspect.render.text import safe

    return safe(text)


class _Refused(Exception):
    """Internal: the structure is inconsistent; becomes a LoadError naming the file."""


# --- entry points ------------------------------------------------------------------------


def check(path: str | os.PathLike[str]) -> None:
    """Validate any torch.save file (zip archive or legacy stream) before ``torch.load``
    reads it; raise :class:`LoadError` with one line if its structure does not add up.

    For every reader of torch.save files (checkpoints, ``.pt`` inputs), not only
    :func:`qinspect.loaders.reader.read_file`, which calls the two checks below itself."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise LoadError(f"{printable(p)}: cannot read ({exc.strerror})") from exc
    if head.startswith(b"PK"):
        check_zip(p, size)
    else:
        check_legacy(p, size)


def check_zip_members(p: Path, file_size: int) -> None:
    """The checks every torch zip (torch.save, torch.jit.save, torch.export) must pass
    before any member is read: names inside the archive, no duplicates or links, every
    member inside the file, compressed members expanding to at most
    :data:`MAX_PICKLE_BYTES`. For readers other than :func:`check_zip`'s torch.save path."""
    try:
        with zipfile.ZipFile(p) as zf:
            _generic_members(zf, p, file_size)
    except ZIP_ERRORS as exc:
        raise LoadError(
            f"{printable(p)}: the zip archive is truncated or corrupt "
            f"({printable(_first_line(exc))}); re-export the file"
        ) from exc
    except _Refused as exc:
        raise LoadError(f"{printable(p)}: refused: {printable(exc)}") from exc


def check_zip(p: Path, file_size: int) -> None:
    """Validate a torch.save zip archive; raise :class:`LoadError` with one line if not."""
    try:
        with zipfile.ZipFile(p) as zf:
            members = _check_members(zf, p, file_size)
            pickle_bytes = _read_pickle(zf, members.data_pkl)
    except ZIP_ERRORS as exc:
        raise LoadError(
            f"{printable(p)}: the zip archive is truncated or corrupt "
            f"({printable(_first_line(exc))}); re-export the checkpoint"
        ) from exc
    except _Refused as exc:
        raise LoadError(f"{printable(p)}: refused: {printable(exc)}") from exc
    try:
        walk = _Walk(legacy=False, budget=view_budget(file_size))
        walk.run(io.BytesIO(pickle_bytes), len(pickle_bytes))
        _check_storages_in_zip(walk, members)
    except _Refused as exc:
        raise LoadError(f"{printable(p)}: refused: {printable(exc)}") from exc
    except _Corrupt as exc:
        raise LoadError(
            f"{printable(p)}: the pickle inside is corrupt ({printable(exc)}); re-export the "
            "checkpoint"
        ) from exc


def check_legacy(p: Path, file_size: int) -> None:
    """Validate a legacy (pre-zip) torch.save stream: pickles, then raw storages."""
    try:
        with p.open("rb") as fh:
            # the pickles come first and are walked from memory; storages are then only
            # located (their size fields read), never loaded
            head = io.BytesIO(fh.read(min(file_size, 2 * MAX_PICKLE_BYTES + 16384)))
            _check_legacy_stream(head, fh, file_size)
    except OSError as exc:
        raise LoadError(f"{printable(p)}: cannot read ({exc.strerror})") from exc
    except _Refused as exc:
        raise LoadError(f"{printable(p)}: refused: {printable(exc)}") from exc
    except _Corrupt as exc:
        raise LoadError(
            f"{printable(p)}: the pickle inside is corrupt ({printable(exc)}); re-export the "
            "checkpoint"
        ) from exc


# --- zip members -------------------------------------------------------------------------


@dataclass
class _Members:
    prefix: str
    data_pkl: zipfile.ZipInfo
    records: dict[str, zipfile.ZipInfo] = field(default_factory=dict)


def _generic_members(zf: zipfile.ZipFile, p: Path, file_size: int
                     ) -> tuple[list[zipfile.ZipInfo], str]:
    infos = zf.infolist()
    with p.open("rb") as fh:
        check_members(fh, infos, file_size)
    return infos, infos[0].filename.split("/", 1)[0] + "/"


def check_members(fh: BinaryIO, infos: list[zipfile.ZipInfo], file_size: int
                  ) -> dict[str, int]:
    """The checks every torch zip passes before any member is read (see
    :mod:`qinspect.loaders.zipread`); returns where each member's bytes start."""
    if not infos:
        raise _Refused("an empty zip archive, not a file torch writes")
    seen: set[str] = set()
    for info in infos:
        _check_name(info.filename)
        if info.filename in seen:
            raise _Refused(f"the archive holds {info.filename!r} twice; torch never "
                           "writes duplicate members")
        seen.add(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _Refused(f"member {info.filename!r} is a symbolic link; torch never "
                           "writes links")
        if info.flag_bits & 0x1:
            raise _Refused(f"member {info.filename!r} is encrypted; torch never encrypts")
    # torch reads every record relative to the folder of the first member
    prefix = infos[0].filename.split("/", 1)[0] + "/"
    inflated = sum(i.file_size for i in infos if i.compress_type == zipfile.ZIP_DEFLATED)
    if inflated > MAX_INFLATED_TOTAL:
        raise _Refused(f"its compressed members declare {_size(inflated)} together (limit "
                       f"{_size(MAX_INFLATED_TOTAL)}): a zip bomb, or not a file torch wrote")
    starts: dict[str, int] = {}
    for info in infos:
        if not info.filename.startswith(prefix):
            raise _Refused(f"member {info.filename!r} is outside the archive folder "
                           f"{prefix!r}")
        starts[info.filename] = _check_extent(fh, info, file_size)
    return starts


def _check_members(zf: zipfile.ZipFile, p: Path, file_size: int) -> _Members:
    infos, prefix = _generic_members(zf, p, file_size)
    records: dict[str, zipfile.ZipInfo] = {}
    data_pkl = None
    for info in infos:
        local = info.filename[len(prefix):]
        if local == "constants.pkl" or local.startswith("code/"):
            raise _Refused("a TorchScript archive (torch.jit.save), not a torch.save file; "
                           "torch.load would hand it to torch.jit.load")
        if local == "data.pkl":
            data_pkl = info
        elif local.startswith("data/"):
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Refused(f"storage {info.filename!r} is compressed; torch.save "
                               "stores tensor data uncompressed")
            records[local[len("data/"):]] = info
    if data_pkl is None:
        raise _Refused("no data.pkl in the archive folder; not written by torch.save")
    return _Members(prefix, data_pkl, records)


def _check_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if (name.startswith(("/", "\\")) or "\\" in name or "\x00" in name or ".." in parts
            or (len(name) > 1 and name[1] == ":")):
        raise _Refused(f"member name {name!r} points outside the archive; qinspect never "
                       "extracts files, and torch.save never writes such names")


def _check_extent(fh: BinaryIO, info: zipfile.ZipInfo, file_size: int) -> int:
    """The member's bytes must lie inside the file, and its sizes must be believable."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _Refused(f"member {info.filename!r} uses compression method "
                       f"{info.compress_type}; torch.save writes stored members")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise _Refused(f"member {info.filename!r} declares {info.file_size} bytes but "
                       f"stores {info.compress_size}")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_PICKLE_BYTES:
        raise _Refused(f"member {info.filename!r} would expand to {_size(info.file_size)} "
                       f"(limit {_size(MAX_PICKLE_BYTES)}): a zip bomb, or not a checkpoint")
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"member {info.filename!r} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > file_size:
        raise zipfile.BadZipFile(f"member {info.filename!r} runs past the end of the file")
    return start


def _read_pickle(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise _Refused(f"data.pkl is {_size(info.file_size)} (limit "
                       f"{_size(MAX_PICKLE_BYTES)}); too large for a state_dict's index")
    with zf.open(info) as member:
        data = member.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:  # pragma: no cover - zipfile stops at the declared size
        raise _Refused("data.pkl expands beyond its declared size")
    return data


def _check_storages_in_zip(walk: _Walk, members: _Members) -> None:
    for key, st in walk.storages.items():
        info = members.records.get(key)
        if info is None:
            raise _Refused(f"the pickle refers to storage {key!r}, which is not in the "
                           "archive")
        if st.nbytes is not None and st.nbytes > info.file_size:
            raise _Refused(f"storage {key!r} declares {_size(st.nbytes)} but the archive "
                           f"holds {_size(info.file_size)} for it")


# --- legacy stream -----------------------------------------------------------------------


def _check_legacy_stream(head: io.BytesIO, fh: BinaryIO, file_size: int) -> None:
    first = _Walk(legacy=True, budget=0)
    if first.run(head, 4096) != LEGACY_MAGIC:
        if first.globals:
            return  # a plain pickle naming code: torch's weights-only check refuses it by name
        raise _Corrupt("not a torch.save stream (bad magic number)")
    header = [_Walk(legacy=True, budget=0).run(head, 4096) for _ in range(2)]
    if not isinstance(header[0], int):
        raise _Corrupt("not a torch.save stream (bad protocol version)")
    walk = _Walk(legacy=True, budget=view_budget(file_size))
    walk.run(head, MAX_PICKLE_BYTES)
    keys = _Walk(legacy=True, budget=0).run(head, MAX_PICKLE_BYTES)
    if not (isinstance(keys, list) and all(isinstance(k, (str, int)) for k in keys)):
        raise _Corrupt("the list of storage keys is malformed")
    offset = head.tell()
    fh.seek(offset)
    for key in keys:
        st = walk.storages.get(str(key))
        if st is None:
            raise _Refused(f"storage {str(key)!r} is listed but never used")
        size_field = fh.read(8)
        if len(size_field) < 8:
            raise _Corrupt(f"the file ends before storage {str(key)!r} (truncated?)")
        (count,) = struct.unpack("<q", size_field)
        if count != st.numel:
            raise _Refused(f"storage {str(key)!r} declares {st.numel} elements in the "
                           f"pickle but {count} in the data")
        nbytes = st.nbytes if st.nbytes is not None else count
        offset += 8 + nbytes
        if offset > file_size:
            raise _Refused(f"storage {str(key)!r} declares {_size(nbytes)}, past the end "
                           "of the file (truncated, or a forged size)")
        fh.seek(offset)
    missing = set(walk.storages) - {str(k) for k in keys}
    if missing:
        raise _Refused(f"storage {sorted(missing)[0]!r} is used but not stored in the file")


# --- the symbolic pickle walk ------------------------------------------------------------


class _Corrupt(Exception):
    """The opcodes do not form a pickle a loader could finish."""


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class _Storage:
    key: str
    type_name: str
    numel: int
    itemsize: int | None  # None: a type torch does not know (torch refuses it itself)
    per_element: int = 1

    @property
    def nbytes(self) -> int | None:
        return None if self.itemsize is None else self.numel * self.itemsize


@dataclass(frozen=True)
class _Call:
    func: Any


class _Opaque:
    """A dict, set or object: its contents do not matter for the checks."""


_MARK = object()
_CONSTANTS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
}


class _Walk:
    """Run a pickle's opcodes on a symbolic stack: globals stay names, calls stay records,
    nothing is imported or called. Collects storages and checks every tensor view."""

    def __init__(self, legacy: bool, budget: int) -> None:
        self.legacy = legacy
        self.budget = budget
        self.declared = 0
        self.storages: dict[str, _Storage] = {}
        self.globals: list[str] = []

    def run(self, source: Any, limit: int) -> Any:
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        start = source.tell()
        try:
            for op, arg, pos in pickletools.genops(source):
                if pos is not None and pos - start > limit:
                    raise _Refused(f"its pickle is larger than {_size(limit)}")
                name = op.name
                if name == "STOP":
                    return self._pop(stack, marks)
                self._step(name, arg, stack, marks, memo)
        except _Refused:
            raise
        except _Corrupt:
            raise
        except (ValueError, KeyError, IndexError, TypeError, OverflowError,
                struct.error, EOFError, UnicodeDecodeError, RecursionError) as exc:
            raise _Corrupt(_first_line(exc)) from exc
        raise _Corrupt("the pickle ends before its STOP opcode")

    # one opcode ------------------------------------------------------------------------

    def _step(self, name: str, arg: Any, stack: list, marks: list, memo: dict) -> None:
        if name in _CONSTANTS:
            stack.append(arg)
        elif name in ("PROTO", "FRAME"):
            return
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "POP":
            self._pop(stack, marks)
        elif name == "POP_MARK":
            self._pop_mark(stack, marks)
        elif name == "DUP":
            stack.append(self._top(stack, marks))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self._pop(stack, marks) for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(self._pop_mark(stack, marks)))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(list(self._pop_mark(stack, marks)))
        elif name == "APPEND":
            value = self._pop(stack, marks)
            target = self._top(stack, marks)
            if isinstance(target, list):
                target.append(value)
        elif name == "APPENDS":
            items = self._pop_mark(stack, marks)
            target = self._top(stack, marks)
            if isinstance(target, list):
                target.extend(items)
        elif name in ("EMPTY_DICT", "EMPTY_SET"):
            stack.append(_Opaque())
        elif name in ("DICT", "FROZENSET"):
            self._pop_mark(stack, marks)
            stack.append(_Opaque())
        elif name == "SETITEM":
            self._pop(stack, marks)
            self._pop(stack, marks)
            self._top(stack, marks)
        elif name in ("SETITEMS", "ADDITEMS"):
            self._pop_mark(stack, marks)
            self._top(stack, marks)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = self._top(stack, marks)
        elif name == "MEMOIZE":
            memo[len(memo)] = self._top(stack, marks)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Corrupt(f"memo entry {arg} read before it is written")
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_Global(module, attr))
            self.globals.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            attr = self._pop(stack, marks)
            module = self._pop(stack, marks)
            stack.append(_Global(str(module), str(attr)))
        elif name == "REDUCE":
            args = self._pop(stack, marks)
            func = self._pop(stack, marks)
            stack.append(self._call(func, args))
        elif name == "NEWOBJ":
            self._pop(stack, marks)
            stack.append(_Call(self._pop(stack, marks)))
        elif name == "NEWOBJ_EX":
            self._pop(stack, marks)
            self._pop(stack, marks)
            stack.append(_Call(self._pop(stack, marks)))
        elif name == "BUILD":
            self._pop(stack, marks)
            self._top(stack, marks)
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            self._pop_mark(stack, marks)
            stack.append(_Call(_Global(module, attr)))
        elif name == "OBJ":
            items = self._pop_mark(stack, marks)
            if not items:
                raise _Corrupt("OBJ without a class")
            stack.append(_Call(items[0]))
        elif name == "PERSID":
            stack.append(self._persistent(arg))
        elif name == "BINPERSID":
            stack.append(self._persistent(self._pop(stack, marks)))
        elif name in ("EXT1", "EXT2", "EXT4", "NEXT_BUFFER"):
            stack.append(_Opaque())
        elif name == "READONLY_BUFFER":
            self._top(stack, marks)
        else:  # pragma: no cover - genops yields only the opcodes above
            raise _Corrupt(f"unknown opcode {name}")

    @staticmethod
    def _pop(stack: list, marks: list) -> Any:
        if not stack or (marks and len(stack) <= marks[-1]):
            raise _Corrupt("an opcode pops from an empty stack")
        return stack.pop()

    @staticmethod
    def _top(stack: list, marks: list) -> Any:
        if not stack or (marks and len(stack) <= marks[-1]):
            raise _Corrupt("an opcode needs a value and the stack is empty")
        return stack[-1]

    @staticmethod
    def _pop_mark(stack: list, marks: list) -> list:
        if not marks:
            raise _Corrupt("an opcode needs a MARK and there is none")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    # storages and tensors --------------------------------------------------------------

    def _persistent(self, pid: Any) -> _Storage:
        arity = 6 if self.legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == arity and pid[0] in ("storage",
                                                                               b"storage")):
            raise _Refused("the pickle holds a persistent reference that is not a tensor "
                           "storage; torch.save writes only ('storage', type, key, location, "
                           "size)")
        _, kind, key, location, numel = pid[:5]
        if not isinstance(kind, _Global):
            raise _Refused("a storage reference names no storage type")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise _Refused("a storage reference has a key that is not a name")
        if not isinstance(location, (str, bytes)):
            raise _Refused("a storage reference has a location that is not a device name")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise _Refused(f"storage {str(key)!r} declares a size of {numel!r} elements")
        key = str(key)
        itemsize = _storage_itemsize(kind)
        per = PER_ELEMENT.get(kind.name, 1)
        known = self.storages.get(key)
        if known is None:
            known = _Storage(key, kind.name, numel, itemsize, per)
            self.storages[key] = known
        elif known.numel != numel or known.itemsize != itemsize:
            # torch keeps the first declaration; later tensors are checked against it
            pass
        if self.legacy and pid[5] is not None:
            return self._legacy_view(known, pid[5])
        return known

    def _legacy_view(self, root: _Storage, meta: Any) -> _Storage:
        if not (isinstance(meta, tuple) and len(meta) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in meta[1:])):
            raise _Refused(f"storage {root.key!r} has malformed view metadata")
        view_key, offset, size = meta
        if offset < 0 or size < 0 or offset + size > root.numel:
            raise _Refused(f"a view of storage {root.key!r} (offset {offset}, size {size}) "
                           f"reaches past its {root.numel} elements")
        return _Storage(str(view_key), root.type_name, size, root.itemsize, root.per_element)

    def _call(self, func: Any, args: Any) -> Any:
        if isinstance(func, _Global) and func.full in REBUILDERS:
            self._check_tensor(REBUILDERS[func.full], args)
        elif isinstance(func, _Global) and func.full == "builtins.bytearray":
            if args and isinstance(args[0], int) and args[0] > MAX_PICKLE_BYTES:
                raise _Refused(f"the pickle asks for a bytearray of {_size(args[0])}")
        return _Call(func)

    def _check_tensor(self, kind: str, args: Any) -> None:
        if not isinstance(args, tuple) or len(args) < 4:
            raise _Refused("a tensor is rebuilt with too few arguments")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _Storage):
            return  # not a storage at all: torch refuses it itself
        if not _ints(size) or not _ints(stride) or not _ints((offset,)):
            raise _Refused(f"a tensor on storage {storage.key!r} has a shape, stride or "
                           "offset that is not made of integers")
        if len(size) != len(stride) or len(size) > MAX_DIMS:
            raise _Refused(f"a tensor on storage {storage.key!r} has {len(size)} sizes and "
                           f"{len(stride)} strides")
        if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise _Refused(f"a tensor on storage {storage.key!r} has a negative size, stride "
                           f"or offset (size {list(size)}, stride {list(stride)}, offset "
                           f"{offset})")
        bits = self._element_bits(kind, storage, args)
        numel = math.prod(size)
        if numel == 0 or bits is None or storage.nbytes is None:
            return
        extent = offset + sum((s - 1) * t for s, t in zip(size, stride, strict=True)) + 1
        needed = -(-extent * bits // 8)
        if needed > storage.nbytes:
            raise _Refused(f"a tensor of shape {list(size)} (stride {list(stride)}, offset "
                           f"{offset}) reaches {_size(needed)} into storage {storage.key!r}, "
                           f"which declares {_size(storage.nbytes)}")
        self.declared += -(-numel * bits // 8)
        if self.declared > self.budget:
            raise _Refused(f"its tensors declare {_size(self.declared)} of values, more than "
                           f"{VIEW_BUDGET_FACTOR}x the file's size (zero or overlapping "
                           "strides, or a storage shared many times over)")

    @staticmethod
    def _element_bits(kind: str, storage: _Storage, args: tuple) -> int | None:
        if kind == "v3":
            return _dtype_bits(args[6]) if len(args) > 6 else None
        if storage.itemsize is None:
            return None
        return storage.itemsize * 8 // storage.per_element


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values)


def _storage_itemsize(kind: _Global) -> int | None:
    from qinspect.loaders.safe_pickle import STORAGE_DTYPES
    from qinspect.loaders.tensors import ITEMSIZE

    if kind.module not in ("torch", "torch.storage") or kind.name not in STORAGE_DTYPES:
        return None
    return ITEMSIZE[STORAGE_DTYPES[kind.name]]


def _dtype_bits(value: Any) -> int | None:
    from qinspect.loaders.tensors import ITEMSIZE

    if not isinstance(value, _Global) or value.module != "torch":
        return None
    size = ITEMSIZE.get(value.name)
    return None if size is None else size * 8


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]

"""One archive layer for every zip file torch writes (torch.save, torch.jit.save,
torch.export.save, and the ``.pt`` records nested in a ``.pt2``).

Before any member is read, :class:`Archive` checks the whole directory once
(:func:`qinspect.loaders.archive.check_member`): names stay inside the archive, no
duplicates, no links, only stored or deflated members, stored members whose two sizes
agree, every member's bytes inside the file, deflated members declaring at most
:data:`~qinspect.loaders.archive.MAX_PICKLE_BYTES`. Reads are then streamed with a hard
bound, whatever the headers say:

* a member produces at most its declared size (zipfile stops there and checks the CRC)
  and at most :data:`MAX_INFLATED` if deflated (qinspect stops inflating at the bound);
* all reads of one archive together produce at most the file's size plus
  :data:`MAX_INFLATED_TOTAL` (stored bytes are read once each; inflation is what can
  grow), so a small file cannot make qinspect hold much more than itself.

Storage records become numpy arrays over this process's own copy of the bytes (read, or
memory-mapped copy-on-write without a copy for files of at least :data:`MMAP_MIN_BYTES`:
the input file is never written), wrapped in :class:`~qinspect.loaders.tensors.Storage`
for :mod:`qinspect.loaders.safe_pickle`. Nothing here unpickles or executes anything.
"""

from __future__ import annotations

import io
import mmap
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qinspect.errors import LoadError
from qinspect.loaders import archive as A
from qinspect.loaders.archive import MAX_INFLATED_TOTAL, MAX_PICKLE_BYTES, ZIP_ERRORS, printable
from qinspect.loaders.tensors import DTYPES, ITEMSIZE, Storage

#: a deflated member may inflate to at most this many bytes (code, pickles, JSON)
MAX_INFLATED = MAX_PICKLE_BYTES
#: stored storages of files this large are memory-mapped (no copy, no CRC check: the
#: pages stay on disk); smaller files are read, and zipfile checks every CRC. Mapped, a
#: file truncated by another process while qinspect reads it ends in SIGBUS.
MMAP_MIN_BYTES = 1 << 30
CHUNK = 1 << 20


class Archive:
    """A torch zip archive: ``names`` are record paths without the top-level folder."""

    def __init__(self, path: str | Path | BinaryIO, file_size: int | None = None,
                 mmap_min: int = MMAP_MIN_BYTES) -> None:
        self.path = printable(str(path)) if not isinstance(path, io.IOBase) else "(nested)"
        self._fh: BinaryIO = open(path, "rb") if isinstance(path, (str, Path)) else path
        try:
            self.file_size = file_size if file_size is not None else _size_of(self._fh)
            self._zip = zipfile.ZipFile(self._fh)
            infos = self._zip.infolist()
            starts = A.check_members(self._fh, infos, self.file_size)
        except ZIP_ERRORS as exc:
            self._fh.close()
            raise LoadError(f"{self.path}: the zip archive is truncated or corrupt "
                            f"({printable(A._first_line(exc))}); re-export the file") from exc
        except A._Refused as exc:
            self._fh.close()
            raise LoadError(f"{self.path}: refused: {printable(exc)}") from exc
        self._full: dict[str, zipfile.ZipInfo] = {}
        self._start: dict[str, int] = {}
        self.prefix = infos[0].filename.split("/", 1)[0] if "/" in infos[0].filename else ""
        for info in infos:
            name = info.filename
            if self.prefix and name.startswith(self.prefix + "/"):
                name = name[len(self.prefix) + 1:]
            self._full[name] = info
            self._start[name] = starts[info.filename]
        self.names = list(self._full)
        self.produced = 0
        self.inflated = 0
        self._map: mmap.mmap | None = None
        self._mmap_min = mmap_min
        self._storages: dict[tuple[str, str], Storage] = {}

    def close(self) -> None:
        self._zip.close()
        self._fh.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return name in self._full

    def size(self, name: str) -> int:
        return self._full[name].file_size

    def read(self, name: str) -> bytes:
        """The bytes of record ``name``, streamed with a hard bound (see the module)."""
        return bytes(self._read(name))

    def _read(self, name: str) -> bytearray:
        """:meth:`read` into one buffer of the declared size (no second copy)."""
        info = self._full.get(name)
        if info is None:
            raise LoadError(f"{self.path}: the archive has no record {printable(name)!r}; it "
                            "is incomplete: re-export it")
        deflated = info.compress_type == zipfile.ZIP_DEFLATED
        bound = min(info.file_size, MAX_INFLATED) if deflated else info.file_size
        if info.file_size > bound:
            raise LoadError(f"{self.path}: refused: record {printable(name)!r} declares "
                            f"{A._size(info.file_size)} (limit {A._size(bound)})")
        out = bytearray(bound)
        view = memoryview(out)
        filled = 0
        try:
            with self._zip.open(info) as member:
                while True:  # zipfile inflates at most what each read asks for
                    chunk = member.read(min(CHUNK, bound + 1 - filled))
                    if not chunk:
                        break
                    self._count(len(chunk), deflated, name)
                    if filled + len(chunk) > bound:
                        raise LoadError(
                            f"{self.path}: refused: record {printable(name)!r} inflates "
                            f"beyond {A._size(bound)} (a zip bomb, or a lying header)")
                    view[filled:filled + len(chunk)] = chunk
                    filled += len(chunk)
        except ZIP_ERRORS as exc:
            raise LoadError(f"{self.path}: record {printable(name)!r} is corrupt "
                            f"({printable(A._first_line(exc))}); re-export the file") from exc
        finally:
            view.release()
        if filled != info.file_size:
            raise LoadError(f"{self.path}: record {printable(name)!r} holds {filled} bytes "
                            f"but declares {info.file_size}; re-export the file")
        return out

    def _count(self, n: int, deflated: bool, name: str) -> None:
        self.produced += n
        if deflated:
            self.inflated += n
        if self.inflated > MAX_INFLATED_TOTAL or \
                self.produced > self.file_size + MAX_INFLATED_TOTAL:
            raise LoadError(f"{self.path}: refused: reading record {printable(name)!r} "
                            f"would take the archive past {A._size(self.file_size)} + "
                            f"{A._size(MAX_INFLATED_TOTAL)} of decompressed data (a zip "
                            "bomb)")

    def array(self, name: str) -> np.ndarray:
        """Record ``name`` as a read-only uint8 array (mapped for large files)."""
        info = self._full.get(name)
        if (info is not None and info.compress_type == zipfile.ZIP_STORED
                and self.file_size >= self._mmap_min and hasattr(self._fh, "fileno")):
            if self._map is None:  # copy-on-write: a write stays in this process
                self._map = mmap.mmap(self._fh.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
            return np.frombuffer(self._map, dtype=np.uint8, count=info.file_size,
                                 offset=self._start[name])
        return np.frombuffer(self._read(name), dtype=np.uint8)

    def storage_loader(self, folder: str):
        """``(key, dtype name, numel, location) -> Storage`` reading ``folder/key``."""

        def load(key: str, dtype_name: str, numel: int, location: str = "cpu") -> Storage:
            cache_key = (folder, key)
            known = self._storages.get(cache_key)
            if known is not None:  # torch keeps the first declaration of a storage
                return known
            if dtype_name not in ITEMSIZE:
                raise LoadError(f"{self.path}: unknown tensor dtype {printable(dtype_name)!r}")
            name = f"{folder}/{key}"
            if not self.has(name):
                raise LoadError(f"{self.path}: the pickle refers to storage "
                                f"{printable(key)!r}, which is not in the archive; it is "
                                "incomplete: re-export it")
            need = numel * ITEMSIZE[dtype_name]
            if need > self.size(name):
                raise LoadError(f"{self.path}: a tensor claims {need} bytes but its record "
                                f"holds {self.size(name)}; the file is truncated or corrupt: "
                                "re-export it")
            storage = Storage(key, DTYPES[dtype_name], numel, self.array(name)[:need],
                              location)
            self._storages[cache_key] = storage
            return storage

        return load


def member_names(path: str | Path) -> list[str]:
    """The record paths of a zip, without its top-level folder (the central directory
    only: nothing is read or checked, for telling formats apart)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except ZIP_ERRORS as exc:
        raise LoadError(f"{printable(str(path))}: the zip archive is truncated or corrupt "
                        f"({printable(A._first_line(exc))}); re-export the file") from exc
    prefix = infos[0].filename.split("/", 1)[0] + "/" if infos and "/" in infos[0].filename \
        else ""
    return [i.filename[len(prefix):] if prefix and i.filename.startswith(prefix)
            else i.filename for i in infos]


def _size_of(fh: BinaryIO) -> int:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pos = fh.tell()
        end = fh.seek(0, io.SEEK_END)
        fh.seek(pos)
        return end

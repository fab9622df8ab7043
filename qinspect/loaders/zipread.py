"""Records of a zip archive written by torch (torch.save, torch.jit.save, torch.export.save).

All three put every record under one top-level folder (the archive name); this module
finds it, reads records by their path inside it, and turns raw bytes into torch storages
for :mod:`qinspect.loaders.safe_pickle`. Nothing here unpickles or executes anything.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from qinspect.errors import LoadError
from qinspect.loaders.archive import MAX_PICKLE_BYTES, ZIP_ERRORS

MAX_RECORD_BYTES = 1 << 34


class Archive:
    """A torch zip archive: ``names`` are record paths without the top-level folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except ZIP_ERRORS as exc:
            raise LoadError(f"{path}: the zip archive is truncated or corrupt ({exc}); "
                            "re-export the file") from exc
        self._full: dict[str, zipfile.ZipInfo] = {}
        prefixes = {info.filename.split("/", 1)[0] for info in infos if "/" in info.filename}
        self.prefix = prefixes.pop() if len(prefixes) == 1 else ""
        for info in infos:
            name = info.filename
            if self.prefix and name.startswith(self.prefix + "/"):
                name = name[len(self.prefix) + 1:]
            self._full[name] = info
        self.names = list(self._full)
        self._storages: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return name in self._full

    def size(self, name: str) -> int:
        return self._full[name].file_size

    def read(self, name: str) -> bytes:
        info = self._full.get(name)
        if info is None:
            raise LoadError(f"{self.path}: the archive has no record {name!r}; it is "
                            "incomplete: re-export it")
        # pickles are read whole into memory: a deflated one could be a zip bomb
        limit = MAX_PICKLE_BYTES if name.endswith(".pkl") else MAX_RECORD_BYTES
        if info.file_size > limit:
            raise LoadError(f"{self.path}: record {name!r} claims {info.file_size} bytes; "
                            "refusing to read it")
        try:
            return self._zip.read(info)
        except ZIP_ERRORS as exc:
            raise LoadError(f"{self.path}: record {name!r} is corrupt ({exc}); "
                            "re-export the file") from exc

    def storage_loader(self, folder: str):
        """``(key, dtype name, numel) -> TypedStorage`` reading ``folder/key``."""

        def load(key: str, dtype_name: str, numel: int) -> Any:
            cache_key = (folder, key)
            if cache_key not in self._storages:
                self._storages[cache_key] = typed_storage(
                    self.read(f"{folder}/{key}"), dtype_name, numel, self.path)
            return self._storages[cache_key]

        return load


def typed_storage(raw: bytes, dtype_name: str, numel: int, where: str) -> Any:
    """A TypedStorage over a copy of ``raw``; checks the size the pickle claims."""
    import torch
    from torch._utils import _element_size

    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise LoadError(f"{where}: unknown tensor dtype {dtype_name!r}")
    need = int(numel) * _element_size(dtype)
    if numel < 0 or len(raw) < need:
        raise LoadError(f"{where}: a tensor claims {need} bytes but its record holds "
                        f"{len(raw)}; the file is truncated or corrupt: re-export it")
    if raw:
        untyped = torch.UntypedStorage.from_buffer(bytearray(raw), dtype=torch.uint8)
    else:
        untyped = torch.UntypedStorage(0)
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

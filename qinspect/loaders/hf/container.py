"""safetensors files, sharded folders and index files, read without torch.

A safetensors file is 8 bytes ``N`` (u64, little-endian), ``N`` bytes of UTF-8 JSON
(``name -> {dtype, shape, data_offsets}`` plus an optional ``__metadata__`` string map)
and a data buffer (huggingface/safetensors README "Format"). The header is attacker-
controlled: every field is checked, as the Rust reader's ``validate`` does (known dtypes,
non-negative shapes, byte counts equal to dtype x shape, offsets contiguous and covering
the buffer exactly), before any tensor is mapped. Shards are memory-mapped and only the
tensors a command asks for are touched.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.render.text import safe

MAX_HEADER_BYTES = 100_000_000  # the Rust reader's MAX_HEADER_SIZE
MAX_JSON_FILE_BYTES = 64 * 2**20  # config.json / index files
MAX_DIMS = 16
MAX_TENSORS = 1_000_000
BINCOUNT_BLOCK = 256 * 1024

#: safetensors dtype -> (numpy storage dtype, bits per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("|b1", 8), "U8": ("|u1", 8), "I8": ("|i1", 8), "I16": ("<i2", 16),
    "U16": ("<u2", 16), "F16": ("<f2", 16), "BF16": ("<u2", 16), "I32": ("<i4", 32),
    "U32": ("<u4", 32), "F32": ("<f4", 32), "F64": ("<f8", 64), "I64": ("<i8", 64),
    "U64": ("<u8", 64), "C64": ("<c8", 64), "F8_E5M2": ("|u1", 8), "F8_E4M3": ("|u1", 8),
    "F8_E8M0": ("|u1", 8), "F8_E4M3FNUZ": ("|u1", 8), "F8_E5M2FNUZ": ("|u1", 8),
    "F4": ("|u1", 4), "F6_E2M3": ("|u1", 6), "F6_E3M2": ("|u1", 6),
}
#: non-standard spellings seen in huggingface.js' types
ALIASES = {"E8M0": "F8_E8M0", "UE8": "F8_E8M0", "FP4": "F4"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4"}


def _refuse(path: Path | str, what: str) -> LoadError:
    return LoadError(f"{safe(path)}: {what}; the file is damaged or not written by a "
                     "safetensors writer: re-download or re-export it")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a shard: where its bytes are and how to read them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str
    start: int
    """Absolute byte offset in the shard file."""
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Shard:
    path: Path
    size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    _map: np.ndarray | None = field(default=None, repr=False)

    def buffer(self) -> np.ndarray:
        if self._map is None:
            self._map = (np.memmap(self.path, dtype=np.uint8, mode="r") if self.size
                         else np.zeros(0, np.uint8))
        return self._map


def read_header(path: Path) -> Shard:
    """Parse and validate one safetensors file's header; map nothing yet."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _refuse(path, f"{size} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise _refuse(path, f"the header declares {n} bytes (the limit is "
                                    f"{MAX_HEADER_BYTES})")
            if n > size - 8:
                raise _refuse(path, f"the header declares {n} bytes but the file has only "
                                    f"{size - 8} after the length")
            raw = fh.read(n)
    except OSError as exc:
        raise LoadError(f"{safe(path)}: cannot read ({exc.strerror}); check the path and "
                        "permissions") from exc
    header = _parse_json(path, raw, "header")
    if not isinstance(header, dict):
        raise _refuse(path, "the header is not a JSON object")
    data_start = 8 + n
    metadata = _metadata(path, header.pop("__metadata__", None))
    tensors = {}
    if len(header) > MAX_TENSORS:
        raise _refuse(path, f"the header lists {len(header)} tensors")
    for name, entry in header.items():
        tensors[name] = _tensor_info(path, name, entry, data_start)
    _check_layout(path, tensors, size - data_start, data_start)
    return Shard(path=path, size=size, metadata=metadata, tensors=tensors)


def _parse_json(path: Path, raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise _refuse(path, f"the {what} is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        line = safe(str(exc).splitlines()[0][:120])
        raise _refuse(path, f"the {what} is not valid UTF-8 JSON ({line})") from exc


def _metadata(path: Path, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _refuse(path, "__metadata__ must map strings to strings")
    return value


def _tensor_info(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    where = f"tensor '{safe(name[:200])}'"
    if not isinstance(entry, dict):
        raise _refuse(path, f"{where} is not described by an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str):
        raise _refuse(path, f"{where} has a dtype that is not a string")
    dtype = ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        shown = safe(str(dtype)[:40])
        raise _refuse(path, f"{where} has unknown dtype '{shown}'")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**62 for d in shape)):
        raise _refuse(path, f"{where} has an invalid shape (a list of at most {MAX_DIMS} "
                            "non-negative integers is expected)")
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < 2**63 for o in offsets)
            or offsets[0] > offsets[1]):
        raise _refuse(path, f"{where} has invalid data_offsets")
    numel = math.prod(shape)
    bits = DTYPES[dtype][1]
    expected = (numel * bits + 7) // 8
    if offsets[1] - offsets[0] != expected:
        raise _refuse(path, f"{where} holds {offsets[1] - offsets[0]} bytes but {dtype} "
                            f"{shape} needs {expected}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), shard=str(path),
                      start=data_start + offsets[0], nbytes=expected)


def _check_layout(path: Path, tensors: dict[str, TensorInfo], buffer: int,
                  data_start: int) -> None:
    """Offsets must tile the data buffer exactly: no overlap, no hole, nothing past the end
    (the Rust reader's ``validate``)."""
    end = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.nbytes)):
        begin = info.start - data_start
        if begin != end:
            what = "overlaps the previous one" if begin < end else "leaves a hole before it"
            raise _refuse(path, f"tensor '{safe(info.name[:200])}' {what} in the data buffer")
        end = begin + info.nbytes
    if end != buffer:
        what = "runs past the end of the file" if end > buffer else "leaves unused bytes"
        raise _refuse(path, f"the data buffer {what} ({end} bytes declared, {buffer} present)")


# --- sets of shards ----------------------------------------------------------------------


@dataclass
class TensorSet:
    """Every tensor of a checkpoint: one file, or the shards an index names."""

    root: Path
    shards: list[Shard]
    tensors: dict[str, TensorInfo]
    index_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def file_size(self) -> int:
        return sum(s.size for s in self.shards)

    def _shard(self, info: TensorInfo) -> Shard:
        for shard in self.shards:
            if str(shard.path) == info.shard:
                return shard
        raise AssertionError(info.shard)

    def raw(self, name: str) -> np.ndarray:
        """The stored values, read-only, in their storage dtype (BF16/F8 as raw bytes)."""
        info = self.tensors[name]
        storage, bits = DTYPES[info.dtype]
        buf = self._shard(info).buffer()[info.start:info.start + info.nbytes]
        if bits < 8:  # F4: two values per byte, shape is the logical element count
            return buf
        arr = buf.view(np.dtype(storage))
        return arr.reshape(info.shape)

    def byte_histogram(self, name: str, chunk: int = 16 * 2**20) -> np.ndarray:
        """Counts of each byte value (256 bins) over a tensor's bytes, in one streamed pass.

        Reads with ``pread`` into a reused buffer rather than through the mapping, so the
        pages do not stay resident: peak memory is one chunk, whatever the tensor's size."""
        info = self.tensors[name]
        counts = np.zeros(256, np.int64)
        buf = bytearray(chunk)
        view = memoryview(buf)
        fd = os.open(info.shard, os.O_RDONLY)
        try:
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [view[:min(chunk, info.nbytes - done)]], info.start + done)
                if n <= 0:
                    raise LoadError(f"{safe(info.shard)}: the file ended inside tensor "
                                    f"'{safe(name)}' (truncated while reading?)")
                data = np.frombuffer(buf, np.uint8, n)
                for i in range(0, n, BINCOUNT_BLOCK):  # bincount widens to intp: stay in cache
                    counts += np.bincount(data[i:i + BINCOUNT_BLOCK], minlength=256)
                done += n
        finally:
            os.close(fd)
        return counts

    def floats(self, name: str) -> np.ndarray:
        """The values as float32 (exact for every float dtype up to 32 bits)."""
        from qinspect.quant.hfcodes import decode_float

        info = self.tensors[name]
        return decode_float(self.raw(name), info.dtype)


def open_set(path: str | os.PathLike[str]) -> TensorSet:
    """A ``.safetensors`` file, a ``*.safetensors.index.json`` or a folder holding either."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"{safe(p)}: no such file or folder; check the path")
    if p.is_dir():
        indexes = sorted(p.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            names = ", ".join(safe(i.name) for i in indexes)
            raise UnsupportedFormatError(f"{safe(p)}: several index files ({names}); pass "
                                         "the one to read")
        if indexes:
            return _from_index(indexes[0])
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise LoadError(f"{safe(p)}: no .safetensors file and no index in this folder; "
                            "pass a Hugging Face model folder")
        if len(files) > 1:
            raise UnsupportedFormatError(
                f"{safe(p)}: {len(files)} .safetensors files but no "
                "model.safetensors.index.json to say which belong together; pass one file")
        return _single(files[0], p)
    if p.name.endswith(".index.json"):
        return _from_index(p)
    return _single(p, p.parent)


def _single(path: Path, root: Path) -> TensorSet:
    shard = read_header(path)
    return TensorSet(root=root, shards=[shard], tensors=dict(shard.tensors))


def read_json_file(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            raise LoadError(f"{safe(path)}: {size} bytes is too large for a {what}")
        raw = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{safe(path)}: cannot read ({exc.strerror})") from exc
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise LoadError(f"{safe(path)}: the {what} is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        line = safe(str(exc).splitlines()[0][:120])
        raise LoadError(f"{safe(path)}: the {what} is not valid JSON ({line}); fix or "
                        "re-download it") from exc


def _from_index(index: Path) -> TensorSet:
    root = index.parent
    data = read_json_file(index, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise LoadError(f"{safe(index)}: no 'weight_map' of tensor name -> shard file; "
                        "this is not a safetensors index")
    shard_names = sorted(set(weight_map.values()))
    shards = [read_header(_inside(root, name, index)) for name in shard_names]
    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        for name, info in shard.tensors.items():
            if name in tensors:
                raise LoadError(f"{safe(index)}: tensor '{safe(name)}' is stored in two shards "
                                f"({safe(Path(tensors[name].shard).name)} and "
                                f"{safe(shard.path.name)}); re-export the checkpoint")
            tensors[name] = info
    missing = [n for n, s in weight_map.items()
               if n not in tensors or Path(tensors[n].shard).name != Path(s).name]
    if missing:
        raise LoadError(f"{safe(index)}: {len(missing)} tensors the index lists are not in the "
                        f"shard it names (first: '{safe(missing[0])}'); re-download the "
                        "checkpoint")
    notes = []
    unlisted = [n for n in tensors if n not in weight_map]
    if unlisted:
        notes.append(f"{len(unlisted)} tensors are in the shards but not in the index "
                     f"(first: '{unlisted[0]}'); they are read as well")
    return TensorSet(root=root, shards=shards, tensors=tensors, index_path=index, notes=notes)


def _inside(root: Path, name: str, index: Path) -> Path:
    """A shard path from the index, refused unless it is a file inside ``root``."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not name or "\x00" in name:
        raise LoadError(f"{safe(index)}: the index names shard '{safe(name)}' outside its "
                        "folder; refusing to read it")
    target = root / rel
    try:
        real_root = root.resolve(strict=True)
        real = target.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise LoadError(f"{safe(index)}: shard '{safe(name)}' listed in the index is missing; "
                        "download every shard") from exc
    if real_root not in real.parents:
        raise LoadError(f"{safe(index)}: shard '{safe(name)}' resolves (through a link) "
                        "outside the folder; refusing to read it")
    if not real.is_file():
        raise LoadError(f"{safe(index)}: shard '{safe(name)}' is not a regular file")
    return real

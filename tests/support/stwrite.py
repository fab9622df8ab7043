"""A minimal safetensors writer for tests: lays out a header exactly as the format's README
says (8-byte little-endian length, JSON, data buffer), so tests can also write what a
hostile writer would (lying offsets, shapes, dtypes)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np


def encode(tensors: dict[str, tuple[str, list[int], bytes]],
           metadata: dict[str, str] | None = None) -> tuple[dict[str, Any], bytes]:
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, b"".join(blobs)


def write_raw(path: Path, header: Any, data: bytes, header_len: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    raw += b" " * (-len(raw) % 8)
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def write(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
          metadata: dict[str, str] | None = None) -> Path:
    header, data = encode(tensors, metadata)
    return write_raw(path, header, data)


def array(dtype: str, values: np.ndarray) -> tuple[str, list[int], bytes]:
    return dtype, list(values.shape), np.ascontiguousarray(values).tobytes()

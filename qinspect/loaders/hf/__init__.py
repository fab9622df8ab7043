"""Hugging Face quantized checkpoints: safetensors files, sharded folders, index files.

``container`` reads and validates the safetensors files (no torch, memory-mapped);
``hfconfig`` reads ``config.json``'s ``quantization_config`` and decides the format;
``formats`` groups tensors into Linear layers with roles and decoding recipes.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_hf_input(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file, an index file or a folder holding either."""
    p = Path(path)
    if p.is_dir():
        return (p / "config.json").is_file() or any(p.glob("*.safetensors")) or any(
            p.glob("*.safetensors.index.json"))
    name = p.name
    if name.endswith(".safetensors.index.json"):
        return True
    if not p.is_file():
        return name.endswith(".safetensors")
    try:
        with p.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1

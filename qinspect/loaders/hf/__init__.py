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
    if name.endswith((".safetensors.index.json", ".safetensors")):
        return True
    if not p.is_file():
        return False
    try:
        with p.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def load(path: str | os.PathLike[str]):  # -> Checkpoint (import kept lazy)
    """A Hugging Face checkpoint -> :class:`qinspect.model.Checkpoint` (torch-free)."""
    from qinspect.loaders.hf import container, formats, hfconfig
    from qinspect.model import Checkpoint, Family, HFInfo, Level, Note, Stage

    ts = container.open_set(path)
    _, cfg = hfconfig.read_config(ts.root)
    hfconfig.refuse_unsupported(cfg)
    built = formats.build(ts, cfg)
    notes = [Note(Level.INFO, n) for n in ts.notes]
    if cfg.method is None:
        notes.append(Note(Level.INFO, "no quantization_config found beside the weights: the "
                                      "format was inferred from tensor names"))
    kinds = sorted(set(built.formats))
    fmt = ("Hugging Face safetensors, " + ", ".join(kinds)) if kinds else \
        "Hugging Face safetensors (float)"
    quantized = any(layer.packed is not None for layer in built.layers)
    info = HFInfo(method=cfg.method, producer=cfg.producer, config_source=cfg.source,
                  model_dtype=cfg.model_dtype, shards=tuple(s.path.name for s in ts.shards),
                  index=ts.index_path.name if ts.index_path else None,
                  quantization_config=cfg.raw, ignored=tuple(formats.ignore_patterns(cfg)))
    return Checkpoint(path=str(path), format=fmt, family=Family.HUGGING_FACE,
                      stage=Stage.CONVERTED if quantized else Stage.FLOAT,
                      file_size=ts.file_size, layers=tuple(built.layers),
                      unrecognised=tuple(built.unrecognised), module_order_known=True,
                      order="tensor order of the safetensors header(s)",
                      notes=tuple(notes), hf=info)

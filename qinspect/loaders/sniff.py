"""Tell a file's format from its bytes, before anything is unpickled.

One place decides which adapter reads a file (no user flag): zip archives are told apart
by their records (TorchScript: ``constants.pkl``/``code/``; torch.export: ``archive_format``
and ``models/*.json``; torch.save: ``data.pkl``), and torch.save pickles by the globals
they name, read from the opcodes without unpickling (a whole pickled FX ``GraphModule``,
torchao tensor subclasses). Foreign formats are named, not guessed at.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from qinspect.errors import UnsupportedFormatError
from qinspect.loaders.archive import printable

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
GRAPH_MODULE_REDUCERS = (
    "torch.fx.graph_module.reduce_graph_module",
    "torch.fx.graph_module.reduce_package_graph_module",
    "torch.fx.graph_module.reduce_deploy_graph_module",
)
MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GGUF", "a GGUF file (llama.cpp / ggml)"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras .h5)"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
    (4, b"TFL3", "a TensorFlow Lite flatbuffer (.tflite)"),
    (0, b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (0, b"ORTM", "an ONNX Runtime .ort model"),
    (0, b"\x7fELF", "an ELF executable or shared library"),
    (0, b"%PDF", "a PDF document"),
)


@dataclass(frozen=True)
class Sniffed:
    """What the file is: ``kind`` picks the adapter; ``globals`` lists pickle globals."""

    kind: str
    globals: tuple[str, ...] = field(default_factory=tuple)


TORCH_SAVE = "torch.save"
TORCHSCRIPT = "torchscript"
EXPORT = "torch.export"
FX_PICKLE = "fx-graphmodule-pickle"
TORCHAO = "torchao"


def sniff(path: str | Path) -> Sniffed:
    """The format of ``path``; raises for formats qinspect does not read."""
    p = Path(path)
    if not p.is_file():
        return Sniffed(TORCH_SAVE)  # the reader reports missing files and directories
    try:
        with p.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return Sniffed(TORCH_SAVE)
    if head.startswith(ZIP_MAGICS):
        return _sniff_zip(p)
    for offset, magic, what in MAGICS:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedFormatError(
                f"{printable(str(p))}: this is {what}, not a PyTorch checkpoint; qinspect "
                "reads torch.save, TorchScript and torch.export files")
    if head[:1] == b"\x80" or not head or _looks_like_known_text_or_safetensors(head):
        return Sniffed(TORCH_SAVE)  # legacy pickle, empty, text, safetensors: the reader
    raise UnsupportedFormatError(
        f"{printable(str(p))}: unknown format (first bytes {head[:8].hex(' ')}, no zip or "
        "pickle header); qinspect reads torch.save, TorchScript (torch.jit.save) and "
        "torch.export (.pt2) files")




def _looks_like_known_text_or_safetensors(head: bytes) -> bool:
    if len(head) > 9 and head[8:9] == b"{":
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _sniff_zip(p: Path) -> Sniffed:
    from qinspect.loaders.safe_pickle import scan_globals
    from qinspect.loaders.zipread import Archive, member_names

    names = member_names(p)
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return Sniffed(TORCHSCRIPT)
    if "archive_format" in names or any(
            n.startswith("models/") and n.endswith(".json") for n in names):
        return Sniffed(EXPORT)
    if "data.pkl" not in names:
        shown = printable(", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else ""))
        kind = "a NumPy .npz archive" if names and all(
            n.endswith(".npy") for n in names) else "a zip archive"
        raise UnsupportedFormatError(
            f"{printable(str(p))}: {kind} without data.pkl, code/ or models/, so not "
            f"written by torch (it holds {shown or 'nothing'}); qinspect reads "
            "torch.save, TorchScript and torch.export files")
    with Archive(p) as archive:  # checks every member before reading data.pkl
        globs = tuple(scan_globals(archive.read("data.pkl")))
    if any(g in GRAPH_MODULE_REDUCERS for g in globs):
        return Sniffed(FX_PICKLE, globs)
    if any(g.startswith("torchao.") for g in globs):
        return Sniffed(TORCHAO, globs)
    return Sniffed(TORCH_SAVE, globs)


def is_zip(path: str | Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False

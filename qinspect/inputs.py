"""Read a user's sample input (``--input``) safely: no pickle, no code from the file.

Accepted: ``.npy`` (one array), ``.npz`` (one array per model input, in file order) and
``.pt``/``.pth`` files holding a tensor, or a list/tuple/dict of tensors, saved with
``torch.save``. numpy files are read with ``allow_pickle=False`` and torch files with
``torch.load(weights_only=True)``. The container is recognised from the file's first
bytes, whatever its extension says. Every problem is an :class:`InputError` with one
line that says what to do.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import InputError

NPY_MAGIC = b"\x93NUMPY"
MAX_RANK = 8
"""The most dimensions a model input may have (Conv3d takes 5; 8 leaves room): a deeper
array is a damaged or wrong file, refused before it reaches a kernel."""
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class UserInput:
    """The arrays of one input file, in order (``names`` from npz keys / dict keys)."""

    path: str
    format: str
    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]

    @property
    def first(self) -> np.ndarray:
        return self.arrays[0]

    def describe(self) -> str:
        parts = [f"{name} {shape_text(a.shape)} {a.dtype}" for name, a in
                 zip(self.names, self.arrays, strict=True)]
        return f"{self.path} ({self.format}: {', '.join(parts)})"

    def limited(self, batch: int | None) -> UserInput:
        """At most ``batch`` entries along the first axis of every array."""
        if batch is None:
            return self
        if batch < 1:
            raise InputError(f"--batch {batch}: give a positive number of samples")
        return UserInput(self.path, self.format, self.names,
                         tuple(a[:batch] if a.ndim else a for a in self.arrays))


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def read_input(path: str | os.PathLike[str]) -> UserInput:
    """Read ``path`` into numeric numpy arrays (float inputs as float32)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such input file; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; pass a .npy, .npz or .pt file")
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror}); check permissions") from exc
    if not head:
        raise InputError(f"{p}: the input file is empty; save an array with numpy.save")
    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    if head.startswith(NPY_MAGIC):
        names, arrays, fmt = ("input",), (_read_npy(p),), "npy"
    elif head.startswith(ZIP_MAGIC):
        names, arrays, fmt = _read_zip(p)
    elif head[:1] == b"\x80":
        names, arrays, fmt = (*_read_torch(p), "pt")
    else:
        raise InputError(f"{p}: not a .npy, .npz or torch.save file; save the input with "
                         "numpy.save(path, array)")
    checked = tuple(_numeric(p, name, a) for name, a in zip(names, arrays, strict=True))
    return UserInput(str(p), fmt, tuple(names), checked)


def _read_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{p}: the array holds Python objects (needs pickle, which "
                             "qinspect never loads); save a numeric array") from exc
        raise InputError(f"{p}: not a readable .npy file ({_line(exc)}); re-save it with "
                         "numpy.save") from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"{p}: truncated or corrupt .npy file ({_line(exc)}); re-save it "
                         "with numpy.save") from exc


def _read_zip(p: Path) -> tuple[tuple[str, ...], tuple[np.ndarray, ...], str]:
    from qinspect.loaders.archive import ZIP_ERRORS

    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except ZIP_ERRORS as exc:
        raise InputError(f"{p}: truncated or corrupt archive ({_line(exc)}); re-save it")\
            from exc
    if any(n.endswith("data.pkl") for n in names):
        return (*_read_torch(p), "pt")
    if not names or not all(n.endswith(".npy") for n in names):
        raise InputError(f"{p}: a zip archive that is neither .npz nor torch.save; save the "
                         "inputs with numpy.savez(path, x=array, ...)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = tuple(npz.files)
            arrays = tuple(npz[k] for k in keys)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{p}: an array in the .npz holds Python objects (needs pickle,"
                             " which qinspect never loads); save numeric arrays") from exc
        raise InputError(f"{p}: not a readable .npz ({_line(exc)}); re-save it") from exc
    except ZIP_ERRORS as exc:
        raise InputError(f"{p}: truncated or corrupt .npz ({_line(exc)}); re-save it") from exc
    if not keys:
        raise InputError(f"{p}: the .npz holds no arrays; save one array per model input")
    return keys, arrays, "npz"


def _read_torch(p: Path) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    import pickle

    import torch

    from qinspect.errors import LoadError
    from qinspect.loaders import archive

    try:  # the same structure and size checks as checkpoints, before torch allocates
        archive.check(p)
    except LoadError as exc:
        raise InputError(str(exc).replace("checkpoint", "input file")) from exc
    from qinspect.loaders._quiet import quiet_torch_warnings

    try:
        with quiet_torch_warnings(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's own chatter on a refused file
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{p}: refused: the file asks to run code or build objects "
                         "(weights-only loading allows tensors only); save a tensor with "
                         "torch.save(tensor, path)") from exc
    except Exception as exc:  # any torch.load failure is a bad file
        raise InputError(f"{p}: torch could not read it ({_line(exc)}); save a tensor with "
                         "torch.save(tensor, path)") from exc
    items: list[tuple[str, Any]]
    if isinstance(obj, torch.Tensor):
        items = [("input", obj)]
    elif isinstance(obj, (list, tuple)):
        items = [(f"input{i}", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    else:
        raise InputError(f"{p}: holds a {type(obj).__name__}, not a tensor; save a tensor "
                         "(or a list/dict of tensors) with torch.save")
    if not items:
        raise InputError(f"{p}: holds no tensors; save one tensor per model input")
    arrays = []
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{p}: entry {name!r} is a {type(value).__name__}, not a tensor")
        if value.is_quantized:
            value = value.dequantize()
        if value.dtype == torch.bfloat16 or value.dtype == torch.float16:
            value = value.float()
        try:
            arrays.append(value.detach().cpu().numpy())
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"{p}: entry {name!r} ({value.dtype}) cannot be read as "
                             "numbers") from exc
    return tuple(n for n, _ in items), tuple(arrays)


def _numeric(p: Path, name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "fc" and a.dtype.kind == "c":
        raise InputError(f"{p}: {name!r} is complex ({a.dtype}); quantized models take "
                         "real inputs")
    if a.dtype.kind not in "fiub":
        raise InputError(f"{p}: {name!r} has dtype {a.dtype}; save numbers "
                         "(float32 for model inputs)")
    if a.ndim > MAX_RANK:
        raise InputError(f"{p}: {name!r} has {a.ndim} dimensions {shape_text(a.shape)}; a "
                         f"model input has at most {MAX_RANK}: save the array the model "
                         "takes")
    if a.size == 0:
        raise InputError(f"{p}: {name!r} is empty {shape_text(a.shape)}; save at least one "
                         "sample")
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise InputError(f"{p}: {name!r} holds {bad} NaN/infinite values; verify needs "
                             "finite inputs")
    elif a.dtype.kind == "b":
        a = a.astype(np.float32)
    return a


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]

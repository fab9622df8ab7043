"""A whole FX ``GraphModule`` saved with ``torch.save(model)``.

Loading it the normal way needs code execution (``torch.load(weights_only=False)`` calls
``torch.fx.graph_module.reduce_graph_module``, which ``exec``s the pickled ``forward``
source), and with quantized convs torch 2.13 cannot load it even then
(``'Conv2d' object has no attribute '_modules'``, an upstream bug in unpickling modules
with a custom ``__getstate__``). qinspect reads it without either: the no-import pickle
walker (:mod:`qinspect.loaders.safe_pickle`) turns ``reduce_graph_module(body, imports)``
into a record of its arguments, ``body`` is the module's ``__dict__`` (``_modules``,
``_parameters``, ``_buffers``, ``_code``), and ``_code`` is *parsed* with :mod:`ast` to
connect layers. No class named by the file is imported and nothing in it is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qinspect.errors import UnsupportedFormatError
from qinspect.loaders.safe_pickle import Stub, load_pickle
from qinspect.loaders.tscode import Code, parse_fx
from qinspect.loaders.zipread import Archive
from qinspect.model import Checkpoint, Family, Level, Note

ROOT = "<pickled GraphModule>"
FORMAT = "FX GraphModule pickle (torch.save(model)), read without unpickling code"


def load(path: str | Path) -> Checkpoint:
    from dataclasses import replace

    from qinspect.loaders.torchscript import assemble

    p = Path(path)
    root, code = _read(p)
    ckpt = assemble(p, root, code, ROOT, FORMAT, Family.FX_PICKLE)
    note = Note(Level.INFO, "torch.save(model) pickles need code execution to load (and "
                "torch 2.13 cannot load them with quantized convs); qinspect read the "
                "tensors and the forward code as data. Prefer saving model.state_dict() or "
                "a TorchScript archive")
    return replace(ckpt, notes=(note, *ckpt.notes))


def read_script(p: Path) -> tuple[Stub, Code, str]:
    """(module tree with torch tensors, parsed forward, root name): what ``verify``
    runs."""
    from qinspect.loaders.tensors import to_torch

    root, code = _read(p)
    return to_torch(root), code, ROOT


def _read(p: Path) -> tuple[Stub, Code]:
    from qinspect.loaders.archive import printable, view_budget

    with Archive(p) as archive:
        obj = load_pickle(archive.read("data.pkl"), archive.storage_loader("data"),
                          f"{printable(str(p))} (data.pkl)",
                          view_budget=view_budget(archive.file_size))
    body = _body(obj)
    if body is None:
        raise UnsupportedFormatError(
            f"{p}: a pickled GraphModule in a layout qinspect does not know; save "
            "model.state_dict() with torch.save, or torch.jit.save(torch.jit.script(model))")
    root = Stub.__new__(Stub)
    root.__dict__["qualname"] = ROOT
    root.__dict__["state"] = body
    return root, parse_fx(body.get("_code"), ROOT)


def _body(obj: Any) -> dict | None:
    if isinstance(obj, Stub) and obj.qualname.endswith("reduce_graph_module") and obj.args:
        body = obj.args[0]
        if isinstance(body, dict) and isinstance(body.get("_modules"), dict):
            return body
    return None


"""Loading: path -> :class:`qinspect.model.Checkpoint`, one adapter per format.

:func:`qinspect.loaders.sniff.sniff` picks the adapter from the file's bytes:
eager and FX ``state_dict``s (torch.save), TorchScript archives (torch.jit.save),
torch.export archives (.pt2, e.g. after PT2E ``convert_pt2e``), torchao ``quantize_``
state_dicts, and whole pickled FX ``GraphModule``s (read as data, never executed).
"""

from __future__ import annotations

import os

from qinspect.model import Checkpoint, Family, Mode, Stage, Unrecognised


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read ``path`` safely (no code from the file runs) and normalise it."""
    from qinspect.loaders import hf
    from qinspect.loaders import sniff as S

    path = os.fspath(path)
    if hf.is_hf_input(path):
        return hf.load(path)
    found = S.sniff(path)
    if found.kind == S.TORCH_SAVE:
        return _load_state_dict(path)
    try:
        return _load_graph_format(path, found.kind)
    except (RecursionError, TypeError, AttributeError, KeyError, IndexError, ValueError,
            OverflowError) as exc:
        from qinspect.errors import LoadError

        what = S.printable(f"{type(exc).__name__}: {exc}".splitlines()[0][:160])
        raise LoadError(f"{S.printable(str(path))}: a {found.kind} file with a malformed "
                        f"structure ({what}); re-export it") from exc


def _load_graph_format(path: str, kind: str) -> Checkpoint:
    from qinspect.loaders import sniff as S

    found = S.Sniffed(kind)
    if found.kind == S.TORCHSCRIPT:
        from qinspect.loaders import torchscript

        return torchscript.load(path)
    if found.kind == S.EXPORT:
        from qinspect.loaders import export

        return export.load(path)
    if found.kind == S.FX_PICKLE:
        from qinspect.loaders import fx_pickle

        return fx_pickle.load(path)
    if found.kind == S.TORCHAO:
        from qinspect.loaders import torchao

        return torchao.load(path)
    raise AssertionError(kind)


def _load_state_dict(path: str | os.PathLike[str]) -> Checkpoint:
    from qinspect.loaders import eager, fx
    from qinspect.loaders.reader import read_checkpoint

    raw = read_checkpoint(path)
    is_fx = fx.looks_like_fx(raw.entries)
    if is_fx:
        layers, unrecognised, order_known = fx.build(raw)
    else:
        layers, unrecognised, order_known = eager.build_layers(raw)
    return Checkpoint(
        path=raw.path,
        format=fx.FORMAT if is_fx else "eager state_dict",
        family=Family.FX if is_fx else Family.EAGER,
        stage=stage_of(layers),
        file_size=raw.file_size,
        layers=tuple(layers),
        unrecognised=tuple(unrecognised + wrapper_extras(raw)),
        wrapper=raw.wrapper,
        module_order_known=order_known,
    )


def wrapper_extras(raw) -> list[Unrecognised]:
    from qinspect.loaders.tensors import describe

    return [
        Unrecognised(f"{key}", describe(value), f"outside the model's state_dict "
                     f"(beside '{raw.wrapper}' in the checkpoint dict)")
        for key, value in raw.extras.items()
    ]


def stage_of(layers: list) -> Stage:
    modes = {layer.mode for layer in layers}
    if modes & {Mode.STATIC, Mode.DYNAMIC, Mode.WEIGHT_ONLY, Mode.QUANTIZE}:
        return Stage.CONVERTED
    if Mode.QAT_PREPARED in modes:
        return Stage.QAT_PREPARED
    if Mode.PTQ_PREPARED in modes:
        return Stage.PTQ_PREPARED
    return Stage.FLOAT


_stage = stage_of  # backwards-compatible name

"""Loading: path -> :class:`qinspect.model.Checkpoint`, one adapter per format."""

from __future__ import annotations

import os

from qinspect.model import Checkpoint, Mode, Unrecognised


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read ``path`` safely (no code from the file runs) and normalise it."""
    from qinspect.loaders import eager
    from qinspect.loaders.reader import read_file
    from qinspect.loaders.tensors import describe

    raw = read_file(path)
    layers, unrecognised, order_known = eager.build_layers(raw)
    extras = [
        Unrecognised(f"{key}", describe(value), f"outside the model's state_dict "
                     f"(beside '{raw.wrapper}' in the checkpoint dict)")
        for key, value in raw.extras.items()
    ]
    return Checkpoint(
        path=raw.path,
        format="eager state_dict",
        stage=_stage(layers),
        file_size=raw.file_size,
        layers=tuple(layers),
        unrecognised=tuple(unrecognised + extras),
        wrapper=raw.wrapper,
        module_order_known=order_known,
    )


def _stage(layers: list) -> str:
    modes = {layer.mode for layer in layers}
    if modes & {Mode.STATIC, Mode.DYNAMIC, Mode.WEIGHT_ONLY, Mode.QUANTIZE}:
        return "converted"
    if Mode.QAT_PREPARED in modes:
        return "qat-prepared"
    if Mode.PTQ_PREPARED in modes:
        return "ptq-prepared"
    return "float"

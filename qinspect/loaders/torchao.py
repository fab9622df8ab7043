"""torchao ``quantize_`` state_dicts (``Int8WeightOnlyConfig``,
``Int8DynamicActivationInt8WeightConfig``, ``IntxWeightOnlyConfig(int4, PerGroup)``...).

torchao replaces ``weight`` by a tensor subclass (``Int8Tensor``,
``IntxUnpackedToInt8Tensor``, ...) whose pickled state holds ``qdata``, ``scale``,
``zero_point`` and ``block_size``. ``torch.load(weights_only=True)`` accepts those only
after ``import torchao`` registers its classes; qinspect needs neither: the no-import
pickle walker (:mod:`qinspect.loaders.safe_pickle`) rebuilds the plain tensors inside and
keeps the subclass's name and state as data. torchao itself (``pip install
qinspect[torchao]``) is only needed to *run* such a model (``verify``).

Granularity follows from ``block_size``: ``(1, in_features)`` is one scale per output row
(per-channel, axis 0); ``(1, g)`` with ``g < in_features`` is per group of ``g`` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.loaders import tensors as T
from qinspect.loaders.safe_pickle import Stub, WrapperSubclass, load_pickle
from qinspect.loaders.zipread import Archive
from qinspect.model import (
    Checkpoint,
    Family,
    Granularity,
    InputSource,
    KeyRef,
    Layer,
    Level,
    Mode,
    Note,
    OpKind,
    PerAxis,
    PerBlock,
    PerGroup,
    PerTensor,
    Role,
    SourceKind,
    TensorQuant,
    Unrecognised,
    Weight,
)

FORMAT = "torchao quantize_ state_dict"
INSTALL_HINT = "pip install 'qinspect[torchao]'"
MAPPING_TYPES = {1: "symmetric", 2: "symmetric (no clipping error)", 3: "asymmetric"}
INT_DTYPES = {"int8": "int8", "uint8": "uint8", "int4": "int4", "uint4": "uint4",
              "int2": "int4", "int1": "int4"}


def load(path: str | Path) -> Checkpoint:
    from qinspect.loaders.archive import printable, view_budget

    p = Path(path)
    with Archive(p) as archive:
        obj = load_pickle(archive.read("data.pkl"), archive.storage_loader("data"),
                          f"{printable(str(p))} (data.pkl)",
                          view_budget=view_budget(archive.file_size))
    entries, wrapper, extras = _unwrap(obj, p)
    return build(str(p), p.stat().st_size, entries, wrapper, extras)


def _unwrap(obj: Any, p: Path) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise UnsupportedFormatError(f"{p}: holds a {type(obj).__name__}, not a state_dict; "
                                     "save model.state_dict() after quantize_")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return dict(inner), key, {k: v for k, v in obj.items() if k != key}
    return dict(obj), None, {}


def build(path: str, size: int, entries: dict[str, Any], wrapper: str | None,
          extras: dict[str, Any]) -> Checkpoint:
    from qinspect.loaders import eager, stage_of
    from qinspect.loaders.reader import RawCheckpoint

    layers: list[Layer] = []
    unrecognised: list[Unrecognised] = []
    rest: dict[str, Any] = {}
    taken: set[str] = set()
    for key, value in entries.items():
        if isinstance(value, WrapperSubclass) and value.qualname.startswith("torchao."):
            module = key.rsplit(".", 1)[0] if "." in key else ""
            bias_key = f"{module}.bias" if module else "bias"
            bias = entries.get(bias_key)
            layer = _layer(module, key, value, bias_key if T.is_tensor(bias) else None, bias)
            if layer is None:
                unrecognised.append(Unrecognised(key, value.qualname, "torchao tensor subclass "
                                                 "without qdata/scale in its state"))
                continue
            layers.append(layer)
            taken.add(key)
            if T.is_tensor(bias):
                taken.add(bias_key)
        elif isinstance(value, Stub):
            unrecognised.append(Unrecognised(key, value.qualname, "an object qinspect does not "
                                             "know (kept as data, nothing was run)"))
            taken.add(key)
    for key, value in entries.items():
        if key not in taken:
            rest[key] = value
    if rest:
        raw = RawCheckpoint(path, size, "zip", rest, None, None, {})
        float_layers, bad, _ = eager.build_layers(raw)
        layers += float_layers
        unrecognised += bad
    unrecognised += [Unrecognised(k, T.describe(v), f"outside the model's state_dict (beside "
                                  f"'{wrapper}')") for k, v in extras.items()]
    if not any(lay.mode is not Mode.FLOAT for lay in layers):
        raise LoadError(f"{path}: no torchao quantized weight found")
    return Checkpoint(path=path, format=FORMAT, family=Family.TORCHAO, stage=stage_of(layers),
                      file_size=size,
                      layers=tuple(layers), unrecognised=tuple(unrecognised), wrapper=wrapper,
                      module_order_known=False,
                      notes=(Note(Level.INFO, f"read without torchao (no code from the file "
                                  f"runs); running the model needs {INSTALL_HINT}"),))


def _layer(module: str, key: str, value: WrapperSubclass, bias_key: str | None,
           bias: Any) -> Layer | None:
    state = value.state if isinstance(value.state, dict) else {}
    qdata, scale, zp = state.get("qdata"), state.get("scale"), state.get("zero_point")
    if not (T.is_tensor(qdata) and T.is_tensor(scale)):
        return None
    cls = value.qualname.rsplit(".", 1)[-1]
    block = tuple(int(b) for b in state.get("block_size") or ()) or None
    target = state.get("target_dtype")
    stored = T.dtype_name(qdata.dtype)
    dtype = INT_DTYPES.get(T.dtype_name(target), stored) if target is not None else stored
    values = T.int_values(qdata) if T.is_quantized(qdata) else T.float_values(qdata)
    scale_np = T.float_values(scale).astype(np.float64).reshape(-1)
    zp_np = (T.float_values(zp).astype(np.int64).reshape(-1) if T.is_tensor(zp)
             else np.zeros_like(scale_np, dtype=np.int64))
    shape = tuple(int(d) for d in qdata.shape)
    scheme, granularity = _granularity(shape, block)
    axis = granularity.axis if isinstance(granularity, PerAxis) else None
    quant = TensorQuant(dtype=dtype, qscheme=scheme, scale=scale_np, zero_point=zp_np,
                        axis=axis, block_size=block, granularity=granularity)
    notes = [Note(Level.INFO, f"torchao {cls}: qdata {stored} {list(shape)}, scale "
                  f"{list(scale.shape)}, block_size {list(block or ())} ({scheme})")]
    if dtype != stored:
        notes.append(Note(Level.INFO, f"{dtype} values stored unpacked, one per {stored} "
                          "byte (IntxUnpackedToInt8Tensor)"))
    weight = Weight(key, shape, dtype, values, quant, declared_dtype=stored)
    mode, source = _activation(state)
    refs = [KeyRef(key, Role.WEIGHT)]
    if bias_key:
        refs.append(KeyRef(bias_key, Role.BIAS))
    kind = "Linear" if len(shape) == 2 else f"{len(shape)}-D weight"
    return Layer(name=module, kind=f"{kind} ({cls})",
                 op=OpKind.LINEAR if len(shape) == 2 else OpKind.OTHER, tensor_class=cls,
                 mode=mode, keys=tuple(refs),
                 weight=weight, bias=T.float_values(bias) if bias_key else None,
                 bias_key=bias_key, input_source=source, notes=tuple(notes))


def _granularity(shape: tuple[int, ...], block: tuple[int, ...] | None
                 ) -> tuple[str, Granularity]:
    """torchao's ``block_size`` -> the qscheme label shown and the granularity as data."""
    if not block or len(block) != len(shape):
        return "block_affine", PerBlock(tuple(block or ()))
    if all(b == n for b, n in zip(block, shape, strict=True)):
        return "per_tensor_affine", PerTensor()
    if block[0] == 1 and all(b == n for b, n in zip(block[1:], shape[1:], strict=True)):
        return "per_channel_affine", PerAxis(0)
    if block[0] == 1 and len(block) == 2:
        return f"per_group_affine (group {block[1]})", PerGroup(block[1], 1)
    return "block_affine", PerBlock(block)


def _activation(state: dict[str, Any]) -> tuple[Mode, InputSource]:
    kwargs = state.get("act_quant_kwargs")
    act = state.get("activation_quantization")
    if kwargs is None and act is None:
        return Mode.WEIGHT_ONLY, InputSource(
            SourceKind.NOT_QUANTIZED, None, False,
            "weight-only: the float input is multiplied by the dequantized weight")
    if isinstance(kwargs, Stub):
        info = kwargs.state if isinstance(kwargs.state, dict) else {}
        gran = info.get("granularity")
        gran_name = gran.qualname.rsplit(".", 1)[-1] if isinstance(gran, Stub) else "?"
        mapping = info.get("mapping_type")
        code = mapping.args[0] if isinstance(mapping, Stub) and mapping.args else None
        how = MAPPING_TYPES.get(code, "?") if isinstance(code, int) else "?"
        text = (f"dynamic: each batch's activations are quantized at run time to int8 "
                f"({how}, granularity {gran_name}: one scale per row/token), then multiplied "
                "with the int8 weight")
    else:
        text = f"dynamic activation quantization at run time ({act})"
    return Mode.DYNAMIC, InputSource(SourceKind.DYNAMIC, None, False, text)

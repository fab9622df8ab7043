"""Plain-English sentences for each parameter of a layer, with the file's own numbers."""

from __future__ import annotations

import numpy as np

from qinspect.model import ActQuant, Layer, Mode, SourceKind
from qinspect.quant.dtypes import qdtype


def fmt(x: float) -> str:
    """Four significant digits, no exponent for ordinary magnitudes."""
    if not np.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def shifted(var: str, zero_point: int) -> str:
    """``var`` minus a zero point, signed as a person writes it: ``(q + 128)``, ``(q - 59)``,
    and plain ``q`` for a zero point of 0 (never ``q - -128`` or ``q - 0``)."""
    if zero_point == 0:
        return var
    sign = "-" if zero_point > 0 else "+"
    return f"({var} {sign} {abs(zero_point)})"


def plus(expr: str, zero_point: int) -> str:
    """``expr`` plus a zero point: ``round(x / s) + 59``, ``round(x / s) - 128``, or
    ``round(x / s)`` alone for 0."""
    if zero_point == 0:
        return expr
    return f"{expr} {'+' if zero_point > 0 else '-'} {abs(zero_point)}"


def act_range(act: ActQuant) -> tuple[float, float]:
    info = qdtype(act.dtype)
    return act.real_range(info.qmin, info.qmax)


def explain_layer(layer: Layer) -> list[str]:
    """Sentences answering: what does each stored number of this layer mean?"""
    out: list[str] = []
    if layer.mode is Mode.QUANTIZE and layer.output is not None:
        out.append(_explain_stub(layer))
        return out
    out.extend(_explain_weight(layer))
    if layer.bias is not None and layer.mode is Mode.STATIC and layer.weight is not None:
        out.append(f"the bias ({layer.bias.size} values) is stored in float; at run time it "
                   "is quantized to int32 with scale = input scale x weight scale "
                   "(per output channel) and zero point 0")
    elif layer.bias is not None and layer.mode is Mode.DYNAMIC:
        out.append("the bias stays float: dynamic layers add it after dequantizing")
    out.extend(_explain_input(layer))
    if layer.output is not None:
        out.append(_explain_output(layer))
    elif layer.mode is Mode.DYNAMIC:
        out.append("the output is float (dynamic quantization dequantizes the result)")
    for src, dst in layer.converts_to:
        out.append(f"convert will turn {src} into {dst}")
    return out


def _qparam_keys(act: ActQuant) -> str:
    """``fc1.scale = 0.0365 and fc1.zero_point = 59``."""
    values = (fmt(act.scale), str(act.zero_point))
    return " and ".join(f"{k} = {v}" for k, v in zip(act.keys, values, strict=True))


def _explain_stub(layer: Layer) -> str:
    out = layer.output
    assert out is not None
    lo, hi = act_range(out)
    keys = _qparam_keys(out)
    return (f"{keys} quantize the model's float input (the QuantStub): a real input x becomes "
            f"the byte {plus(f'round(x / {fmt(out.scale)})', out.zero_point)}, clamped to "
            f"[{qdtype(out.dtype).qmin}, {qdtype(out.dtype).qmax}], so inputs outside "
            f"[{fmt(lo)}, {fmt(hi)}] are clipped; this is the input scale of the first layer")


def _explain_weight(layer: Layer) -> list[str]:
    w = layer.weight
    if w is None:
        return []
    if w.quant is None:
        if layer.mode is Mode.FLOAT:
            return [f"{w.key} is a float weight {list(w.shape)}: this layer is not quantized"]
        return [f"{w.key} is a float weight {list(w.shape)} ({layer.mode.value})"]
    q = w.quant
    if not w.is_quantized:
        return [f"{w.key} is still float; convert will quantize it to {q.dtype} with the "
                f"fake-quant's {_scales_text(q.scale)} and zero point(s) "
                f"{_zp_text(q.zero_point)}"]
    scheme = (f"one scale per output channel (axis {q.axis}, {q.scale.size} channels)"
              if q.axis is not None else "one scale for the whole tensor")
    return [f"{w.key} holds the {w.stored_dtype} weight {list(w.shape)} with {scheme}: "
            f"{_scales_text(q.scale)}, zero point(s) {_zp_text(q.zero_point)}; an int value "
            f"q means (q - zero_point) x scale of its channel"]


def _scales_text(scale: np.ndarray) -> str:
    if scale.size == 1:
        return f"scale {fmt(float(scale[0]))}"
    return f"scales {fmt(float(np.min(scale)))} .. {fmt(float(np.max(scale)))}"


def _zp_text(zp: np.ndarray) -> str:
    uniq = np.unique(zp)
    if uniq.size == 1:
        return f"all {fmt(float(uniq[0])) if zp.dtype.kind == 'f' else int(uniq[0])}"
    return f"{fmt(float(uniq.min()))} .. {fmt(float(uniq.max()))}"


def _explain_input(layer: Layer) -> list[str]:
    src = layer.input_source
    if src is None:
        return []
    if src.kind is SourceKind.DYNAMIC:
        return ["the input is float; " + src.explanation + " (no input qparams are stored)"]
    if src.kind is SourceKind.NOT_QUANTIZED:
        return ["input: " + src.explanation]
    if layer.input is None:
        return ["input: " + src.explanation]
    inp = layer.input
    keys = " / ".join(inp.keys)
    return [f"the input is quantized with scale {fmt(inp.scale)} and zero point "
            f"{inp.zero_point} ({keys}): the {src.explanation}"]


def _explain_output(layer: Layer) -> str:
    out = layer.output
    assert out is not None
    lo, hi = act_range(out)
    keys = _qparam_keys(out)
    assumed = " (quint8 assumed: the file does not record it)" if out.dtype_assumed else ""
    return (f"{keys} are {layer.name}'s output-activation qparams: an output byte q means "
            f"{shifted('q', out.zero_point)} x {fmt(out.scale)}, so {layer.name} can output "
            f"values in [{fmt(lo)}, {fmt(hi)}]{assumed}")

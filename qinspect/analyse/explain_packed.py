"""Plain sentences for packed (Hugging Face) layers, with the file's own numbers."""

from __future__ import annotations

from qinspect.analyse.explain import fmt
from qinspect.analyse.packed import PackedHealth
from qinspect.model import ElementKind, Layer, ScaleOp, SourceKind

DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3": "float8 e4m3",
         "U8": "uint8", "I8": "int8", "I32": "int32", "I64": "int64"}


def explain_packed(layer: Layer, health: PackedHealth | None) -> list[str]:
    pw = layer.packed
    if pw is None:
        return []
    q = pw.quant
    el = q.element
    out = [f"{layer.name} is a {q.format} weight of logical shape {list(pw.shape)}: "
           f"{el.name} codes, {q.granularity.describe()}, "
           f"{'symmetric' if q.symmetric else 'asymmetric (zero points stored)'}"
           + (", act-order (g_idx)" if q.act_order else "")]
    for t in q.tensors:
        direction = ""
        said = any(w in t.meaning.lower() for w in ("multipl", "divis", "divide"))
        if t.op is ScaleOp.DIVIDE and not said:
            direction = " (divide by it)"
        elif t.op is ScaleOp.MULTIPLY and not said:
            direction = " (multiply by it)"
        out.append(f"{t.key} ({DTYPE.get(t.dtype, t.dtype)} {list(t.shape)}): {t.meaning}"
                   f"{direction}")
    if health is not None and not health.problems:
        s = health.scales
        spread = (f"the scale is {fmt(s.min)}" if s.count == 1 else
                  f"the scales range {fmt(s.min)} .. {fmt(s.max)} over {s.count} groups")
        out.append(spread
                   + (f"; {s.problems} are NaN, infinite, zero or negative" if s.problems
                      else ""))
        if el.kind is ElementKind.INT:
            zp = ""
            if health.zero_point_min is not None:
                zp = (f"; zero points {fmt(health.zero_point_min)} .. "
                      f"{fmt(health.zero_point_max or 0)}"
                      + (f" (the file stores zero - {q.zero_point_offset})"
                         if q.zero_point_offset else ""))
            out.append(f"the codes span {fmt(health.code_min)} .. {fmt(health.code_max)} of "
                       f"{fmt(el.qmin)} .. {fmt(el.qmax)}{zp}")
    out.append(f"dequantized as: {q.formula}")
    out.extend(_input(layer))
    return out


def _input(layer: Layer) -> list[str]:
    src = layer.input_source
    if src is None:
        return []
    act = layer.input
    if src.kind is SourceKind.OWN_SCALE and act is not None:
        key = act.keys[0] if act.keys else "input_scale"
        if act.op is ScaleOp.DIVIDE:
            return [f"{key} = {fmt(act.scale)} is the INPUT activation's global scale, a "
                    f"divisor: per-16 activation scales are computed at run time and divided "
                    f"by it (this is the input's scale, unlike eager PyTorch's fc1.scale, "
                    f"which is the output's)"]
        edge = fmt((448.0 if act.dtype.startswith("float8") else 127.0) * act.scale)
        return [f"{key} = {fmt(act.scale)} quantizes this layer's INPUT activation "
                f"(static, per tensor): x becomes {act.dtype} x / {fmt(act.scale)}, so inputs "
                f"outside [-{edge}, {edge}] are clipped (eager PyTorch's fc1.scale is "
                "the OUTPUT's scale; here the stored scale is the input's)"]
    return ["input: " + src.explanation]

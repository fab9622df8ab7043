"""Checks of Hugging Face quantized checkpoints that read the file alone.

Each function takes one layer (or the checkpoint) and returns the problems it finds as
one-line messages; ``check`` registers them as rules (ids in its catalogue). They are
pure: nothing here knows about configs of ``check`` or about rendering.
"""

from __future__ import annotations

import numpy as np

from qinspect.analyse.packed import scale_stats, structure_problems
from qinspect.model import Checkpoint, Layer, Level, PackedScheme, ScaleOp, SourceKind

UNCALIBRATED_INPUT_SCALE = 1.0
QKV = ("q_proj", "k_proj", "v_proj")
SHOWN = 3


def global_refs(layer: Layer) -> list[str]:
    pw = layer.packed
    if pw is None:
        return []
    return [t.key for t in pw.quant.tensors if "global" in t.meaning or "second-level"
            in t.meaning]


def scale_problems(layer: Layer) -> list[str]:
    """Per-group scales must be finite and > 0 (compressed-tensors #832: NaN scales of
    never-calibrated modules pack to 0x88888888 words that look normal)."""
    pw = layer.packed
    if pw is None or structure_problems(pw):
        return []
    s = scale_stats(pw.source.scales())
    if not s.problems:
        return []
    parts = [f"{n} {what}" for n, what in ((s.nan, "NaN"), (s.inf, "infinite"),
                                          (s.zero, "zero"), (s.negative, "negative")) if n]
    return [f"{', '.join(parts)} of {s.count} weight scales: those groups dequantize to "
            "NaN, infinity or zero (uncalibrated modules export uninitialised scales)"]


def global_scale_problems(layer: Layer) -> list[str]:
    """NVFP4 global scales 0 or infinite (TensorRT-LLM #16447: uncalibrated experts store
    0, which inverts to infinity), and input global scales likewise."""
    out = []
    pw = layer.packed
    keys = global_refs(layer)
    if pw is not None:
        for key in keys:
            src = pw.source
            value = float(np.asarray(src.ts.floats(key)).reshape(-1)[0])  # type: ignore[attr-defined]
            if not np.isfinite(value) or value == 0:
                out.append(f"{key} = {value}: a global scale must be finite and non-zero "
                           "(an uncalibrated module; dividing by it gives infinity)")
    act = layer.input
    if act is not None and act.op is ScaleOp.DIVIDE and (
            not np.isfinite(act.scale) or act.scale == 0):
        out.append(f"{act.keys[0]} = {act.scale}: the input global scale must be finite and "
                   "non-zero")
    return out


def config_problems(layer: Layer) -> list[str]:
    """Config vs tensors: a targeted, non-ignored Linear stored in float (vLLM #52501), or a
    module the config ignores stored quantized (the loader's warnings)."""
    return [n.message for n in layer.notes if n.level is Level.WARNING
            and ("config" in n.message)]


def shape_problems(layer: Layer) -> list[str]:
    return structure_problems(layer.packed) if layer.packed is not None else []


def gptq_v1_overflow(layer: Layer) -> list[str]:
    """GPTQ v1 stores ``zero - 1``; an asymmetric zero of 0 becomes -1, which AutoGPTQ's
    ``pack`` ORs in as 0xFFFFFFFF << shift, so the field and every higher field of its
    word read ``maxq`` (AutoGPTQ #293, GPTQModel #2350). A v1 field can legitimately hold
    at most ``maxq - 1``."""
    pw = layer.packed
    if pw is None or pw.quant.scheme is not PackedScheme.GPTQ_V1 or structure_problems(pw):
        return []
    src = pw.source
    stored = src.stored_zeros()  # type: ignore[attr-defined]
    maxq = (1 << pw.quant.element.bits) - 1
    bad = stored == maxq
    if not bad.any():
        return []
    return [f"{int(bad.sum())} of {bad.size} stored zero points equal {maxq}, the signature "
            "of the GPTQ v1 zero-point overflow: a zero point 0 was stored as -1 and "
            "overwrote the higher fields of its int32 word; re-export with "
            "checkpoint_format gptq_v2"]


def g_idx_problems(layer: Layer) -> list[str]:
    """``g_idx`` within ``[0, G)``, each group of the right size, monotonic unless
    act-order (vLLM #47255: out-of-range g_idx reads out of bounds)."""
    pw = layer.packed
    if pw is None or structure_problems(pw):
        return []
    key = next((t.key for t in pw.quant.tensors if "g_idx" in t.key), None)
    if key is None:
        return []
    src = pw.source
    g = np.asarray(src.ts.raw(key)).astype(np.int64).reshape(-1)  # type: ignore[attr-defined]
    groups = int(np.asarray(src.scales()).shape[0 if pw.quant.scheme.gptq else -1])
    cols = pw.shape[-1]
    out = []
    if g.size != cols:
        return [f"{key} has {g.size} entries for {cols} input columns"]
    bad = (g < 0) | (g >= groups)
    if bad.any():
        return [f"{int(bad.sum())} entries of {key} lie outside 0..{groups - 1} (first at "
                f"column {int(np.argmax(bad))}): a kernel would read outside the scales"]
    monotonic = bool(np.all(np.diff(g) >= 0))
    if not pw.quant.act_order and not monotonic:
        out.append(f"{key} is not monotonic but the config says desc_act/actorder is off")
    gran = pw.quant.granularity
    size = getattr(gran, "size", None)
    if size:
        counts = np.bincount(g, minlength=groups)
        full = counts[:-1] if cols % size else counts
        if np.any(full != size):
            out.append(f"{key}: groups hold {int(counts.min())}..{int(counts.max())} columns, "
                       f"not {size} each")
    return out


def input_scale_problems(layer: Layer) -> list[str]:
    """A static input scale of exactly 1.0 was never calibrated (the initial value)."""
    act = layer.input
    if (act is None or layer.input_source is None
            or layer.input_source.kind is not SourceKind.OWN_SCALE or act.op is not
            ScaleOp.MULTIPLY):
        return []
    if not np.isfinite(act.scale) or act.scale <= 0:
        return [f"{act.keys[0]} = {act.scale}: an input scale must be finite and > 0"]
    if act.scale == UNCALIBRATED_INPUT_SCALE:
        return [f"{act.keys[0]} = 1.0 exactly: the input scale looks uncalibrated (its "
                "initial value); calibrate with representative data"]
    return []


def qkv_input_scales(ckpt: Checkpoint) -> list[tuple[str, str]]:
    """q/k/v projections read the same input; static input scales that differ make vLLM
    take the largest (requantize_with_max_scale), so the others clip less than calibrated."""
    by_parent: dict[str, dict[str, float]] = {}
    for layer in ckpt.layers:
        parent, _, leaf = layer.name.rpartition(".")
        if leaf in QKV and layer.input is not None and layer.input.op is ScaleOp.MULTIPLY:
            by_parent.setdefault(parent, {})[leaf] = layer.input.scale
    out = []
    for parent, scales in by_parent.items():
        if len(scales) > 1 and len(set(scales.values())) > 1:
            shown = ", ".join(f"{k} {v:.6g}" for k, v in scales.items())
            out.append((parent, f"q/k/v input scales differ ({shown}); they quantize the same "
                                "input, and fused kernels use the largest"))
    return out


def bnb_weight_format(layer: Layer) -> list[str]:
    """bitsandbytes int8 ``weight_format`` must be 0 (row-major); other values are GPU tile
    layouts that bitsandbytes >= 0.45 no longer loads (``maybe_rearrange_weight``)."""
    pw = layer.packed
    if pw is None or pw.quant.scheme is not PackedScheme.BNB_INT8:
        return []
    key = next((t.key for t in pw.quant.tensors if t.key.endswith("weight_format")), None)
    if key is None:
        return []
    value = np.asarray(pw.source.ts.raw(key)).reshape(-1)  # type: ignore[attr-defined]
    if value.size and int(value[0]) != 0:
        return [f"{key} = {int(value[0])}: not the row-major layout (0); the int8 weight is "
                "tiled for a GPU kernel and loads wrongly elsewhere"]
    return []


LAYER_CHECKS = {
    "packed-scales": scale_problems,
    "global-scales": global_scale_problems,
    "config-vs-tensors": config_problems,
    "packed-shapes": shape_problems,
    "gptq-v1-zero-overflow": gptq_v1_overflow,
    "g-idx": g_idx_problems,
    "input-scale-calibrated": input_scale_problems,
    "bnb-weight-format": bnb_weight_format,
}

"""Tensors of a Hugging Face checkpoint -> layers with roles and decoding recipes.

Tensors are grouped by module (``model.layers.0.self_attn.q_proj``); each module's tensor
names and dtypes, with the config's ``quant_method``, decide its format. Every tensor ends
up in exactly one layer or in ``unrecognised``. Nothing is unpacked here: each quantized
layer carries a decoder that reads its tensors when a command needs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qinspect.loaders.hf import decode as D
from qinspect.loaders.hf.container import FLOAT_DTYPES, TensorSet
from qinspect.loaders.hf.hfconfig import QuantConfig, bool_field, int_field, matches, str_list
from qinspect.model import (
    ActQuant,
    ElementKind,
    ElementType,
    Granularity,
    InputSource,
    KeyRef,
    Layer,
    Level,
    Mode,
    Note,
    OpKind,
    PackedQuant,
    PackedScheme,
    PackedWeight,
    PerAxis,
    PerBlock,
    PerGroup,
    PerTensor,
    QTensorRef,
    Role,
    ScaleOp,
    SourceKind,
    Unrecognised,
)
from qinspect.render.text import safe

BNB_LEAVES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map",
              "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4")
GPTOSS = re.compile(r"^(?P<proj>\w+?_proj)(?:_(?P<leaf>blocks|scales|bias))?$")
MAX_BNB_STATE = 64 * 1024
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3":
               "float8_e4m3fn", "U8": "uint8", "I8": "int8", "I32": "int32", "F64": "float64"}
OUT = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def int_type(bits: int, signed: bool) -> ElementType:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return ElementType(f"{'int' if signed else 'uint'}{bits}", ElementKind.INT, bits, lo, hi)


FP8_E4M3 = ElementType("float8_e4m3fn", ElementKind.FLOAT, 8, -448.0, 448.0)
FP4_E2M1 = ElementType("float4_e2m1", ElementKind.FLOAT, 4, -6.0, 6.0)
NF4 = ElementType("nf4", ElementKind.CODEBOOK, 4, -1.0, 1.0)
BNB_FP4 = ElementType("fp4 (bitsandbytes table)", ElementKind.CODEBOOK, 4, -1.0, 1.0)


@dataclass
class Built:
    layers: list[Layer] = field(default_factory=list)
    unrecognised: list[Unrecognised] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)


def group_modules(names: list[str], method: str | None) -> dict[str, dict[str, str]]:
    """module -> {leaf: tensor name}, keeping the order of first appearance."""
    modules: dict[str, dict[str, str]] = {}
    for name in names:
        module, leaf = _split(name, method)
        modules.setdefault(module, {})[leaf] = name
    return modules


def _split(name: str, method: str | None) -> tuple[str, str]:
    for leaf in BNB_LEAVES:
        tail = ".weight." + leaf
        if name.endswith(tail):
            return name[:-len(tail)], "weight." + leaf
    module, _, leaf = name.rpartition(".")
    m = GPTOSS.match(leaf)
    if m and module.endswith("experts"):
        # fused MoE experts store tensors, not modules: experts.gate_up_proj_blocks ...
        return f"{module}.{m['proj']}", m["leaf"] or "weight"
    return module, leaf


def build(ts: TensorSet, cfg: QuantConfig) -> Built:
    out = Built()
    names = list(ts.tensors)
    for module, leaves in group_modules(names, cfg.method).items():
        layer, leftovers = _module(ts, cfg, module, leaves)
        if layer is not None:
            out.layers.append(layer)
            if layer.packed is not None:
                out.formats.append(layer.packed.quant.format)
        for leaf, key in leftovers.items():
            info = ts.tensors[key]
            out.unrecognised.append(Unrecognised(
                key=key, description=f"{info.dtype} {list(info.shape)}",
                reason=f"'{leaf}' is not a tensor qinspect knows for this module"))
    return out


# --- dispatch ----------------------------------------------------------------------------


def _module(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
            ) -> tuple[Layer | None, dict[str, str]]:
    def dt(leaf: str) -> str | None:
        return ts.tensors[leaves[leaf]].dtype if leaf in leaves else None

    kind = _weight_kind(leaves, dt, cfg)
    if kind is None:
        return _plain(ts, cfg, module, leaves)
    builder = BUILDERS[kind]
    return builder(ts, cfg, module, dict(leaves))


def _weight_kind(leaves: dict[str, str], dt: Any, cfg: QuantConfig) -> str | None:
    if "weight_packed" in leaves:
        if dt("weight_packed") == "I32":
            return "ct_int"
        if "weight_global_scale" in leaves:
            return "nvfp4_ct"
        if dt("weight_scale") == "U8":
            return "mxfp4_ct"
    if "weight.absmax" in leaves:
        return "bnb4"
    if "SCB" in leaves:
        return "bnb8"
    if "qweight" in leaves and "scales" in leaves:
        if cfg.method == "awq":
            return "awq"
        if cfg.method in ("gptq", None):
            return "gptq"
    if "blocks" in leaves and "scales" in leaves:
        return "mxfp4_gptoss"
    w = dt("weight")
    if w == "U8" and "weight_scale_2" in leaves:
        return "nvfp4_modelopt"
    if w in ("F8_E4M3", "F8_E5M2") and ("weight_scale_inv" in leaves or "weight_scale" in leaves):
        return "ct_float" if cfg.method == "compressed-tensors" else "fp8"
    if w == "I8" and "weight_scale" in leaves:
        return "ct_int"
    return None


# --- helpers -----------------------------------------------------------------------------


def _take(leaves: dict[str, str], *names: str) -> dict[str, str]:
    return {n: leaves.pop(n) for n in names if n in leaves}


def _ref(ts: TensorSet, key: str, meaning: str, op: ScaleOp | None = None) -> QTensorRef:
    info = ts.tensors[key]
    return QTensorRef(key=key, dtype=info.dtype, shape=info.shape, meaning=meaning, op=op)


def _nbytes(ts: TensorSet, keys: list[str]) -> int:
    return sum(ts.tensors[k].nbytes for k in keys)


def _bias(ts: TensorSet, leaves: dict[str, str]) -> tuple[np.ndarray | None, str | None]:
    key = leaves.pop("bias", None)
    if key is None or ts.tensors[key].dtype not in FLOAT_DTYPES:
        if key is not None:
            leaves["bias"] = key
        return None, None
    return ts.floats(key), key


def _small_ints(ts: TensorSet, key: str) -> list[int]:
    arr = ts.raw(key)
    if arr.size > 8:
        return []
    return [int(v) for v in np.asarray(arr).reshape(-1)]


def _activation(ts: TensorSet, leaves: dict[str, str], dynamic: bool | None,
                fp8: bool) -> tuple[ActQuant | None, InputSource, list[KeyRef], Mode | None]:
    """Input activation quantization: a stored static scale, dynamic, or none."""
    refs: list[KeyRef] = []
    scale_key = leaves.pop("input_scale", None)
    global_key = leaves.pop("input_global_scale", None)
    zp_key = leaves.pop("input_zero_point", None)
    if scale_key is not None or global_key is not None:
        key = scale_key or global_key
        assert key is not None
        values = ts.floats(key).reshape(-1)
        zp = int(ts.raw(zp_key).reshape(-1)[0]) if zp_key and ts.raw(zp_key).size else 0
        keys = tuple(k for k in (scale_key, global_key, zp_key) if k)
        refs = [KeyRef(k, Role.INPUT_QPARAMS) for k in keys]
        op = ScaleOp.DIVIDE if scale_key is None else ScaleOp.MULTIPLY
        act = ActQuant(scale=float(values[0]) if values.size else float("nan"), zero_point=zp,
                       dtype="float8_e4m3fn" if fp8 else ("float4_e2m1" if op is
                                                          ScaleOp.DIVIDE else "int8"),
                       dtype_assumed=False, keys=keys, op=op)
        how = ("divides" if op is ScaleOp.DIVIDE else "multiplies")
        src = InputSource(SourceKind.OWN_SCALE, None, False,
                          f"the layer quantizes its float input itself with the stored "
                          f"static scale ({how} the codes)")
        mode = Mode.DYNAMIC if op is ScaleOp.DIVIDE else Mode.STATIC
        return act, src, refs, mode
    if dynamic:
        return None, InputSource(SourceKind.DYNAMIC, None, False,
                                 "activations are quantized per token at run time (config: "
                                 "dynamic); nothing is stored"), refs, Mode.DYNAMIC
    return None, InputSource(SourceKind.NOT_QUANTIZED, None, False,
                             "weight-only: the input stays in the model's float dtype"), refs, None


LABELS = {OpKind.LINEAR: "linear", OpKind.EXPERTS: "experts", OpKind.NORM: "norm",
          OpKind.EMBEDDING: "embedding", OpKind.ATTENTION_KV: "attention (KV cache)",
          OpKind.PARAMETERS: "parameters"}
"""The label shown for each op of a Hugging Face checkpoint (OTHER: "vector" / "tensor")."""


def _layer(module: str, op: OpKind, mode: Mode, packed: PackedWeight, keys: list[KeyRef],
           bias: np.ndarray | None, bias_key: str | None, act: ActQuant | None,
           src: InputSource, notes: list[Note]) -> Layer:
    return Layer(name=module, kind=LABELS[op], op=op, mode=mode, keys=tuple(keys), bias=bias,
                 bias_key=bias_key, input=act, input_source=src, notes=tuple(notes),
                 packed=packed)


def _ct_group(cfg: QuantConfig, module: str) -> dict[str, Any]:
    """The compressed-tensors config group whose targets match ``module`` (first match)."""
    groups = cfg.get("config_groups") or {}
    if not isinstance(groups, dict):
        return {}
    for group in groups.values():
        if not isinstance(group, dict):
            continue
        targets = group.get("targets") or []
        if not isinstance(targets, list):
            continue
        if any(isinstance(t, str) and (t in ("Linear", "LinearBase") or matches(module, t))
               for t in targets):
            return group
    return {}


def _weights_args(cfg: QuantConfig, module: str) -> tuple[dict[str, Any], dict[str, Any]]:
    group = _ct_group(cfg, module)
    weights = group.get("weights") if isinstance(group.get("weights"), dict) else {}
    acts = group.get("input_activations")
    return weights or {}, acts if isinstance(acts, dict) else {}


def _ct_version_padded(cfg: QuantConfig, bits: int) -> bool:
    """compressed-tensors 0.17.x packed 3/5/6/7-bit values ``32 // b`` per word; 0.18 made
    the stream dense (commit 66e631f6)."""
    if 32 % bits == 0:
        return False
    version = cfg.get("version")
    if not isinstance(version, str):
        return False
    parts = re.findall(r"\d+", version)[:2]
    major_minor = tuple(int(p) for p in parts) if len(parts) == 2 else (0, 18)
    return major_minor < (0, 18)


# --- compressed-tensors ---------------------------------------------------------------------


def _build_ct_int(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                  ) -> tuple[Layer | None, dict[str, str]]:
    where = cfg.source or "config"
    wargs, aargs = _weights_args(cfg, module)
    packed = "weight_packed" in leaves
    bits = int_field(wargs, "num_bits", 4 if packed else 8, 1, 8, where) or 8
    keys = _take(leaves, "weight_packed", "weight", "weight_scale", "weight_zero_point",
                 "weight_g_idx", "weight_shape")
    main = keys.get("weight_packed") or keys["weight"]
    if packed and "weight_shape" in keys:
        dims = _small_ints(ts, keys["weight_shape"])
        shape = tuple(dims) if len(dims) == 2 else ts.tensors[main].shape
    elif packed:
        words = ts.tensors[main].shape
        shape = (words[0], words[-1] * 32 // bits)
    else:
        shape = ts.tensors[main].shape
    scale_key = keys.get("weight_scale")
    if scale_key is None:
        leaves.update(keys)
        return None, leaves
    scale_shape = ts.tensors[scale_key].shape
    gs = int_field(wargs, "group_size", None, 1, 1 << 20, where)
    strategy = wargs.get("strategy")
    gran = _ct_granularity(strategy, gs, scale_shape, shape)
    symmetric = "weight_zero_point" not in keys
    present = {"packed": keys.get("weight_packed"), "weight": keys.get("weight"),
               "scale": scale_key, "zero_point": keys.get("weight_zero_point"),
               "g_idx": keys.get("weight_g_idx")}
    role_keys = {k: v for k, v in present.items() if v}
    out_dtype = OUT.get(cfg.model_dtype, "BF16")
    dec = D.CTInt(ts, role_keys, tuple(shape),
                  {"bits": bits, "group_size": gs, "out_dtype": out_dtype,
                   "padded": packed and _ct_version_padded(cfg, bits)})
    tensors = [_ref(ts, main, f"the weight's {bits}-bit signed integer codes"
                    + (f", packed {32 // bits if 32 % bits == 0 else f'{32}/{bits}'} per int32 "
                       "word along the input (stored +" + str(1 << (bits - 1)) + ")"
                       if packed else "")),
               _ref(ts, scale_key, f"{gran.describe()} weight scale (multiplies (q - zp))",
                    ScaleOp.MULTIPLY)]
    if "weight_zero_point" in keys:
        tensors.append(_ref(ts, keys["weight_zero_point"],
                            "per-group weight zero point (signed"
                            + (", packed along the output" if ts.tensors[
                                keys["weight_zero_point"]].dtype == "I32" else "") + ")"))
    if "weight_g_idx" in keys:
        tensors.append(_ref(ts, keys["weight_g_idx"],
                            "act-order group index: input column c uses group g_idx[c]"))
    if "weight_shape" in keys:
        tensors.append(_ref(ts, keys["weight_shape"], "the unpacked weight's shape [O, I]"))
    fmt = ("compressed-tensors pack-quantized" if packed else
           "compressed-tensors int-quantized")
    quant = PackedQuant(
        format=fmt, scheme=PackedScheme.CT_INT, element=int_type(bits, True), granularity=gran,
        symmetric=symmetric,
        scale_dtype=ts.tensors[scale_key].dtype, tensors=tuple(tensors),
        formula=f"w = {DTYPE_NAMES.get(ts.tensors[scale_key].dtype, '?')}((q - zp) x scale), "
                "one rounding (compressed-tensors _dequantize)",
        packing=("little-endian bit stream of int32 words along the input" if packed
                 else "one int8 per value"),
        compute_dtype=DTYPE_NAMES.get(ts.tensors[scale_key].dtype, "?"),
        act_order="weight_g_idx" in keys)
    pw = PackedWeight(key=main, shape=tuple(shape), stored_dtype=ts.tensors[main].dtype,
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, aargs)


def _ct_granularity(strategy: Any, gs: int | None, scale_shape: tuple[int, ...],
                    shape: tuple[int, ...]) -> Granularity:
    if strategy == "group" and gs:
        return PerGroup(gs, 1)
    if strategy == "channel":
        return PerAxis(0)
    if strategy == "tensor":
        return PerTensor()
    if strategy == "block":
        return PerBlock((128, 128))
    n = int(np.prod(scale_shape)) if scale_shape else 1
    if n == 1:
        return PerTensor()
    if len(scale_shape) == 2 and scale_shape[1] == 1:
        return PerAxis(0)
    if len(scale_shape) == 2 and scale_shape[1] and len(shape) == 2:
        return PerGroup(-(-shape[1] // scale_shape[1]), 1)
    return PerTensor()


def _build_ct_float(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                    ) -> tuple[Layer | None, dict[str, str]]:
    where = cfg.source or "config"
    wargs, aargs = _weights_args(cfg, module)
    keys = _take(leaves, "weight", "weight_scale")
    shape = ts.tensors[keys["weight"]].shape
    strategy = wargs.get("strategy")
    block = wargs.get("block_structure")
    blk = None
    if strategy == "block":
        if (not isinstance(block, list) or len(block) != 2
                or not all(type(b) is int and 0 < b < 1 << 20 for b in block)):
            from qinspect.errors import LoadError

            raise LoadError(f"{safe(where)}: block_structure must be two positive integers; "
                            "fix the config")
        blk = (block[0], block[1])
    gran = (PerBlock(blk) if blk else
            _ct_granularity(strategy, int_field(wargs, "group_size", None, 1, 1 << 20, where),
                            ts.tensors[keys["weight_scale"]].shape, shape))
    dec = D.CTFloat(ts, {"weight": keys["weight"], "scale": keys["weight_scale"]},
                    tuple(shape), {"block": blk, "out_dtype": OUT.get(cfg.model_dtype, "BF16")})
    sdt = ts.tensors[keys["weight_scale"]].dtype
    quant = PackedQuant(
        format="compressed-tensors float-quantized (FP8)", scheme=PackedScheme.CT_FP8,
        element=FP8_E4M3, granularity=gran,
        symmetric=True, scale_dtype=sdt,
        tensors=(_ref(ts, keys["weight"], "the weight's FP8 E4M3 codes, one per byte"),
                 _ref(ts, keys["weight_scale"], f"{gran.describe()} weight scale (multiplies "
                      "the FP8 value)", ScaleOp.MULTIPLY)),
        formula=f"w = {DTYPE_NAMES.get(sdt, '?')}(fp8 x scale)", packing="one FP8 per byte",
        compute_dtype=DTYPE_NAMES.get(sdt, "?"))
    pw = PackedWeight(key=keys["weight"], shape=tuple(shape), stored_dtype="F8_E4M3",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, aargs, fp8=True)


#: compressed-tensors (True) and ModelOpt (False) NVFP4: same codes and block scales, a
#: global scale applied in opposite directions (``modelopt_nvfp4.py`` converter)
NVFP4_VARIANTS: dict[bool, dict[str, Any]] = {
    True: {"tensors": ("weight_packed", "weight_scale", "weight_global_scale"),
           "op": "divide", "format": "compressed-tensors nvfp4-pack-quantized",
           "scheme": PackedScheme.CT_NVFP4,
           "global": "float32 global weight scale, a DIVISOR: each block scale is divided "
                     "by it (448 x 6 / amax)",
           "formula": "w = fp4 x float32(float32(block_scale) / weight_global_scale)"},
    False: {"tensors": ("weight", "weight_scale", "weight_scale_2"),
            "op": "multiply", "format": "ModelOpt NVFP4", "scheme": PackedScheme.MODELOPT_NVFP4,
            "global": "float32 second-level weight scale, MULTIPLIED into each block scale "
                      "(amax / (6 x 448))",
            "formula": "w = fp4 x float32(float32(block_scale) x weight_scale_2)"},
}


def _build_nvfp4(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                 ) -> tuple[Layer | None, dict[str, str]]:
    variant = NVFP4_VARIANTS["weight_packed" in leaves]
    names = variant["tensors"]
    keys = _take(leaves, *names)
    roles = dict(zip(("packed", "scale", "global_scale"), (keys[n] for n in names),
                     strict=True))
    op, fmt, gmeaning, formula = (variant[k] for k in ("op", "format", "global", "formula"))
    packed_shape = ts.tensors[roles["packed"]].shape
    shape = (*packed_shape[:-1], packed_shape[-1] * 2)
    dec = D.NVFP4(ts, roles, tuple(shape), {"global_op": op,
                                           "out_dtype": OUT.get(cfg.model_dtype, "BF16")})
    quant = PackedQuant(
        format=fmt, scheme=variant["scheme"], element=FP4_E2M1, granularity=PerGroup(16, 1),
        symmetric=True,
        scale_dtype="F8_E4M3",
        tensors=(_ref(ts, roles["packed"], "the weight's FP4 (E2M1) codes, two per byte, low "
                      "nibble = even column"),
                 _ref(ts, roles["scale"], "per-group-of-16 FP8 E4M3 block scale (multiplies)",
                      ScaleOp.MULTIPLY),
                 _ref(ts, roles["global_scale"], gmeaning,
                      ScaleOp.DIVIDE if op == "divide" else ScaleOp.MULTIPLY)),
        formula=formula + ", cast to the model dtype", packing="two FP4 per byte",
        compute_dtype="float32")
    pw = PackedWeight(key=roles["packed"], shape=tuple(shape), stored_dtype="U8",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    _, aargs = _weights_args(cfg, module)
    return _finish(ts, cfg, module, leaves, pw, keys, aargs, global_keys={
        roles["global_scale"]})


def _build_mxfp4_ct(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                    ) -> tuple[Layer | None, dict[str, str]]:
    keys = _take(leaves, "weight_packed", "weight_scale")
    roles = {"packed": keys["weight_packed"], "scale": keys["weight_scale"]}
    return _mxfp4(ts, cfg, module, leaves, keys, roles, "compressed-tensors mxfp4-pack-quantized",
                  PackedScheme.CT_MXFP4)


def _build_mxfp4_gptoss(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                        ) -> tuple[Layer | None, dict[str, str]]:
    keys = _take(leaves, "blocks", "scales")
    roles = {"packed": keys["blocks"], "scale": keys["scales"]}
    return _mxfp4(ts, cfg, module, leaves, keys, roles, "MXFP4 (gpt-oss experts)",
                  PackedScheme.GPTOSS_MXFP4)


def _mxfp4(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str],
           keys: dict[str, str], roles: dict[str, str], fmt: str, scheme: PackedScheme
           ) -> tuple[Layer | None, dict[str, str]]:
    pshape = ts.tensors[roles["packed"]].shape
    shape = ((*pshape[:-2], pshape[-2] * 32) if len(pshape) == 4
             else (*pshape[:-1], pshape[-1] * 2))
    dec = D.MXFP4(ts, roles, tuple(shape), {"out_dtype": "BF16"})
    quant = PackedQuant(
        format=fmt, scheme=scheme, element=FP4_E2M1, granularity=PerGroup(32, len(shape) - 1),
        symmetric=True,
        scale_dtype="E8M0 (uint8)",
        tensors=(_ref(ts, roles["packed"], "the weight's FP4 (E2M1) codes, two per byte, low "
                      "nibble = even element"),
                 _ref(ts, roles["scale"], "per-group-of-32 E8M0 scale: a biased exponent e, "
                      "multiplies by 2^(e - 127)", ScaleOp.MULTIPLY)),
        formula="w = bfloat16(fp4 x 2^(e - 127))", packing="two FP4 per byte",
        compute_dtype="bfloat16")
    pw = PackedWeight(key=roles["packed"], shape=tuple(shape), stored_dtype="U8",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    _, aargs = _weights_args(cfg, module)
    return _finish(ts, cfg, module, leaves, pw, keys, aargs,
                   op=OpKind.EXPERTS if len(shape) == 3 else OpKind.LINEAR)


# --- GPTQ / AWQ ------------------------------------------------------------------------------


def _gptq_settings(cfg: QuantConfig, module: str) -> dict[str, Any]:
    where = cfg.source or "config"
    raw = cfg.raw
    settings = {"bits": int_field(raw, "bits", int_field(raw, "w_bit", 4, 2, 8, where), 2, 8,
                                  where),
                "group_size": int_field(raw, "group_size",
                                        int_field(raw, "q_group_size", 128, -1, 1 << 20, where),
                                        -1, 1 << 20, where),
                "desc_act": bool_field(raw, "desc_act", False, where),
                "sym": bool_field(raw, "sym", True, where)}
    dynamic = raw.get("dynamic")
    if isinstance(dynamic, dict):
        for pattern, override in dynamic.items():
            if not isinstance(pattern, str) or not isinstance(override, dict):
                continue
            pat = pattern[2:] if pattern.startswith(("+:", "-:")) else pattern
            if matches(module, "re:" + pat):
                for k in ("bits", "group_size"):
                    if k in override:
                        settings[k] = int_field(override, k, None, -1, 1 << 20, where)
                break
    return settings


def _build_gptq(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                ) -> tuple[Layer | None, dict[str, str]]:
    s = _gptq_settings(cfg, module)
    bits = s["bits"]
    keys = _take(leaves, "qweight", "qzeros", "scales", "g_idx")
    qw = ts.tensors[keys["qweight"]].shape
    if len(qw) != 2 or "qzeros" not in keys:
        leaves.update(keys)
        return None, leaves
    shape = (qw[1], qw[0] * 32 // bits)
    fmt_name = str(cfg.get("checkpoint_format") or cfg.get("format") or "gptq")
    v2 = fmt_name == "gptq_v2"
    gs = s["group_size"] if s["group_size"] and s["group_size"] > 0 else shape[1]
    roles: dict[str, str] = {k: keys[k] for k in ("qweight", "qzeros", "scales", "g_idx")
                             if k in keys}
    dec = D.GPTQ(ts, roles, shape, {"bits": bits, "group_size": gs,
                                    "zp_offset": 0 if v2 else 1})
    gran = PerAxis(0) if gs >= shape[1] else PerGroup(gs, 1)
    tensors = [_ref(ts, keys["qweight"], f"the weight's {bits}-bit unsigned codes, "
                    f"packed along the INPUT (rows of qweight), stored transposed [I, O]"),
               _ref(ts, keys["qzeros"], "per-group zero points packed along the output; "
                    + ("stored as is (gptq_v2)" if v2 else "stored as zero - 1 (GPTQ v1: "
                       "add 1 when decoding)")),
               _ref(ts, keys["scales"], f"{gran.describe()} scale, [G, O] (multiplies)",
                    ScaleOp.MULTIPLY)]
    if "g_idx" in keys:
        tensors.append(_ref(ts, keys["g_idx"], "group of each input row"
                            + (" (act-order: not monotonic)" if s["desc_act"] else
                               " (i // group_size without act-order)")))
    quant = PackedQuant(
        format=f"GPTQ {'v2' if v2 else 'v1'} ({fmt_name})",
        scheme=PackedScheme.GPTQ_V2 if v2 else PackedScheme.GPTQ_V1, element=int_type(bits, False),
        granularity=gran, symmetric=s["sym"],
        scale_dtype=ts.tensors[keys["scales"]].dtype, tensors=tuple(tensors),
        formula="w[o, i] = fp16(scales[g, o] x (q[i, o] - zero[g, o])), g = g_idx[i]",
        packing="little-endian bit stream of int32 words along the input",
        compute_dtype="float16", act_order=s["desc_act"],
        zero_point_offset=0 if v2 else 1)
    pw = PackedWeight(key=keys["qweight"], shape=shape, stored_dtype="I32",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, {})


def _build_awq(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
               ) -> tuple[Layer | None, dict[str, str]]:
    s = _gptq_settings(cfg, module)
    version = str(cfg.get("version", "gemm")).lower()
    keys = _take(leaves, "qweight", "qzeros", "scales")
    qw = ts.tensors[keys["qweight"]].shape
    if version != "gemm" or len(qw) != 2 or "qzeros" not in keys:
        from qinspect.errors import UnsupportedFormatError

        raise UnsupportedFormatError(
            f"{safe(cfg.source)}: AWQ version '{safe(version)}' is not read yet (GEMM is); "
            "nothing was guessed")
    shape = (qw[1] * 8, qw[0])
    gs = s["group_size"] if s["group_size"] and s["group_size"] > 0 else shape[1]
    dec = D.AWQ(ts, dict(keys), shape, {"group_size": gs})
    gran = PerGroup(gs, 1)
    quant = PackedQuant(
        format="AWQ GEMM", scheme=PackedScheme.AWQ_GEMM, element=int_type(4, False),
        granularity=gran, symmetric=False,
        scale_dtype=ts.tensors[keys["scales"]].dtype,
        tensors=(_ref(ts, keys["qweight"], "the weight's 4-bit unsigned codes, 8 per int32 "
                      "word along the OUTPUT in the order 0,2,4,6,1,3,5,7; stored [I, O/8]"),
                 _ref(ts, keys["qzeros"], "per-group zero points, packed like qweight, stored "
                      "as is"),
                 _ref(ts, keys["scales"], f"{gran.describe()} scale [G, O] (multiplies)",
                      ScaleOp.MULTIPLY)),
        formula="w[o, i] = fp16((q - zero[g, o]) x scales[g, o]), g = i // group_size",
        packing="int32 words along the output, interleaved nibble order",
        compute_dtype="float16")
    pw = PackedWeight(key=keys["qweight"], shape=shape, stored_dtype="I32",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, {})


# --- bitsandbytes ----------------------------------------------------------------------------


def _build_bnb4(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                ) -> tuple[Layer | None, dict[str, str]]:
    from qinspect.errors import LoadError

    state_leaf = next((leaf for leaf in leaves if leaf.startswith("weight.quant_state.")), None)
    keys = _take(leaves, "weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
                 "weight.nested_quant_map", *([state_leaf] if state_leaf else []))
    if state_leaf is None or "weight" not in keys or "weight.quant_map" not in keys:
        leaves.update(keys)
        return None, leaves
    state_key = keys[state_leaf]
    state = _bnb_state(ts, state_key)
    where = f"{safe(state_key)}"
    shape = state.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape)):
        raise LoadError(f"{where}: the quant state's 'shape' is not a list of integers; "
                        "re-export the checkpoint")
    blocksize = int_field(state, "blocksize", 64, 16, 1 << 16, where) or 64
    qtype = state.get("quant_type", state_leaf.rsplit("__", 1)[-1])
    nested = "weight.nested_absmax" in keys
    dtype = state.get("dtype", cfg.model_dtype)
    params = {"blocksize": blocksize, "out_dtype": OUT.get(str(dtype), "BF16")}
    roles = {"weight": keys["weight"], "absmax": keys["weight.absmax"],
             "quant_map": keys["weight.quant_map"]}
    if nested:
        if "weight.nested_quant_map" not in keys:
            raise LoadError(f"{where}: double quantization without nested_quant_map; "
                            "re-export the checkpoint")
        roles["nested_absmax"] = keys["weight.nested_absmax"]
        roles["nested_quant_map"] = keys["weight.nested_quant_map"]
        params["nested_blocksize"] = int_field(state, "nested_blocksize", 256, 16, 1 << 16,
                                               where)
        offset = state.get("nested_offset", 0.0)
        if not isinstance(offset, (int, float)) or isinstance(offset, bool):
            raise LoadError(f"{where}: nested_offset is not a number; re-export the checkpoint")
        params["nested_offset"] = float(offset)
    dec = D.BnB4(ts, roles, tuple(shape), params)
    element = NF4 if qtype == "nf4" else BNB_FP4
    tensors = [_ref(ts, keys["weight"], f"the flattened weight's 4-bit {safe(qtype)} codes, "
                    "two per byte, first value in the HIGH nibble"),
               _ref(ts, keys["weight.absmax"], f"absmax of each block of {blocksize} values "
                    "(multiplies the code)" + (", itself 8-bit quantized (double quant)"
                                               if nested else ""), ScaleOp.MULTIPLY),
               _ref(ts, keys["weight.quant_map"], f"the 16-entry {safe(qtype)} code table in "
                    "[-1, 1]")]
    if nested:
        tensors += [_ref(ts, keys["weight.nested_absmax"], "scale of each block of 256 absmax "
                         "codes (double quant)", ScaleOp.MULTIPLY),
                    _ref(ts, keys["weight.nested_quant_map"], "256-entry table decoding the "
                         "absmax codes (double quant)")]
    tensors.append(_ref(ts, state_key, "the quant state as JSON bytes (shape, blocksize, "
                        "dtype, nested offset)"))
    quant = PackedQuant(
        format=f"bitsandbytes 4-bit {safe(qtype).upper()}" + (" (double quant)" if nested else ""),
        scheme=PackedScheme.BNB_4BIT,
        element=element, granularity=PerGroup(blocksize, None), symmetric=True,
        scale_dtype="U8 (double quant)" if nested else "F32", tensors=tuple(tensors),
        formula="w = cast(code_table[q] x absmax[block]) computed in float32",
        packing="two 4-bit codes per byte, high nibble first", compute_dtype="float32")
    pw = PackedWeight(key=keys["weight"], shape=tuple(shape), stored_dtype=ts.tensors[
        keys["weight"]].dtype, nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, {})


def _bnb_state(ts: TensorSet, key: str) -> dict[str, Any]:
    from qinspect.errors import LoadError

    raw = ts.raw(key)
    if raw.size > MAX_BNB_STATE:
        raise LoadError(f"{safe(key)}: a {raw.size}-byte quant state; re-export the checkpoint")
    try:
        state = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LoadError(f"{safe(key)}: the bitsandbytes quant state is not JSON; re-export the "
                        "checkpoint") from exc
    if not isinstance(state, dict):
        raise LoadError(f"{safe(key)}: the bitsandbytes quant state is not a JSON object")
    return state


def _build_bnb8(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
                ) -> tuple[Layer | None, dict[str, str]]:
    keys = _take(leaves, "weight", "SCB", "weight_format")
    if "weight" not in keys:
        leaves.update(keys)
        return None, leaves
    shape = ts.tensors[keys["weight"]].shape
    dec = D.BnB8(ts, {"weight": keys["weight"], "SCB": keys["SCB"]}, tuple(shape), {})
    tensors = [_ref(ts, keys["weight"], "the weight's int8 codes (CB): round(w x 127 / row "
                    "absmax)"),
               _ref(ts, keys["SCB"], "per-row absmax of the weight (SCB); the scale is "
                    "SCB / 127", ScaleOp.MULTIPLY)]
    if "weight_format" in keys:
        tensors.append(_ref(ts, keys["weight_format"], "layout of the int8 weight (0 = row "
                            "major; other values are GPU tile layouts)"))
    quant = PackedQuant(
        format="bitsandbytes LLM.int8", scheme=PackedScheme.BNB_INT8, element=int_type(8, True),
        granularity=PerAxis(0),
        symmetric=True, scale_dtype="F32", tensors=tuple(tensors),
        formula="w = float32(float32(CB x SCB) x float32(1/127))", packing="one int8 per value",
        compute_dtype="float32")
    pw = PackedWeight(key=keys["weight"], shape=tuple(shape), stored_dtype="I8",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    return _finish(ts, cfg, module, leaves, pw, keys, {"dynamic": True})


# --- FP8 (transformers fp8 / AutoFP8 / ModelOpt) ---------------------------------------------


def _build_fp8(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
               ) -> tuple[Layer | None, dict[str, str]]:
    from qinspect.errors import LoadError

    where = cfg.source or "config"
    keys = _take(leaves, "weight", "weight_scale_inv", "weight_scale")
    shape = ts.tensors[keys["weight"]].shape
    block = cfg.get("weight_block_size")
    blk = None
    if "weight_scale_inv" in keys:
        if block is None:
            block = [128, 128]
        if (not isinstance(block, list) or len(block) != 2
                or not all(type(b) is int and 0 < b < 1 << 20 for b in block)):
            raise LoadError(f"{safe(where)}: weight_block_size must be two positive integers; "
                            "fix the config")
        blk = (block[0], block[1])
    scale_key = keys.get("weight_scale_inv") or keys["weight_scale"]
    gran: Granularity = PerBlock(blk) if blk else PerTensor()
    if not blk and int(np.prod(ts.tensors[scale_key].shape or (1,))) > 1:
        gran = PerAxis(0)
    modelopt = cfg.method == "modelopt"
    # transformers dequantizes in float32; ModelOpt in the model dtype (see decode.FP8)
    dec = D.FP8(ts, {"weight": keys["weight"], "scale": scale_key}, tuple(shape),
                {"block": blk, "scale_in_dtype": modelopt,
                 "out_dtype": OUT.get(cfg.model_dtype, "BF16") if modelopt else "F32"})
    meaning = ("per-128x128-block scale, MULTIPLIED despite its name (amax / 448)" if blk
               else f"{gran.describe()} weight scale (multiplies; amax / 448)")
    fmt = ("ModelOpt FP8" if modelopt else
           "FP8 block-wise (weight_scale_inv)" if blk else "FP8 per-tensor")
    quant = PackedQuant(
        format=fmt, scheme=PackedScheme.MODELOPT_FP8 if modelopt else PackedScheme.FP8,
        element=FP8_E4M3, granularity=gran, symmetric=True,
        scale_dtype=ts.tensors[scale_key].dtype,
        tensors=(_ref(ts, keys["weight"], "the weight's FP8 E4M3 codes, one per byte"),
                 _ref(ts, scale_key, meaning, ScaleOp.MULTIPLY)),
        formula=(f"w = {cfg.model_dtype}(fp8 x {cfg.model_dtype}(scale)) (ModelOpt "
                 "FP8QTensor.dequantize)" if modelopt else
                 "w = float32(fp8) x scale (transformers Fp8Dequantize)"),
        packing="one FP8 per byte", compute_dtype=cfg.model_dtype if modelopt else "float32")
    pw = PackedWeight(key=keys["weight"], shape=tuple(shape), stored_dtype="F8_E4M3",
                      nbytes=_nbytes(ts, list(keys.values())), quant=quant, source=dec)
    dynamic = cfg.get("activation_scheme", "dynamic") == "dynamic" or bool(blk)
    return _finish(ts, cfg, module, leaves, pw, keys, {"dynamic": dynamic}, fp8=True)


BUILDERS = {
    "ct_int": _build_ct_int, "ct_float": _build_ct_float, "nvfp4_ct": _build_nvfp4,
    "nvfp4_modelopt": _build_nvfp4, "mxfp4_ct": _build_mxfp4_ct,
    "mxfp4_gptoss": _build_mxfp4_gptoss, "gptq": _build_gptq, "awq": _build_awq,
    "bnb4": _build_bnb4, "bnb8": _build_bnb8, "fp8": _build_fp8,
}


# --- common tail: bias, activations, KV scales, notes ---------------------------------------


def _finish(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str],
            pw: PackedWeight, keys: dict[str, str], aargs: dict[str, Any], fp8: bool = False,
            op: OpKind = OpKind.LINEAR, global_keys: set[str] | None = None
            ) -> tuple[Layer, dict[str, str]]:
    refs = [KeyRef(pw.key, Role.WEIGHT)] + [
        KeyRef(k, Role.WEIGHT_SCALE) for k in keys.values() if k != pw.key]
    bias, bias_key = _bias(ts, leaves)
    if bias_key is None and "blocks" in keys and "bias" in leaves:
        bias, bias_key = ts.floats(leaves.pop("bias")), None
    if bias_key:
        refs.append(KeyRef(bias_key, Role.BIAS))
    dynamic = aargs.get("dynamic") if isinstance(aargs.get("dynamic"), bool) else (
        aargs.get("dynamic") == "local" or None)
    act_fp8 = fp8 or (aargs.get("type") == "float" and aargs.get("num_bits") == 8)
    act, src, act_refs, act_mode = _activation(ts, leaves, dynamic, act_fp8)
    refs += act_refs
    refs += [KeyRef(leaves.pop(leaf), Role.KV_CACHE_QPARAMS)
             for leaf in ("k_scale", "v_scale", "output_scale", "kv_scale") if leaf in leaves]
    mode = act_mode or Mode.WEIGHT_ONLY
    notes: list[Note] = []
    if _ignored(cfg, module):
        notes.append(Note(Level.WARNING, "the config leaves this module unquantized "
                          "(ignore / modules_to_not_convert), yet it is stored quantized"))
    layer = _layer(module, op, mode, pw, refs, bias, bias_key, act, src, notes)
    return layer, leaves


def _ignored(cfg: QuantConfig, module: str) -> str | None:
    for pattern in ignore_patterns(cfg):
        if matches(module, pattern):
            return pattern
    return None


def ignore_patterns(cfg: QuantConfig) -> list[str]:
    where = cfg.source or "config"
    out: list[str] = []
    for key in ("ignore", "modules_to_not_convert", "llm_int8_skip_modules", "ignored_layers",
                "exclude_modules"):
        out += str_list(cfg.raw, key, where)
    return out


def _plain(ts: TensorSet, cfg: QuantConfig, module: str, leaves: dict[str, str]
           ) -> tuple[Layer | None, dict[str, str]]:
    """A module with float tensors only (embeddings, norms, unquantized Linears), or KV
    cache scales alone (``self_attn.k_scale``)."""
    refs: list[KeyRef] = []
    notes: list[Note] = []
    kv = [leaf for leaf in ("k_scale", "v_scale", "q_scale", "k_zero_point", "v_zero_point")
          if leaf in leaves]
    for name in kv:
        refs.append(KeyRef(leaves.pop(name), Role.KV_CACHE_QPARAMS))
    weight_key = leaves.get("weight")
    if weight_key is not None and ts.tensors[weight_key].dtype in FLOAT_DTYPES:
        leaves.pop("weight")
        refs.insert(0, KeyRef(weight_key, Role.WEIGHT))
        info = ts.tensors[weight_key]
        kind, op = _float_kind(module, info.shape)
        bias, bias_key = _bias(ts, leaves)
        if bias_key:
            refs.append(KeyRef(bias_key, Role.BIAS))
        for leaf in list(leaves):
            key = leaves[leaf]
            if ts.tensors[key].dtype in FLOAT_DTYPES and leaf in ("running_mean", "running_var"):
                refs.append(KeyRef(leaves.pop(leaf), Role.PARAM))
        notes.append(_why_float(cfg, module, kind, op))
        from qinspect.model import Weight

        weight = Weight(key=weight_key, shape=info.shape, stored_dtype=DTYPE_NAMES.get(
            info.dtype, info.dtype.lower()), values=_LazyFloat(ts, weight_key))  # type: ignore[arg-type]
        return Layer(name=module, kind=kind, op=op, mode=Mode.FLOAT, keys=tuple(refs),
                     weight=weight,
                     bias=bias, bias_key=bias_key, notes=(notes[0],) if notes[0] else ()), leaves
    if refs:
        return Layer(name=module, kind=LABELS[OpKind.ATTENTION_KV], op=OpKind.ATTENTION_KV,
                     mode=Mode.STATIC, keys=tuple(refs)), leaves
    params = [leaf for leaf, key in leaves.items() if ts.tensors[key].dtype in FLOAT_DTYPES]
    if params:
        extras = {leaf: _LazyFloat(ts, leaves[leaf]) for leaf in params}
        refs = [KeyRef(leaves.pop(leaf), Role.PARAM) for leaf in params]
        return Layer(name=module, kind=LABELS[OpKind.PARAMETERS], op=OpKind.PARAMETERS,
                     mode=Mode.FLOAT, keys=tuple(refs),
                     extras=extras,  # type: ignore[arg-type]
                     notes=(Note(Level.INFO, "float parameters (" + ", ".join(params)
                                 + ") that are not quantized"),)), leaves
    return None, leaves


class _LazyFloat:
    """Float weights of unquantized modules, decoded only when an analysis reads them."""

    def __init__(self, ts: TensorSet, key: str) -> None:
        self._ts, self._key = ts, key
        info = ts.tensors[key]
        self.shape, self.size = info.shape, info.numel
        self.ndim = len(info.shape)
        self.dtype = np.dtype(np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self._ts.floats(self._key)
        return arr if dtype is None else arr.astype(dtype)


def _float_kind(module: str, shape: tuple[int, ...]) -> tuple[str, OpKind]:
    """Label and op of a float module, from its name and weight shape."""
    leaf = module.rsplit(".", 1)[-1].lower()
    if len(shape) == 1:
        op = OpKind.NORM if "norm" in leaf or "ln" in leaf else OpKind.OTHER
        return LABELS.get(op, "vector"), op
    if len(shape) == 3 and module.rsplit(".", 2)[-2:-1] == ["experts"]:
        op = OpKind.EXPERTS
    elif "embed" in leaf or "wte" in leaf or "wpe" in leaf:
        op = OpKind.EMBEDDING
    else:
        op = OpKind.LINEAR if len(shape) == 2 else OpKind.OTHER
    return LABELS.get(op, "tensor"), op


def _why_float(cfg: QuantConfig, module: str, kind: str, op: OpKind) -> Note:
    if cfg.method is None:
        return Note(Level.INFO, "stored in float")
    pattern = _ignored(cfg, module)
    if pattern is not None:
        return Note(Level.INFO, f"left in float on purpose: the config excludes it "
                                f"('{pattern}')")
    if op is not OpKind.LINEAR:
        return Note(Level.INFO, f"left in float: a {kind}, not a Linear the quantizer targets")
    if cfg.method != "compressed-tensors" and module.rsplit(".", 1)[-1] == "lm_head":
        # transformers' quantizers keep the output embedding in float
        # (get_keys_to_not_convert); compressed-tensors quantizes it when targeted
        return Note(Level.INFO, "left in float: lm_head is not quantized by default")
    if cfg.method == "gptq" and isinstance(cfg.get("dynamic"), dict) and any(
            isinstance(p, str) and p.startswith("-:") and matches(module, "re:" + p[2:])
            for p in cfg.get("dynamic")):
        return Note(Level.INFO, "left in float on purpose: the config's dynamic '-:' rule")
    if cfg.method == "compressed-tensors" and not _ct_group(cfg, module):
        return Note(Level.INFO, "left in float: no config group targets it")
    if cfg.method == "mxfp4":
        return Note(Level.INFO, "left in float: MXFP4 quantizes only the MoE experts")
    return Note(Level.WARNING, "the config targets this Linear, but it is stored in float "
                               "with no scales: an export problem (vLLM would load NaN scales)")

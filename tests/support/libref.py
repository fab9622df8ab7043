"""Library truth for the Hugging Face samples in sample_checkpoints/hf/ (issue 11).

For each sample, `truth(name)` returns the dequantized weight of every quantized module AS THE
PRODUCING LIBRARY COMPUTES IT (float32 numpy, [O, I]; gpt-oss experts [E, O, I]), the tensor
keys that library reads for the module, and the function that did it. `original(name)` returns
the float (bf16) weights the sample was quantized from, for diff tests.

Where the library is installed its own code runs:
- compressed-tensors 0.20.0: `BaseCompressor.get_value_from_registry(format).decompress`
  (the per-module decompression `ModelCompressor.decompress_model` calls).
- bitsandbytes 0.50.2: the default torch-ops kernels `backends/default/ops.py
  _dequantize_4bit_compute` / `_dequantize_blockwise_compute` (what `functional.dequantize_4bit`
  runs on the "default" backend) and `_ops.py int8_vectorwise_dequant` (default kernel). The
  reference doc (section 6.1) reports the CPU-native 4-bit kernel wrong when blocks span rows;
  that did not reproduce here (7x96, 10x100, 33x130, ... in bf16/fp16/fp32 agree bit for bit),
  and test_hf_samples.py checks the two agree on every bnb sample.
- transformers 5.24: `integrations/mxfp4.py convert_moe_packed_tensors` (gpt-oss),
  `integrations/finegrained_fp8.py _dequantize_fp8_weight` (block and per-tensor FP8).
- NVIDIA ModelOpt 0.47.0: `NVFP4QTensor.dequantize`, `FP8QTensor.dequantize`.
GPTQ and AWQ cannot run here (GPTQModel needs torch >= 2.14.1, AutoAWQ does not import): their
torch dequantization is re-implemented below with the same operations, dtypes and rounding order
as the cited functions.

This module must not import qinspect: it is the independent truth qinspect is compared with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "hf"

BASE_OF = {"ct_w4a16_sharded": "llama2_bf16", "mxfp4_gptoss": "gptoss_bf16"}
BASES = ("llama_bf16", "llama2_bf16", "gptoss_bf16")


@dataclass
class Truth:
    """Dequantized weights of one sample, as its producing library computes them."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dequantizer: str = ""
    unquantized: tuple[str, ...] = ()  # 2-D weights the library leaves in float


# ----------------------------------------------------------------------------- reading


def load_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sample (all shards named by the index, or model.safetensors)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(folder / f)))
    return tensors


def module_tensors(tensors: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """Local-name state dict of one module (`q_proj.weight_scale` -> `weight_scale`)."""
    prefix = module + "."
    return {k[len(prefix):]: v for k, v in tensors.items()
            if k.startswith(prefix) and "." not in k[len(prefix):]}


def _modules_with(tensors: dict[str, torch.Tensor], suffix: str) -> list[str]:
    return sorted(k[: -len(suffix) - 1] for k in tensors if k.endswith("." + suffix))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy()


def original(name: str) -> dict[str, np.ndarray]:
    """Float weights the sample was quantized from (bf16 -> float32), by module name.
    gpt-oss experts are returned as [E, O, I] under `...mlp.experts.<proj>`."""
    base = SAMPLES / BASE_OF.get(name, "llama_bf16")
    out: dict[str, np.ndarray] = {}
    for key, t in load_tensors(base).items():
        if key.endswith(".weight") and t.ndim == 2:
            out[key[: -len(".weight")]] = _np(t)
        elif key.endswith(("gate_up_proj", "down_proj")) and t.ndim == 3:
            out[key] = _np(t.transpose(1, 2))  # transformers stores [E, in, out]
    return out


# ----------------------------------------------------------------------------- compressed-tensors


def _ct_scheme(config: dict, module: str):
    """The config group whose targets match the module (all samples target "Linear")."""
    from compressed_tensors.quantization import QuantizationScheme

    qc = config["quantization_config"]
    (group,) = qc["config_groups"].values()
    fmt = group.get("format") or qc["format"]
    return QuantizationScheme.model_validate({k: v for k, v in group.items() if k != "format"}), fmt


def ct_truth(name: str) -> Truth:
    from compressed_tensors.compressors.base import BaseCompressor

    folder = SAMPLES / name
    config = load_config(folder)
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="compressed_tensors BaseCompressor.decompress (0.20.0)")
    modules = _modules_with(tensors, "weight_scale")
    for module in modules:
        local = module_tensors(tensors, module)
        scheme, fmt = _ct_scheme(config, module)
        compressor = BaseCompressor.get_value_from_registry(fmt)
        names = compressor.compression_param_names(scheme)
        if fmt in ("float-quantized", "int-quantized", "naive-quantized"):
            names = ("weight", *names) if "weight" not in names else names
        state = {k: local[k] for k in names if k in local}
        out = compressor.decompress(state, scheme)
        truth.weights[module] = _np(out["weight"])
        truth.keys[module] = tuple(sorted(module + "." + k for k in state))
    truth.unquantized = tuple(sorted(
        k[: -len(".weight")] for k, t in tensors.items()
        if k.endswith(".weight") and t.ndim == 2 and k[: -len(".weight")] not in modules))
    return truth


def ct_actorder_truth(name: str) -> Truth:
    """`actorder: group` (compressed-tensors <= 0.18, refused by 0.20's config validator).

    0.18's `_process_group` sorts the columns by `argsort(g_idx)`, dequantizes the now
    contiguous groups and undoes the permutation. The same steps run here with 0.20's
    `unpack_from_int32` and `dequantize` on the sorted columns (int4 unpacking is identical
    in both versions)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    folder = SAMPLES / name
    config = load_config(folder)
    (group,) = config["quantization_config"]["config_groups"].values()
    wargs = {k: v for k, v in group["weights"].items() if k not in ("actorder", "observer",
                                                                    "observer_kwargs")}
    args = QuantizationArgs(**wargs)
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="compressed_tensors 0.18 _process_group with g_idx "
                              "(0.20 unpack_from_int32 + dequantize on argsort(g_idx) columns)")
    for module in _modules_with(tensors, "weight_g_idx"):
        local = module_tensors(tensors, module)
        q = unpack_from_int32(local["weight_packed"], args.num_bits, local["weight_shape"])
        g_idx = local["weight_g_idx"].long()
        perm = torch.argsort(g_idx, stable=True)
        w_sorted = dequantize(q[:, perm], local["weight_scale"], None, args)
        w = torch.empty_like(w_sorted)
        w[:, perm] = w_sorted
        truth.weights[module] = _np(w)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in
                                          ("weight_packed", "weight_scale", "weight_shape",
                                           "weight_g_idx")))
    return truth


# ----------------------------------------------------------------------------- GPTQ


def _unpack_rows(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Unsigned codes from int32 words packed along dim 0 as a little-endian bitstream
    (element k at bit k*bits; 3-bit elements 10 and 21 of each 32 straddle two words) —
    the layout AutoGPTQ `qlinear_cuda.py QuantLinear.forward` unpacks with its `wf` shift
    table (2/4/8-bit) and its 3-bit word-splicing (`weight[:, 0, 10] = ...`)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty((n, *w.shape[1:]), dtype=torch.int64)
    mask = (1 << bits) - 1
    for k in range(n):
        word, off = divmod(k * bits, 32)
        v = w[word] >> off
        if off + bits > 32:
            v = v | (w[word + 1] << (32 - off))
        out[k] = v & mask
    return out


def gptq_truth(name: str) -> Truth:
    """AutoGPTQ `nn_modules/qlinear/qlinear_cuda.py QuantLinear.forward` (torch path, commit
    058fd80a) / GPTQModel `PackableQuantLinear.dequantize_weight`: codes and zeros unpacked to
    int8 (int16 for 8-bit), `zeros + 1` for checkpoint_format gptq (v1, GPTQModel converts v1
    to v2 on load by exactly this), then `scales[g_idx] * (weight - zeros[g_idx])` in the
    scales' fp16: one fp16 rounding. Returns W = that [I, O] matrix transposed."""
    folder = SAMPLES / name
    qc = load_config(folder)["quantization_config"]
    bits = qc["bits"]
    v1 = qc.get("checkpoint_format", qc.get("format", "gptq")) == "gptq"
    small = torch.int16 if bits == 8 else torch.int8
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="AutoGPTQ QuantLinear.forward torch path (re-implemented)")
    for module in _modules_with(tensors, "qweight"):
        local = module_tensors(tensors, module)
        scales, g_idx = local["scales"], local["g_idx"].long()
        in_f, out_f = g_idx.shape[0], scales.shape[1]
        weight = _unpack_rows(local["qweight"], bits, in_f).to(small)
        zeros = _unpack_rows(local["qzeros"].T, bits, out_f).T.to(small)
        if v1:
            zeros = zeros + 1
        w_t = scales[g_idx] * (weight - zeros[g_idx])
        assert w_t.dtype == torch.float16
        truth.weights[module] = _np(w_t.T)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in
                                          ("qweight", "qzeros", "scales", "g_idx")))
    return truth


# ----------------------------------------------------------------------------- AWQ

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def _awq_unpack(words: torch.Tensor) -> torch.Tensor:
    """AutoAWQ `utils/packing_utils.py unpack_awq` + `reverse_awq_order` + `& 0xF`:
    int32 [R, O/8] -> [R, O] with column 8w+c at nibble AWQ_REVERSE_ORDER[c]."""
    shifts = torch.arange(0, 32, 4)
    nib = (words[:, :, None] >> shifts[None, None, :]).to(torch.int8)
    nib = nib.view(words.shape[0], -1)
    r, n = nib.shape
    order = torch.arange(n).view(-1, 8)[:, AWQ_REVERSE_ORDER].view(-1)
    return torch.bitwise_and(nib[:, order], 15)


def awq_truth(name: str) -> Truth:
    """AutoAWQ `utils/packing_utils.py dequantize_gemm` (commit 88e4c76b): unpack + reorder
    qweight and qzeros, repeat zeros and scales over the group, `(iweight - izeros) * scales`
    in fp16. Returns W = [I, O].T."""
    folder = SAMPLES / name
    gs = load_config(folder)["quantization_config"]["group_size"]
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="AutoAWQ dequantize_gemm (re-implemented)")
    for module in _modules_with(tensors, "qweight"):
        local = module_tensors(tensors, module)
        iweight = _awq_unpack(local["qweight"])
        izeros = _awq_unpack(local["qzeros"]).repeat_interleave(gs, dim=0)
        scales = local["scales"].repeat_interleave(gs, dim=0)
        w_t = (iweight - izeros) * scales
        assert w_t.dtype == torch.float16
        truth.weights[module] = _np(w_t.T)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in ("qweight", "qzeros", "scales")))
    return truth


# ----------------------------------------------------------------------------- bitsandbytes


def bnb_4bit_state(local: dict[str, torch.Tensor]):
    """bitsandbytes `QuantState.from_dict` over the saved `weight.*` tensors."""
    from bitsandbytes.functional import QuantState

    qs = {k[len("weight."):]: v for k, v in local.items() if k.startswith("weight.")}
    return QuantState.from_dict(qs, device=torch.device("cpu"))


def bnb_dequant_4bit_default(packed: torch.Tensor, qs) -> torch.Tensor:
    """`functional.dequantize_4bit` with the "default" backend kernels of bitsandbytes 0.50.2:
    double quant restores absmax with `_dequantize_blockwise_compute` + offset, then
    `_dequantize_4bit_compute` (fp32 code x absmax, cast to the state dtype). The kernels are
    called unwrapped (`__wrapped__`) to skip their torch.compile attempt."""
    from bitsandbytes.backends.default import ops as default_ops
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = qs.absmax
    if qs.nested:
        absmax = default_ops._dequantize_blockwise_compute.__wrapped__(
            qs.absmax.reshape(-1), qs.state2.absmax, qs.state2.code, qs.state2.blocksize,
            torch.float32)
        absmax = absmax + qs.offset
        absmax = absmax.float()
    code = _get_4bit_code(qs.quant_type, packed.device)
    return default_ops._dequantize_4bit_compute.__wrapped__(
        packed.view(torch.uint8).reshape(-1), absmax, code, qs.blocksize, qs.shape, qs.dtype)


def bnb_truth(name: str) -> Truth:
    folder = SAMPLES / name
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="bitsandbytes default kernels _dequantize_4bit_compute / "
                              "int8_vectorwise_dequant")
    modules_8 = _modules_with(tensors, "SCB")
    for module in modules_8:
        local = module_tensors(tensors, module)
        cb, scb = local["weight"], local["SCB"]
        # bitsandbytes `_ops.py int8_vectorwise_dequant` default kernel:
        w = cb * scb.view(-1, 1) * 7.874015718698502e-3
        truth.weights[module] = _np(w)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in
                                          ("weight", "SCB", "weight_format")))
    quant_state_keys = [k for k in tensors if ".weight.quant_state.bitsandbytes__" in k]
    for key in sorted(quant_state_keys):
        module = key.split(".weight.quant_state.")[0]
        local = {k[len(module) + 1:]: v for k, v in tensors.items()
                 if k.startswith(module + ".weight")}
        qs = bnb_4bit_state(local)
        truth.weights[module] = _np(bnb_dequant_4bit_default(local["weight"], qs))
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in local))
    return truth


# ----------------------------------------------------------------------------- FP8


def fp8_truth(name: str) -> Truth:
    """transformers `integrations/finegrained_fp8.py _dequantize_fp8_weight` (fp32): block FP8
    `weight * weight_scale_inv[block]` (partial edge blocks included), per-tensor
    `weight * weight_scale`. (transformers 5.24's load-time `Fp8Dequantize._dequantize_one`
    raises on a scale grid that does not divide the weight: partial edge blocks.)"""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    folder = SAMPLES / name
    qc = load_config(folder)["quantization_config"]
    block = qc.get("weight_block_size")
    scale_name = "weight_scale_inv" if block else "weight_scale"
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="transformers _dequantize_fp8_weight")
    for module in _modules_with(tensors, scale_name):
        local = module_tensors(tensors, module)
        w = _dequantize_fp8_weight(local["weight"], local[scale_name], block, torch.float32)
        truth.weights[module] = _np(w)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in ("weight", scale_name)))
    return truth


# ----------------------------------------------------------------------------- ModelOpt


def modelopt_truth(name: str) -> Truth:
    """NVIDIA ModelOpt 0.47.0 `NVFP4QTensor.dequantize` (f32 `weight_scale * weight_scale_2`,
    e2m1 x that, cast to bf16) and `FP8QTensor.dequantize` (`weight * weight_scale`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.qtensor.fp8_tensor import FP8QTensor
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    folder = SAMPLES / name
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="modelopt NVFP4QTensor/FP8QTensor.dequantize")
    for module in _modules_with(tensors, "weight_scale"):
        local = module_tensors(tensors, module)
        w = local["weight"]
        if "weight_scale_2" in local:
            shape = torch.Size((w.shape[0], w.shape[1] * 2))
            qt = NVFP4QTensor(shape, torch.bfloat16, w)
            deq = qt.dequantize(dtype=torch.bfloat16, scale=local["weight_scale"],
                                double_scale=local["weight_scale_2"], block_sizes={-1: 16})
            keys = ("weight", "weight_scale", "weight_scale_2")
        else:
            qt = FP8QTensor(w.shape, torch.bfloat16, w)
            deq = qt.dequantize(dtype=torch.bfloat16, scale=local["weight_scale"])
            keys = ("weight", "weight_scale")
        truth.weights[module] = _np(deq)
        truth.keys[module] = tuple(sorted(f"{module}.{k}" for k in keys))
    return truth


# ----------------------------------------------------------------------------- gpt-oss


def gptoss_truth(name: str) -> Truth:
    """transformers `integrations/mxfp4.py convert_moe_packed_tensors` (bf16 LUT, ldexp by
    scale - 127, result [E, in, out]); returned transposed to [E, out, in]."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    folder = SAMPLES / name
    tensors = load_tensors(folder)
    truth = Truth(dequantizer="transformers convert_moe_packed_tensors")
    for key in sorted(k for k in tensors if k.endswith("_blocks")):
        module = key[: -len("_blocks")]
        w = convert_moe_packed_tensors(tensors[key], tensors[module + "_scales"],
                                       dtype=torch.bfloat16)
        truth.weights[module] = _np(w.transpose(1, 2))
        truth.keys[module] = (module + "_blocks", module + "_scales")
    return truth


# ----------------------------------------------------------------------------- registry

TRUTH = {
    "ct_w4a16_group": ct_truth,
    "ct_w4a16_asym": ct_truth,
    "ct_w8a16_channel": ct_truth,
    "ct_w8a8_int": ct_truth,
    "ct_fp8_tensor": ct_truth,
    "ct_fp8_block": ct_truth,
    "ct_nvfp4": ct_truth,
    "ct_mxfp4": ct_truth,
    "ct_w4a16_sharded": ct_truth,
    "ct_w4a16_actorder": ct_actorder_truth,
    "gptq_v1_sym": gptq_truth,
    "gptq_v1_asym": gptq_truth,
    "gptq_v2_asym": gptq_truth,
    "gptq_desc_act": gptq_truth,
    "gptq_8bit": gptq_truth,
    "gptq_3bit": gptq_truth,
    "awq_gemm": awq_truth,
    "bnb_nf4": bnb_truth,
    "bnb_nf4_dq": bnb_truth,
    "bnb_fp4": bnb_truth,
    "bnb_int8": bnb_truth,
    "fp8_block_deepseek": fp8_truth,
    "fp8_tensor_static": fp8_truth,
    "modelopt_nvfp4": modelopt_truth,
    "modelopt_fp8": modelopt_truth,
    "mxfp4_gptoss": gptoss_truth,
}


def truth(name: str) -> Truth:
    """Dequantized weights of sample `name` as its producing library computes them."""
    return TRUTH[name](name)


def available() -> list[str]:
    """Samples of TRUTH that exist on disk."""
    return [n for n in TRUTH if (SAMPLES / n / "config.json").exists()]


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = ((got.astype(np.float64) - ref.astype(np.float64)) ** 2).sum()
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / err))


if __name__ == "__main__":  # worst-module SQNR per sample: the numbers test_hf_samples.py bounds
    for sample in available():
        t, o = truth(sample), original(sample)
        worst = min(_sqnr_db(o[m], w) for m, w in t.weights.items())
        print(f"{sample:22s} {len(t.weights):2d} modules  worst SQNR {worst:6.2f} dB"
              f"  {t.dequantizer}")

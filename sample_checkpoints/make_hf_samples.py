"""Make the Hugging Face-format quantized sample checkpoints in sample_checkpoints/hf/ (issue 11).

Every sample is a folder as its producer writes it (config.json with `quantization_config`,
model.safetensors or shards + index, hf_quant_config.json for ModelOpt). Where the producing
library runs on CPU it makes the file itself:

- compressed-tensors 0.20.0: `apply_quantization_config`, qparams from `calculate_qparams` /
  `generate_gparam` on min/max taken as llm-compressor's MinMax observer takes them
  (`src/llmcompressor/observers/helpers.py flatten_for_calibration`: one min/max per
  tensor / row / group / block), then `ModelCompressor.compress_model` + `save_pretrained` +
  `update_config`.
- bitsandbytes 0.50.2 (CPU backend) through transformers `from_pretrained(...,
  quantization_config=BitsAndBytesConfig(...))` of the bf16 folder, then `save_pretrained`.
- NVIDIA ModelOpt 0.47.0: `mtq.quantize` (max calibration) + `export_hf_checkpoint`.

GPTQ, AWQ, DeepSeek/transformers block FP8, AutoFP8 and gpt-oss MXFP4 files are built here as
the producers' packing code lays them out (each function cites the code it follows), because
GPTQModel needs torch >= 2.14.1, AutoAWQ does not import, transformers' FP8 quantizer skips
weights whose shape is not a multiple of the block, and gpt-oss quantization needs triton.

Run `python sample_checkpoints/make_hf_samples.py [--out DIR] [--only NAME ...]`; the output is
byte-identical from run to run (fixed seeds, single thread).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "hf"

SEED = 20261202
VOCAB = 256
LLAMA = dict(
    hidden_size=128,
    intermediate_size=320,  # 320 = 2.5 x 128: FP8 128x128 blocks have partial edge blocks
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIB_BATCHES = 4
CALIB_SEQ = 16


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet():
    """Silence library progress bars and warnings while a producer runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            yield


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _name_seed(name: str) -> int:
    """A per-tensor seed that differs between tensors (stable across runs, unlike hash())."""
    return SEED + zlib.crc32(name.encode())


def llama_model(layers: int = 1):
    """The tiny Llama, random weights from a fixed seed, in bf16 (eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED + layers)
    config = LlamaConfig(**{**LLAMA, "num_hidden_layers": layers})
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    # transformers draws every Linear from N(0, 0.02); scale each row by a factor in
    # [0.5, 1.5) so rows and groups have different ranges, as in trained checkpoints.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                rows = torch.rand(p.shape[0], 1, generator=_seeded(_name_seed(name))) + 0.5
                p.mul_(rows)
    return model.to(torch.bfloat16).eval()


def calib_tokens() -> torch.Tensor:
    """Random calibration token batches [CALIB_BATCHES, CALIB_SEQ] (ids < VOCAB)."""
    return torch.randint(0, VOCAB, (CALIB_BATCHES, CALIB_SEQ), generator=_seeded(SEED + 7))


def sample_tokens() -> np.ndarray:
    """`hf/inputs/tokens.npy`: int64 [2, 16] token ids for later verify work."""
    return torch.randint(0, VOCAB, (2, 16), generator=_seeded(SEED + 11)).numpy().astype(np.int64)


def quantized_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LINEARS
    ]


def collect_inputs(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs [N, I] (float32) of every decoder Linear over the calibration batches."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, mod in quantized_linears(model):
        def hook(_m, args, _out, name=name):
            x = args[0].detach().float()
            seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]))
        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for row in tokens:
            model(row[None])
    for h in hooks:
        h.remove()
    return {name: torch.cat(chunks) for name, chunks in seen.items()}


def hessian_order(x: torch.Tensor) -> torch.Tensor:
    """GPTQ act-order permutation: columns by decreasing diag(H) = sum of x^2
    (AutoGPTQ `quantization/gptq.py fasterquant`: `perm = torch.argsort(torch.diag(H),
    descending=True)`)."""
    return torch.argsort((x.double() ** 2).sum(0), descending=True, stable=True)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def save_config(folder: Path, model_config, quantization_config: dict | None) -> None:
    """config.json as transformers writes it, plus the producer's `quantization_config`."""
    config = copy.deepcopy(model_config)
    if quantization_config is not None:
        config.quantization_config = quantization_config
    config.save_pretrained(str(folder))


def plain_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- base models


def make_llama_bf16(out: Path, name: str = "llama_bf16", layers: int = 1) -> None:
    model = llama_model(layers)
    with _quiet():
        model.save_pretrained(str(out / name))


# ----------------------------------------------------------------------------- compressed-tensors


def _observe_weight(weight: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """min/max per strategy, as llm-compressor's MinMax observer reduces a weight
    (`observers/helpers.py flatten_for_calibration`, then amin/amax over the last dim)."""
    w = weight.float() if weight.dtype not in (torch.bfloat16, torch.float16) else weight
    strategy = str(args.strategy.value if hasattr(args.strategy, "value") else args.strategy)
    rows, cols = w.shape
    if strategy == "tensor":
        return w.amin().reshape(1), w.amax().reshape(1)
    if strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if strategy in ("group", "tensor_group"):
        g = w.reshape(rows, cols // args.group_size, args.group_size)
        return g.amin(-1), g.amax(-1)
    if strategy == "block":
        bh, bw = args.block_structure
        nr, nc = math.ceil(rows / bh), math.ceil(cols / bw)
        mins = torch.empty(nr, nc, dtype=w.dtype)
        maxs = torch.empty(nr, nc, dtype=w.dtype)
        for i in range(nr):
            for j in range(nc):
                blk = w[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]
                mins[i, j], maxs[i, j] = blk.amin(), blk.amax()
        return mins, maxs
    raise ValueError(strategy)


def float_stats(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """From the float model, before quantization is applied: the inputs of every decoder
    Linear, and the post-RoPE keys / values of every attention block (`<attn>.k`, `<attn>.v`),
    over the calibration batches."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    stats = collect_inputs(model, tokens)
    for name, attn in model.named_modules():
        if not hasattr(attn, "k_proj"):
            continue
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        hk = attn.k_proj.register_forward_hook(
            lambda _m, _a, o, store=keys: store.append(o.detach()))
        hv = attn.v_proj.register_forward_hook(
            lambda _m, _a, o, store=values: store.append(o.detach()))
        with torch.no_grad():
            for row in tokens:
                model(row[None])
        hk.remove()
        hv.remove()
        rotated = []
        for k in keys:
            b, t, _ = k.shape
            k = k.view(b, t, -1, attn.head_dim).transpose(1, 2)
            cos, sin = model.model.rotary_emb(k, torch.arange(t)[None])
            rotated.append(apply_rotary_pos_emb(k, k, cos, sin)[1].float().flatten())
        stats[name + ".k"] = torch.cat(rotated)
        stats[name + ".v"] = torch.cat([v.float().flatten() for v in values])
    return stats


def _minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin().reshape(1), x.amax().reshape(1)


def _calibrate_ct(model, stats: dict[str, torch.Tensor]) -> None:
    """Fill every qparam compressed-tensors registered: weight scales / zero points / global
    scales from the weights; static input scales from the calibration inputs (global min/max,
    llm-compressor's `static_minmax` observer); k/v scales from post-RoPE keys and values."""
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    for name, mod in model.named_modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None:
            continue
        if hasattr(mod, "k_scale"):
            for kv in ("k", "v"):
                scale, _ = calculate_qparams(*_minmax(stats[f"{name}.{kv}"]),
                                             scheme.input_activations)
                getattr(mod, kv + "_scale").data.copy_(scale)
            continue
        if not isinstance(mod, torch.nn.Linear):
            continue
        wargs = scheme.weights
        lo, hi = _observe_weight(mod.weight.data, wargs)
        gscale = None
        if hasattr(mod, "weight_global_scale"):
            gscale = generate_gparam(*_minmax(mod.weight.data))
            mod.weight_global_scale.data.copy_(gscale)
        scale, zp = calculate_qparams(lo, hi, wargs, global_scale=gscale)
        mod.weight_scale.data.copy_(scale)
        if hasattr(mod, "weight_zero_point"):
            mod.weight_zero_point.data.copy_(zp)
        iargs = scheme.input_activations
        if iargs is None or iargs.dynamic is True:
            continue
        if hasattr(mod, "input_global_scale"):
            mod.input_global_scale.data.copy_(generate_gparam(*_minmax(stats[name])))
        if hasattr(mod, "input_scale"):
            scale, zp = calculate_qparams(*_minmax(stats[name]), iargs)
            mod.input_scale.data.copy_(scale)
            if hasattr(mod, "input_zero_point"):
                mod.input_zero_point.data.copy_(zp)


def ct_sample(out: Path, name: str, groups: dict, *, ignore=("lm_head",), kv_cache=None,
              layers: int = 1, max_shard_size: str | None = None) -> None:
    """Quantize the tiny Llama with compressed-tensors and save it as llm-compressor does
    (`ModelCompressor.from_pretrained_model` -> `compress_model` -> `save_pretrained` ->
    `update_config`)."""
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    model = llama_model(layers)
    config = QuantizationConfig(
        config_groups={k: QuantizationScheme(**v) for k, v in groups.items()},
        ignore=list(ignore),
        kv_cache_scheme=kv_cache,
        quantization_status=QuantizationStatus.INITIALIZED,
    )
    folder = out / name
    stats = float_stats(model, calib_tokens())
    with _quiet():
        apply_quantization_config(model, config)
        _calibrate_ct(model, stats)
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(str(folder), **kwargs)
        compressor.update_config(str(folder))


def _int_args(bits: int, strategy: str, *, group_size=None, symmetric=True, **extra) -> dict:
    args = dict(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, dynamic=False)
    if group_size:
        args["group_size"] = group_size
    return {**args, **extra}


def _fp8_args(strategy: str, **extra) -> dict:
    return dict(num_bits=8, type="float", symmetric=True, strategy=strategy, dynamic=False, **extra)


def make_ct_samples(out: Path, only: Callable[[str], bool]) -> None:
    from compressed_tensors.quantization.quant_scheme import MXFP4A16, NVFP4

    static_tensor_int8 = _int_args(8, "tensor", observer="static_minmax")
    static_tensor_fp8 = _fp8_args("tensor", observer="static_minmax")
    specs = {
        "ct_w4a16_group": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_int_args(4, "group", group_size=32))}),
        "ct_w4a16_asym": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_int_args(4, "group", group_size=32, symmetric=False))}),
        "ct_w8a16_channel": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_int_args(8, "channel"))}),
        "ct_w8a8_int": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_int_args(8, "channel"),
            input_activations=static_tensor_int8)}),
        # No kv_cache_scheme: compressed-tensors 0.20 only hooks attention modules whose
        # forward takes `past_key_value(s)`; transformers 5.24's LlamaAttention takes `cache`,
        # so the scheme is dropped silently (no k_scale/v_scale, none in config.json either).
        # The ModelOpt samples carry KV-cache scales.
        "ct_fp8_tensor": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_fp8_args("tensor"),
            input_activations=static_tensor_fp8)}),
        "ct_fp8_block": dict(groups={"group_0": dict(
            targets=["Linear"], weights=_fp8_args("block", block_structure=[128, 128]),
            input_activations=dict(num_bits=8, type="float", symmetric=True, strategy="group",
                                   group_size=128, dynamic=True))}),
        "ct_nvfp4": dict(groups={"group_0": dict(targets=["Linear"], **NVFP4)}),
        "ct_mxfp4": dict(groups={"group_0": dict(targets=["Linear"], **MXFP4A16)}),
    }
    for name, spec in specs.items():
        if only(name):
            ct_sample(out, name, **spec)
    if only("ct_w4a16_sharded"):
        ct_sample(out, "ct_w4a16_sharded", specs["ct_w4a16_group"]["groups"], layers=2,
                  max_shard_size="300KB")
    if only("ct_w4a16_actorder"):
        make_ct_actorder(out)


def make_ct_actorder(out: Path) -> None:
    """`actorder: "group"` W4A16 as compressed-tensors <= 0.18 saved it (0.20 refuses the
    setting): `weight_g_idx` I32 [I] next to `weight_packed`/`weight_scale`/`weight_shape`.

    Qparams per group over the columns GPTQ assigns to it in act order (llm-compressor
    `modifiers/quantization/gptq/gptq_quantize.py`: columns permuted by decreasing diag(H),
    group k = permuted columns [k*gs, (k+1)*gs), `g_idx = perm-based group of each original
    column`). The int4 codes are packed by compressed-tensors' own `pack_to_int32` (identical
    bytes in 0.18 and 0.20 for 4-bit, see the reference doc section 3.3); dequantization in
    0.18 (`forward_helpers.py _process_group`) gives column c the scale of group g_idx[c]."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    gs = 32
    model = llama_model(1)
    inputs = collect_inputs(model, calib_tokens())
    args = QuantizationArgs(**_int_args(4, "group", group_size=gs))
    tensors = plain_state(model)
    for name, mod in quantized_linears(model):
        w = mod.weight.data
        perm = hessian_order(inputs[name])
        wp = w[:, perm]
        lo, hi = _observe_weight(wp, args)
        scale, zp = calculate_qparams(lo, hi, args)
        q_perm = quantize(wp, scale, zp, args, dtype=torch.int8)
        q = torch.empty_like(q_perm)
        q[:, perm] = q_perm
        g_idx = torch.empty(w.shape[1], dtype=torch.int32)
        g_idx[perm] = torch.arange(w.shape[1], dtype=torch.int32) // gs
        del tensors[name + ".weight"]
        tensors[name + ".weight_packed"] = pack_to_int32(q, 4)
        tensors[name + ".weight_scale"] = scale.to(w.dtype)
        tensors[name + ".weight_shape"] = torch.tensor(w.shape)
        tensors[name + ".weight_g_idx"] = g_idx
    qconfig = {
        "config_groups": {"group_0": {
            "format": "pack-quantized", "input_activations": None, "output_activations": None,
            "targets": ["Linear"],
            "weights": {"actorder": "group", "block_structure": None, "dynamic": False,
                        "group_size": gs, "num_bits": 4, "observer": "minmax",
                        "observer_kwargs": {}, "strategy": "group", "symmetric": True,
                        "type": "int"}}},
        "format": "pack-quantized", "global_compression_ratio": None, "ignore": ["lm_head"],
        "kv_cache_scheme": None, "quant_method": "compressed-tensors",
        "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
        "version": "0.18.0",
    }
    folder = out / "ct_w4a16_actorder"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)


# ----------------------------------------------------------------------------- GPTQ


def _gptq_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero of one group [O, gs] (AutoGPTQ `quantization/quantizer.py
    Quantizer.find_params`, perchannel, no mse): range widened to include 0, sym zero is
    (maxq+1)/2, asym zero = round(-xmin/scale)."""
    maxq = 2**bits - 1
    xmin = torch.minimum(w.amin(1), torch.zeros(1))
    xmax = torch.maximum(w.amax(1), torch.zeros(1))
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both0, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def pack_bitstream(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Pack unsigned codes along `axis` into int32 words, element k of every run of 32 at bit
    k*bits of a little-endian stream of `bits` words. This is the layout of AutoGPTQ
    `qlinear_cuda.py QuantLinear.pack` (bits 2/4/8: 32/bits per word; 3 bits: the
    10|1|10|1|10 pattern) and GPTQModel `nn_modules/qlinear/__init__.py pack_block`."""
    v = np.moveaxis(values.astype(np.uint64), axis, 0)
    n = v.shape[0]
    assert n * bits % 32 == 0, "GPTQ packs whole int32 words"
    words = np.zeros((n * bits // 32, *v.shape[1:]), dtype=np.uint64)
    for k in range(n):
        bit = k * bits
        w, off = divmod(bit, 32)
        words[w] |= (v[k] << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > 32:  # straddles two words: the high part is masked (AutoGPTQ pack)
            high = np.uint64((1 << (off + bits - 32)) - 1)
            words[w + 1] |= (v[k] >> np.uint64(32 - off)) & high
    return np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)


def gptq_layer(w: torch.Tensor, x: torch.Tensor, bits: int, gs: int, sym: bool,
               desc_act: bool, v2: bool) -> dict[str, torch.Tensor]:
    """qweight/qzeros/scales/g_idx of one Linear as GPTQModel/AutoGPTQ write it.

    Round-to-nearest with GPTQ's quantizer (the GPTQ error-feedback update only changes which
    integers are chosen, not the file layout). Codes `clamp(round(W/s + z), 0, maxq)`
    (GPTQModel `pack_block` clamps; AutoGPTQ `pack` computes `round((W + z*s)/s)` unclamped).
    v1 (`checkpoint_format: gptq`) stores `zero - 1` (AutoGPTQ `pack`: `zeros -= 1`);
    v2 stores the zero itself (GPTQModel `utils/model.py convert_gptq_v1_to_v2_format`)."""
    maxq = 2**bits - 1
    wf = w.float()
    out_f, in_f = wf.shape
    perm = hessian_order(x) if desc_act else torch.arange(in_f)
    groups = in_f // gs
    scales = torch.empty(groups, out_f)
    zeros = torch.empty(groups, out_f)
    g_idx = torch.empty(in_f, dtype=torch.int32)
    for g in range(groups):
        cols = perm[g * gs:(g + 1) * gs]
        scales[g], zeros[g] = _gptq_params(wf[:, cols], bits, sym)
        g_idx[cols] = g
    scales16 = scales.to(torch.float16)
    s_col = scales16.float()[g_idx.long()].T  # [O, I]
    z_col = zeros[g_idx.long()].T
    q = torch.clamp(torch.round(wf / s_col + z_col), 0, maxq).to(torch.int64)
    stored_zeros = zeros.to(torch.int64) - (0 if v2 else 1)
    return {
        "qweight": torch.from_numpy(pack_bitstream(q.T.numpy(), bits, axis=0)),
        # AutoGPTQ casts to uint32 before packing: a v1 zero of 0 (stored -1) sets every
        # higher bit of its word, reproduced here on purpose.
        "qzeros": torch.from_numpy(pack_bitstream(
            stored_zeros.numpy().astype(np.uint32).astype(np.uint64), bits, axis=1)),
        "scales": scales16,
        "g_idx": g_idx,
    }


def gptq_sample(out: Path, name: str, *, bits: int, gs: int, sym: bool, desc_act: bool = False,
                v2: bool = False) -> None:
    model = llama_model(1)
    inputs = collect_inputs(model, calib_tokens())
    tensors = plain_state(model)
    for mname, mod in quantized_linears(model):
        del tensors[mname + ".weight"]
        for key, t in gptq_layer(mod.weight.data, inputs[mname], bits, gs, sym, desc_act,
                                 v2).items():
            tensors[f"{mname}.{key}"] = t
    fmt = "gptq_v2" if v2 else "gptq"
    # GPTQModel `quantization/config.py QuantizeConfig.to_dict`; GPTQModel also writes it as
    # quantize_config.json next to config.json (`models/writer.py`)
    qconfig = {
        "bits": bits, "group_size": gs, "desc_act": desc_act, "sym": sym, "lm_head": False,
        "quant_method": "gptq", "method": "gptq", "checkpoint_format": fmt, "format": fmt,
        "pack_dtype": "int32",
        # `quantizer` names the tool that quantized: this script, not GPTQModel
        "meta": {"quantizer": ["qinspect-make_hf_samples:gptqmodel-layout"],
                 "uri": "https://github.com/modelcloud/gptqmodel",
                 "damp_percent": 0.05, "damp_auto_increment": 0.01, "static_groups": False,
                 "true_sequential": True, "mse": 0.0, "act_group_aware": False},
    }
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)
    write_json(folder / "quantize_config.json", qconfig)


def make_gptq_samples(out: Path, only: Callable[[str], bool]) -> None:
    specs = {
        "gptq_v1_sym": dict(bits=4, gs=32, sym=True),
        "gptq_v1_asym": dict(bits=4, gs=32, sym=False),
        "gptq_v2_asym": dict(bits=4, gs=32, sym=False, v2=True),
        "gptq_desc_act": dict(bits=4, gs=32, sym=True, desc_act=True),
        "gptq_8bit": dict(bits=8, gs=32, sym=True),
        "gptq_3bit": dict(bits=3, gs=32, sym=False),
    }
    for name, spec in specs.items():
        if only(name):
            gptq_sample(out, name, **spec)


# ----------------------------------------------------------------------------- AWQ


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack(codes: np.ndarray) -> np.ndarray:
    """AutoAWQ `modules/linear/gemm.py WQLinear_GEMM.from_linear` packing: [R, O] 4-bit codes ->
    int32 [R, O/8], nibble k of word w holds column 8w + AWQ_ORDER[k]."""
    r, o = codes.shape
    c = codes.reshape(r, o // 8, 8).astype(np.uint32)
    words = np.zeros((r, o // 8), dtype=np.uint32)
    for k, col in enumerate(AWQ_ORDER):
        words |= c[:, :, col] << np.uint32(4 * k)
    return words.view(np.int32)


def make_awq_gemm(out: Path, gs: int = 32) -> None:
    """AWQ GEMM, 4-bit, zero_point true: qparams from AutoAWQ `quantize/quantizer.py
    pseudo_quantize_tensor` (scales = (max-min).clamp(1e-5)/15, zeros = clamp(-round(min/s),
    0, 15)), codes `clamp(round(W/s) + z, 0, 15)`, scales fp16 [G, O], qzeros/qweight packed
    along O in AWQ order. The activation-aware scale search is skipped (calibration only)."""
    model = llama_model(1)
    tensors = plain_state(model)
    for mname, mod in quantized_linears(model):
        w = mod.weight.data.float()
        out_f, in_f = w.shape
        g = w.reshape(out_f, in_f // gs, gs)
        mx, mn = g.amax(-1), g.amin(-1)
        scales = ((mx - mn).clamp(min=1e-5) / 15).to(torch.float16)  # [O, G]
        zeros = torch.clamp(-torch.round(mn / scales.float()), 0, 15)
        s_col = scales.float().repeat_interleave(gs, 1)
        z_col = zeros.repeat_interleave(gs, 1)
        q = torch.clamp(torch.round(w / s_col) + z_col, 0, 15).to(torch.int64)
        del tensors[mname + ".weight"]
        tensors[mname + ".qweight"] = torch.from_numpy(awq_pack(q.T.numpy()))
        tensors[mname + ".qzeros"] = torch.from_numpy(awq_pack(zeros.T.to(torch.int64).numpy()))
        tensors[mname + ".scales"] = scales.T.contiguous()
    qconfig = {"quant_method": "awq", "bits": 4, "group_size": gs, "zero_point": True,
               "version": "gemm", "modules_to_not_convert": None}
    folder = out / "awq_gemm"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)


# ----------------------------------------------------------------------------- bitsandbytes


def bnb_sample(out: Path, name: str, base: Path, **bnb_kwargs) -> None:
    """Real bitsandbytes (CPU backend) through transformers' quantizer."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(
            str(base), quantization_config=BitsAndBytesConfig(**bnb_kwargs),
            dtype=torch.bfloat16, device_map="cpu")
        model.save_pretrained(str(out / name))


def make_bnb_samples(out: Path, only: Callable[[str], bool]) -> None:
    base = out / "llama_bf16"
    specs = {
        "bnb_nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                        bnb_4bit_compute_dtype=torch.bfloat16),
        "bnb_nf4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16),
        "bnb_fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                        bnb_4bit_compute_dtype=torch.bfloat16),
        "bnb_int8": dict(load_in_8bit=True),
    }
    for name, kwargs in specs.items():
        if only(name):
            bnb_sample(out, name, base, **kwargs)


# ---------------------------------------------------------------- FP8 (transformers / AutoFP8)

FP8_MAX = 448.0


def fp8_block_quantize(w: torch.Tensor, block=(128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers `integrations/finegrained_fp8.py Fp8Quantize._quantize_one` arithmetic
    (fp32: scale = 448/amax per block, weight_scale_inv = 1/scale, q = clamp(W*scale) -> e4m3)
    over a ceil grid: edge blocks are partial, as in DeepSeek-V3's checkpoints (transformers
    5.24 itself leaves weights whose shape is not a block multiple unquantized)."""
    wf = w.float()
    rows, cols = wf.shape
    bh, bw = block
    nr, nc = math.ceil(rows / bh), math.ceil(cols / bw)
    padded = torch.zeros(nr * bh, nc * bw)
    padded[:rows, :cols] = wf
    blocks = padded.reshape(nr, bh, nc, bw)
    max_abs = blocks.abs().amax(dim=(1, 3))
    safe = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    scales = FP8_MAX / safe
    scales = torch.where(max_abs > 0, scales, torch.ones_like(scales))
    inv = (1.0 / scales).to(torch.float32)
    q = torch.clamp(blocks * scales[:, None, :, None], -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(nr * bh, nc * bw)[:rows, :cols].contiguous(), inv


def make_fp8_block_deepseek(out: Path) -> None:
    model = llama_model(1)
    tensors = plain_state(model)
    for mname, mod in quantized_linears(model):
        q, inv = fp8_block_quantize(mod.weight.data)
        tensors[mname + ".weight"] = q
        tensors[mname + ".weight_scale_inv"] = inv
    # `quantization_config` literally as deepseek-ai/DeepSeek-V3's config.json has it
    # (lm_head stays bf16 there without being listed)
    qconfig = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
               "weight_block_size": [128, 128]}
    folder = out / "fp8_block_deepseek"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)


def make_fp8_tensor_static(out: Path) -> None:
    """AutoFP8 static per-tensor FP8 (neuralmagic/AutoFP8 `auto_fp8/quantize.py
    per_tensor_quantize`: scale = amax.clamp(1e-12)/448, q = clamp(W/scale) -> e4m3; static
    input scale = max over calibration batches of amax/448), scalars saved 0-dim in fp32."""
    model = llama_model(1)
    tokens = calib_tokens()
    tensors = plain_state(model)
    per_batch = [collect_inputs(model, tokens[i:i + 1]) for i in range(len(tokens))]
    for mname, mod in quantized_linears(model):
        w = mod.weight.data.float()
        scale = (w.abs().amax().clamp(min=1e-12) / FP8_MAX).to(torch.float32)
        q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        in_scale = max(float(b[mname].abs().amax()) for b in per_batch) / FP8_MAX
        tensors[mname + ".weight"] = q
        tensors[mname + ".weight_scale"] = scale.reshape(())
        tensors[mname + ".input_scale"] = torch.tensor(in_scale, dtype=torch.float32)
    qconfig = {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]}
    folder = out / "fp8_tensor_static"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)


# ----------------------------------------------------------------------------- ModelOpt


def modelopt_sample(out: Path, name: str, algo: str) -> None:
    """Real NVIDIA ModelOpt: the bf16 folder loaded with `from_pretrained`, `mtq.quantize(model,
    <ALGO>_DEFAULT_CFG + FP8_KV_CFG, loop)` with max calibration over the calibration batches,
    then `export_hf_checkpoint`."""
    from transformers import AutoModelForCausalLM

    with _quiet():
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint

        model = AutoModelForCausalLM.from_pretrained(str(out / "llama_bf16"),
                                                     dtype=torch.bfloat16).eval()
        cfg = copy.deepcopy({"NVFP4": mtq.NVFP4_DEFAULT_CFG, "FP8": mtq.FP8_DEFAULT_CFG}[algo])
        cfg["quant_cfg"] = cfg["quant_cfg"] + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
        tokens = calib_tokens()

        def loop(m):
            with torch.no_grad():
                for row in tokens:
                    m(row[None])

        model = mtq.quantize(model, cfg, loop)
        export_hf_checkpoint(model, export_dir=str(out / name))


# ----------------------------------------------------------------------------- gpt-oss MXFP4

GPTOSS = dict(
    hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, num_local_experts=4, num_experts_per_tok=2,
    vocab_size=VOCAB, max_position_embeddings=64, sliding_window=16,
    layer_types=["sliding_attention"], tie_word_embeddings=False,
)
GPTOSS_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                        "model.embed_tokens", "lm_head"]


def gptoss_model():
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(SEED + 99)
    model = GptOssForCausalLM(GptOssConfig(**GPTOSS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "experts" in name and p.ndim == 3:
                p.normal_(0, 0.02, generator=_seeded(_name_seed(name)))
    return model.to(torch.bfloat16).eval()


def mxfp4_blocks(w_out_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, O, I] bf16 -> gpt-oss `_blocks` U8 [E, O, I/32, 16] and `_scales` U8 [E, O, I/32].

    Codes and E8M0 exponents come from compressed-tensors' MXFP4 quantizer (`calculate_qparams`
    with MXFP4 args -> `generate_mx_scales`, `MXFP4PackedCompressor.compress`): its packed byte
    holds the even element in the low nibble, exactly gpt-oss' block layout
    (openai/gpt-oss `gpt_oss/torch/weights.py Checkpoint._get_mxfp4_tensor`, transformers
    `integrations/mxfp4.py _convert_moe_packed_tensors`)."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import MXFP4A16
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    e, o, i = w_out_in.shape
    flat = w_out_in.reshape(e * o, i)
    args = QuantizationArgs(**MXFP4A16["weights"].model_dump())
    g = flat.reshape(e * o, i // 32, 32)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    comp = BaseCompressor.get_value_from_registry("mxfp4-pack-quantized")
    packed = comp.compress({"weight": flat, "weight_scale": scale}, scheme)
    blocks = packed["weight_packed"].reshape(e, o, i // 32, 16).contiguous()
    scales = packed["weight_scale"].reshape(e, o, i // 32).contiguous()
    return blocks, scales


def make_mxfp4_gptoss(out: Path) -> None:
    model = gptoss_model()
    with _quiet():
        model.save_pretrained(str(out / "gptoss_bf16"))
    tensors = plain_state(model)
    for layer in range(model.config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts."
        for proj in ("gate_up_proj", "down_proj"):
            w = tensors.pop(prefix + proj)  # transformers layout [E, in, out]
            blocks, scales = mxfp4_blocks(w.transpose(1, 2).contiguous())
            tensors[prefix + proj + "_blocks"] = blocks
            tensors[prefix + proj + "_scales"] = scales
    qconfig = {"quant_method": "mxfp4", "modules_to_not_convert": GPTOSS_NOT_CONVERTED}
    folder = out / "mxfp4_gptoss"
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder, tensors)
    save_config(folder, model.config, qconfig)


# ----------------------------------------------------------------------------- driver


STEPS: list[tuple[str, Callable[[Path, Callable[[str], bool]], None]]] = [
    ("llama_bf16", lambda out, only: make_llama_bf16(out)),
    ("llama2_bf16", lambda out, only: make_llama_bf16(out, "llama2_bf16", layers=2)),
    ("ct", make_ct_samples),
    ("gptq", make_gptq_samples),
    ("awq_gemm", lambda out, only: make_awq_gemm(out)),
    ("bnb", make_bnb_samples),
    ("fp8_block_deepseek", lambda out, only: make_fp8_block_deepseek(out)),
    ("fp8_tensor_static", lambda out, only: make_fp8_tensor_static(out)),
    ("modelopt_nvfp4", lambda out, only: modelopt_sample(out, "modelopt_nvfp4", "NVFP4")),
    ("modelopt_fp8", lambda out, only: modelopt_sample(out, "modelopt_fp8", "FP8")),
    ("mxfp4_gptoss", lambda out, only: make_mxfp4_gptoss(out)),
]


GROUP_STEPS = ("ct", "gptq", "bnb")  # these make several folders and filter by name themselves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", help="sample folder names (default: all)")
    opts = parser.parse_args(argv)
    wanted = set(opts.only or [])

    def only(name: str) -> bool:
        return not wanted or name in wanted

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs").mkdir(exist_ok=True)
    np.save(out / "inputs" / "tokens.npy", sample_tokens())
    for step, fn in STEPS:
        if step in GROUP_STEPS or only(step):
            fn(out, only)
    for folder in out.iterdir():  # generation_config.json is not part of any format
        gen = folder / "generation_config.json"
        if gen.exists():
            gen.unlink()
    print(f"wrote {sum(1 for _ in out.iterdir())} entries to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

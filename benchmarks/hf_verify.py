"""Benchmark: ``qinspect verify`` on a Llama-shaped W8A16 compressed-tensors checkpoint of a
few hundred MB, against one forward of the float model, in the same process.

    .venv/bin/python benchmarks/hf_verify.py [--layers 8] [--repeat 1]

Written once to benchmarks/out/hf_verify/{base,w8a16}/ (random bf16 weights; the quantized
copy packs per-channel int8 codes with compressed-tensors' own ``pack_to_int32`` and bf16
scales, as ``pack-quantized`` does). The baseline is what any user of the model pays for one
look at these tokens: transformers builds the float model from config.json, loads the base
weights and runs one forward (timed in this process, right before verify). Reported: both
times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "hf_verify"
HIDDEN, INTER, HEADS, KV, VOCAB = 1024, 2816, 16, 8, 32000
PROJ = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV * 64, HIDDEN),
        "self_attn.v_proj": (KV * 64, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER)}


def config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": HIDDEN, "intermediate_size": INTER, "num_attention_heads": HEADS,
            "num_key_value_heads": KV, "head_dim": 64, "num_hidden_layers": layers,
            "vocab_size": VOCAB, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": False, "dtype": "bfloat16"}


def write(layers: int) -> tuple[Path, Path]:
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import save_file

    base, quant = OUT / f"base_{layers}", OUT / f"w8a16_{layers}"
    if (quant / "model.safetensors").exists():
        return base, quant
    base.mkdir(parents=True, exist_ok=True)
    quant.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    bf = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
          "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
          "model.norm.weight": torch.ones(HIDDEN)}
    q: dict[str, torch.Tensor] = {}
    for i in range(layers):
        p = f"model.layers.{i}."
        bf[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
        bf[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN)
        for name, shape in PROJ.items():
            w = (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
            bf[p + name + ".weight"] = w
            scale = (w.float().abs().amax(1, keepdim=True) / 127).to(torch.bfloat16)
            codes = torch.clamp(torch.round(w.float() / scale.float()), -128, 127)
            q[p + name + ".weight_packed"] = pack_to_int32(codes.to(torch.int8), 8)
            q[p + name + ".weight_scale"] = scale
            q[p + name + ".weight_shape"] = torch.tensor(shape, dtype=torch.int64)
    bf = {k: v.to(torch.bfloat16).contiguous() for k, v in bf.items()}
    save_file(bf, str(base / "model.safetensors"), metadata={"format": "pt"})
    q.update({k: v for k, v in bf.items() if not any(k.endswith(n + ".weight")
                                                       for n in PROJ)})
    save_file(q, str(quant / "model.safetensors"), metadata={"format": "pt"})
    cfg = config(layers)
    (base / "config.json").write_text(json.dumps(cfg))
    cfg["quantization_config"] = {
        "config_groups": {"group_0": {"format": "pack-quantized", "targets": ["Linear"],
                                      "input_activations": None, "output_activations": None,
                                      "weights": {"dynamic": False, "group_size": None,
                                                  "num_bits": 8, "strategy": "channel",
                                                  "symmetric": True, "type": "int"}}},
        "format": "pack-quantized", "ignore": ["lm_head"], "quant_method": "compressed-tensors",
        "quantization_status": "compressed", "version": "0.20.0"}
    (quant / "config.json").write_text(json.dumps(cfg))
    return base, quant


def float_forward(base: Path, tokens: np.ndarray) -> float:
    """transformers: model from config.json, base weights loaded, one forward."""
    import torch
    import transformers
    from safetensors.torch import load_file

    t = time.perf_counter()
    cfg = transformers.AutoConfig.from_pretrained(base, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.load_state_dict({k: v.float() for k, v in
                           load_file(str(base / "model.safetensors")).items()}, strict=False)
    with torch.no_grad():
        model(input_ids=torch.from_numpy(tokens), use_cache=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import qinspect

    base, quant = write(args.layers)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 64)).astype(np.int64)
    tok = OUT / "tokens.npy"
    np.save(tok, tokens)
    size = sum(f.stat().st_size for f in quant.iterdir()) / 2**20
    for _ in range(args.repeat):
        f = float_forward(base, tokens)
        t = time.perf_counter()
        report = qinspect.verify(quant, input=tok, reference=base)
        v = time.perf_counter() - t
        print(f"checkpoint {size:.0f} MiB ({len(report.layers)} quantized Linears), tokens "
              f"{tokens.shape}: float model build+load+forward {f:.2f} s, verify {v:.2f} s, "
              f"ratio {v / f:.1f}x; end-to-end SQNR {report.end_to_end.sqnr_db:.1f} dB")


if __name__ == "__main__":
    main()

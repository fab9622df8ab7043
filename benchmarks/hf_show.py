"""Benchmark: ``qinspect show`` on a ~2 GB sharded W4A16 (compressed-tensors
pack-quantized) checkpoint against one numpy pass over the same bytes, in one run.

    .venv/bin/python benchmarks/hf_show.py [--gb 2.0] [--repeat 3]

The checkpoint is written once to benchmarks/out/hf_w4a16/ (Llama-7B-shaped decoder
layers, random codes and scales, 4 shards + index), by the same byte layout
compressed-tensors' ``pack_to_int32`` writes. Baselines (fresh processes, same run):
``numpy max``: ``python -c`` reading every shard in 16 MiB chunks and taking ``.max()``
(the cheapest full pass); ``numpy bincount``: the same chunks through ``np.bincount``
(the histogram show needs). Peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Case, machine, measure  # noqa: E402

OUT = HERE / "out" / "hf_w4a16"
HIDDEN, INTER, GROUP = 4096, 11008, 128
PROJ = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
        "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER)}

SHAPES: dict[str, tuple[int, int]] = {}

PASS = """
import sys, numpy as np
op = sys.argv[1]
for path in sys.argv[2:]:
    with open(path, 'rb') as fh:
        while True:
            b = fh.read(16 << 20)
            if not b:
                break
            a = np.frombuffer(b, np.uint8)
            if op == 'max':
                a.max()
            else:
                for i in range(0, a.size, 1 << 18):
                    np.bincount(a[i:i + (1 << 18)], minlength=256)
"""


def _write_shard(path: Path, tensors: list[tuple[str, str, list[int], int]], rng) -> None:
    import numpy as np

    header, offset = {}, 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, dtype, _shape, nbytes in tensors:
            if dtype == "I32":
                fh.write(rng.integers(0, 2**32, nbytes // 4, dtype=np.uint32).tobytes())
            elif dtype == "BF16":  # scales 1e-3..1e-2 as bf16 bit patterns
                s = (rng.random(nbytes // 2, dtype=np.float32) * 9e-3 + 1e-3)
                fh.write((s.view(np.uint32) >> 16).astype(np.uint16).tobytes())
            else:  # weight_shape: [O, I], read back from the tensor's name
                fh.write(np.array(SHAPES[name], np.int64).tobytes())


def make(gb: float) -> Path:
    import numpy as np

    per_layer = sum(o * i // 2 for o, i in PROJ.values())
    layers = max(1, round(gb * 1e9 / per_layer))
    marker = OUT / f".layers-{layers}"
    if marker.exists():
        return OUT
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    rng = np.random.default_rng(0)
    shards = 4
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = []
        for layer in range(s, layers, shards):
            for proj, (o, i) in PROJ.items():
                base = f"model.layers.{layer}.{proj}"
                SHAPES[f"{base}.weight_shape"] = (o, i)
                tensors += [(f"{base}.weight_packed", "I32", [o, i // 8], o * i // 2),
                            (f"{base}.weight_scale", "BF16", [o, i // GROUP], o * i // GROUP * 2),
                            (f"{base}.weight_shape", "I64", [2], 16)]
        _write_shard(OUT / name, tensors, rng)
        weight_map.update({t[0]: name for t in tensors})
    (OUT / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    (OUT / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "version": "0.20.0",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
            "group_size": GROUP}}}}}))
    marker.touch()
    return OUT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = make(args.gb)
    shards = sorted(str(p) for p in folder.glob("*.safetensors"))
    size = sum(os.path.getsize(p) for p in shards)
    py = sys.executable
    cases = [Case("numpy max pass", [py, "-c", PASS, "max", *shards], "baseline"),
             Case("numpy bincount pass", [py, "-c", PASS, "bincount", *shards], "baseline"),
             Case("qinspect show --json", [py, "-m", "qinspect", "show", str(folder), "--json"],
                  "qinspect")]
    results = {c.name: measure(c, args.repeat) for c in cases}
    show = results["qinspect show --json"]
    print(f"checkpoint: {size / 1e9:.2f} GB in {len(shards)} shards; machine: {machine()}; "
          f"load average {os.getloadavg()}")
    for r in results.values():
        print(f"| {r.name} | {r.median_s:.2f} s | peak RSS {r.peak_rss_mb:.0f} MB |")
    for base in ("numpy max pass", "numpy bincount pass"):
        print(f"show / {base}: {show.median_s / results[base].median_s:.2f}x")
    print(f"show peak RSS / checkpoint size: {show.peak_rss_mb * 1e6 / size:.3f}")


if __name__ == "__main__":
    main()

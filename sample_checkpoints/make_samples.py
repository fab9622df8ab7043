"""Regenerate the sample checkpoints in this folder (or ``--out DIR``).

    python sample_checkpoints/make_samples.py [--out DIR]

Every file comes from a real torch.ao.quantization flow in :mod:`flows`, saved with
``torch.save(model.state_dict(), path)``; inputs are saved with ``numpy.save``.
Same torch version and machine -> same tensors (see README.md for byte identity).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import flows  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

SEED = 0


def run_flows(seed: int = SEED) -> dict[str, flows.Flow]:
    """Run every flow once; {short name: Flow}."""
    mlp = flows.mlp_qat("fbgemm", seed)
    return {
        "mlp": mlp,
        "mlp_qnnpack": flows.mlp_ptq(mlp.float_model, "qnnpack", seed),
        "mlp_fused": flows.mlp_qat("fbgemm", seed, fused=True),
        "mlp_frozen": flows.mlp_qat("fbgemm", seed, frozen=True),
        "convnet": flows.convnet_ptq("x86", seed),
        "lstm": flows.lstm_dynamic("fbgemm", seed),
        "dynlinear_int8": flows.dynlinear_dynamic(torch.qint8, "fbgemm", seed),
        "dynlinear_fp16": flows.dynlinear_dynamic(torch.float16, "fbgemm", seed),
        "embbag": flows.embbag_weight_only("fbgemm", seed),
    }


# file name -> (key in run_flows(), Flow attribute whose state_dict() is saved)
FILES: dict[str, tuple[str, str]] = {
    "mlp_fp32.pt": ("mlp", "float_model"),
    "mlp_qat_prepared.pt": ("mlp", "prepared_model"),
    "mlp_int8_fbgemm.pt": ("mlp", "converted_model"),
    "mlp_int8_qnnpack.pt": ("mlp_qnnpack", "converted_model"),
    "mlp_qat_frozen_prepared.pt": ("mlp_frozen", "prepared_model"),
    "mlp_qat_frozen_int8.pt": ("mlp_frozen", "converted_model"),
    "mlp_fused_fp32.pt": ("mlp_fused", "float_model"),
    "mlp_fused_int8.pt": ("mlp_fused", "converted_model"),
    "convnet_fp32.pt": ("convnet", "float_model"),
    "convnet_int8.pt": ("convnet", "converted_model"),
    "lstm_fp32.pt": ("lstm", "float_model"),
    "lstm_dynamic_int8.pt": ("lstm", "converted_model"),
    "dynlinear_fp32.pt": ("dynlinear_int8", "float_model"),
    "dynlinear_int8.pt": ("dynlinear_int8", "converted_model"),
    "dynlinear_fp16.pt": ("dynlinear_fp16", "converted_model"),
    "embbag_fp32.pt": ("embbag", "float_model"),
    "embbag_4bit.pt": ("embbag", "converted_model"),
}

SAMPLES: dict[str, Callable[[int], torch.Tensor]] = {
    "sample.npy": flows.mlp_sample,
    "conv_sample.npy": flows.conv_sample,
    "lstm_sample.npy": flows.lstm_sample,
}


def write_samples(out: Path, seed: int = SEED) -> list[Path]:
    """Write every sample file into ``out`` (created if needed); return the paths.

    Each state_dict is taken and saved while its module is alive: the quantized
    (EmbeddingBag/Embedding) state_dict tensors of torch 2.13 read their per-row
    scales and zero points from memory owned by the module's packed weight, so after
    the module is freed they hold garbage (see README.md).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    live = run_flows(seed)
    paths = []
    for name, (flow, attr) in FILES.items():
        path = out / name
        torch.save(getattr(live[flow], attr).state_dict(), path)
        paths.append(path)
    for name, make in SAMPLES.items():
        path = out / name
        np.save(path, make(seed).numpy().astype(np.float32))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    paths = write_samples(args.out)
    total = 0
    for p in paths:
        size = p.stat().st_size
        total += size
        print(f"{size:>10,d}  {p}")
    print(f"{total:>10,d}  total ({len(paths)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

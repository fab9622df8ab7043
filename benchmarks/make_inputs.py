"""Generate the large benchmark checkpoints on the fly (never committed).

* ``int8_1g.pt``: eager static int8, 32 quantized Linear layers 4096x8192 with
  per-channel weights (about 1.07 GB), made by torch's own nnq.Linear modules.
* ``fp32_1g.pt``: the float weights the int8 file was quantized from (for ``diff``).
* ``qat_1g.pt``: a QAT-prepared state_dict of 8 Linear 4096x8192 layers (about 1.07 GB
  of float weights plus fake-quant and observer buffers), made by prepare_qat.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn

warnings.filterwarnings("ignore")
OUT_FEATURES, IN_FEATURES = 4096, 8192


def make_int8_pair(out_dir: Path, layers: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Float and int8 checkpoints of the same ``layers`` Linear layers."""
    g = torch.Generator().manual_seed(seed)
    int8_sd: dict[str, object] = {}
    fp32_sd: dict[str, torch.Tensor] = {}
    int8_sd["quant.scale"] = torch.tensor([0.05])
    int8_sd["quant.zero_point"] = torch.tensor([64])
    for i in range(layers):
        w = torch.randn(OUT_FEATURES, IN_FEATURES, generator=g) * 0.02
        b = torch.randn(OUT_FEATURES, generator=g) * 0.01
        scales = (w.abs().amax(dim=1) / 127.5).double()
        qw = torch.quantize_per_channel(w, scales, torch.zeros(OUT_FEATURES, dtype=torch.long),
                                        0, torch.qint8)
        mod = nnq.Linear(IN_FEATURES, OUT_FEATURES)
        mod.set_weight_bias(qw, b)
        mod.scale, mod.zero_point = 0.02 + i * 1e-4, 60
        for key, value in mod.state_dict().items():
            int8_sd[f"layers.{i}.{key}"] = value
        fp32_sd[f"layers.{i}.weight"] = w
        fp32_sd[f"layers.{i}.bias"] = b
    int8_path, fp32_path = out_dir / "int8_1g.pt", out_dir / "fp32_1g.pt"
    torch.save(int8_sd, int8_path)
    torch.save(fp32_sd, fp32_path)
    return int8_path, fp32_path


def make_qat(out_dir: Path, layers: int = 8, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = nn.Sequential(tq.QuantStub(),
                          *[nn.Linear(IN_FEATURES, OUT_FEATURES) for _ in range(layers)])
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    prepared = tq.prepare_qat(model)
    path = out_dir / "qat_1g.pt"
    torch.save(prepared.state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (*make_int8_pair(args.out), make_qat(args.out)):
        print(f"{path}  {path.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()

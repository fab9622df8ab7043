"""Generate the large benchmark checkpoints on the fly (never committed).

* ``int8_1g.pt``: eager static int8, 32 quantized Linear layers 4096x8192 with
  per-channel weights (about 1.07 GB), made by torch's own nnq.Linear modules.
* ``fp32_1g.pt``: the float weights the int8 file was quantized from (for ``diff``).
* ``qat_1g.pt``: a QAT-prepared state_dict of 8 Linear 4096x8192 layers (about 1.07 GB
  of float weights plus fake-quant and observer buffers), made by prepare_qat.
* ``resnet_fp32.pt`` / ``resnet_int8.pt`` / ``resnet_input.npy``: the ResNet-18-shaped
  network of ``resnet.py`` (random weights and BatchNorm statistics), its eager static
  int8 version (x86 qconfig, calibrated on random 224x224 batches) and one (1,3,224,224)
  input, for ``verify``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn

warnings.filterwarnings("ignore")
OUT_FEATURES, IN_FEATURES = 4096, 8192


def make_int8_pair(out_dir: Path, layers: int = 32, seed: int = 0,
                   stem: str = "1g") -> tuple[Path, Path]:
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
    int8_path, fp32_path = out_dir / f"int8_{stem}.pt", out_dir / f"fp32_{stem}.pt"
    torch.save(int8_sd, int8_path)
    torch.save(fp32_sd, fp32_path)
    return int8_path, fp32_path


def make_pair(out_dir: Path) -> tuple[Path, Path]:
    """Issue 12's diff pair: a 1.07 GB float32 state_dict of 8 Linear 4096x8192 layers and
    its 0.27 GB int8 conversion (``int8_pair.pt``, ``fp32_pair.pt``)."""
    return make_int8_pair(out_dir, layers=8, seed=1, stem="pair")


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


def make_resnet(out_dir: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from resnet import ResNet18Shaped, fuse

    torch.manual_seed(seed)
    model = ResNet18Shaped()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.eval()
    fp32_path = out_dir / "resnet_fp32.pt"
    torch.save(model.state_dict(), fp32_path)
    torch.backends.quantized.engine = "x86"
    fuse(model)
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(2, 3, 224, 224))
    int8_path = out_dir / "resnet_int8.pt"
    torch.save(tq.convert(prepared).state_dict(), int8_path)
    input_path = out_dir / "resnet_input.npy"
    np.save(input_path, torch.randn(1, 3, 224, 224).numpy())
    return fp32_path, int8_path, input_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--only", choices=("linear", "pair", "qat", "resnet"),
                        help="make only one group of inputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    makers = {"linear": make_int8_pair, "pair": make_pair, "qat": make_qat,
              "resnet": make_resnet}
    paths: list[Path] = []
    for name, make in makers.items():
        if args.only in (None, name):
            made = make(args.out)
            paths += [made] if isinstance(made, Path) else list(made)
    for path in paths:
        print(f"{path}  {path.stat().st_size / 1e9:.3f} GB")


if __name__ == "__main__":
    main()

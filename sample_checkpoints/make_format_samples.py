"""Sample checkpoints in the modern formats, made by the real flows (``make samples``).

    python sample_checkpoints/make_format_samples.py [--out DIR]

One small float network (Conv-BN-ReLU, two Linears) is quantized by each flow and saved
the way users deploy it:

=============================  ================================================================
fx_mlp_int8_state_dict.pt      FX ``prepare_fx``/``convert_fx`` (x86), ``torch.save(state_dict)``
fx_mlp_int8_ts.pt              the same FX model, ``torch.jit.save(torch.jit.script(...))``
fx_mlp_int8_graphmodule.pt     the same FX model, ``torch.save(model)`` (a pickled GraphModule)
eager_mlp_int8_ts.pt           eager-mode PTQ (QuantStub), ``torch.jit.save(torch.jit.script())``
pt2e_mlp_xnnpack.pt2           PT2E ``prepare_pt2e``/``convert_pt2e``, XNNPACK quantizer,
                               ``torch.export.save``
pt2e_mlp_x86.pt2               the same with the X86Inductor quantizer
torchao_int8wo.pt              torchao ``quantize_(Int8WeightOnlyConfig())``, state_dict
torchao_int8dyn.pt             torchao ``Int8DynamicActivationInt8WeightConfig()``
torchao_int4wo_cpu.pt          torchao ``IntxWeightOnlyConfig(int4, PerGroup(32))`` (the int4
                               weight-only config that runs on CPU)
format_net_fp32.pt             the float original (state_dict), for ``qinspect diff``
format_net_input.npy           a calibration-like input batch
=============================  ================================================================

Every function returns the live objects, so tests compare qinspect's numbers with them.
PT2E and torchao need torchao (``pip install 'qinspect[torchao]'``; pinned in the Makefile).
Importing this module pins torch's CPU kernels (:mod:`reproducible`), so the files are
the same on any x86-64 CPU; no flow runs at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reproducible

reproducible.pin()  # before torch is imported: same kernels on any x86-64 CPU

import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 0
INPUT_SHAPE = (4, 1, 8, 8)


class FormatNet(nn.Module):
    """Conv(1->8, 3x3, stride 2)-BN-ReLU, flatten, Linear(128->32)-ReLU, Linear(32->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):  # no annotations: FX copies them into code TorchScript rejects
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class EagerFormatNet(nn.Module):
    """The same layers for eager mode: QuantStub first, ReLUs as modules to fuse."""

    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = torch.flatten(x, 1)
        return self.dequant(self.fc2(self.relu1(self.fc1(x))))


@contextlib.contextmanager
def _deterministic(engine: str = "x86") -> Iterator[None]:
    reproducible.check()
    old_engine = torch.backends.quantized.engine
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(SEED)
        torch.set_num_threads(1)
        torch.backends.quantized.engine = engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = old_engine
            torch.set_num_threads(old_threads)


def batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    return [torch.randn(*INPUT_SHAPE, generator=g) for _ in range(n)]


def float_model() -> FormatNet:
    with _deterministic():
        model = FormatNet()
        # non-trivial BatchNorm statistics, so folding it matters
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.2, 0.2)
            model.bn.running_var.uniform_(0.5, 1.5)
            model.bn.weight.uniform_(0.8, 1.2)
            model.bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


@dataclass
class Made:
    """A flow's live objects: the float model, the quantized model, and an input."""

    float_model: nn.Module
    quantized: Any
    example: torch.Tensor


def fx_flow() -> Made:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    fp = float_model()
    with _deterministic("x86"):
        example = batches(1)[0]
        prepared = prepare_fx(copy.deepcopy(fp), get_default_qconfig_mapping("x86"),
                              (example,))
        for x in batches():
            prepared(x)
        converted = convert_fx(prepared)
    return Made(fp, converted, example)


def eager_flow() -> Made:
    import torch.ao.quantization as tq

    fp = float_model()
    with _deterministic("x86"):
        model = EagerFormatNet().eval()
        model.load_state_dict(fp.state_dict(), strict=False)
        model = tq.fuse_modules(model, [["conv", "bn", "relu"], ["fc1", "relu1"]])
        model.qconfig = tq.get_default_qconfig("x86")
        prepared = tq.prepare(model)
        for x in batches():
            prepared(x)
        converted = tq.convert(prepared)
    return Made(fp, converted, batches(1)[0])


def pt2e_flow(quantizer_name: str) -> Made:
    """PT2E: export, prepare_pt2e, calibrate, convert_pt2e; ``quantized`` is the
    ExportedProgram of the converted model (what torch.export.save writes)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    fp = float_model()
    with _deterministic("x86"):
        example = batches(1)[0]
        if quantizer_name == "xnnpack":
            from torchao.testing.pt2e._xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )

            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True))
        else:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

            quantizer = xiq.X86InductorQuantizer().set_global(
                xiq.get_default_x86_inductor_quantization_config())
        graph = torch.export.export(copy.deepcopy(fp), (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for x in batches():
            prepared(x)
        converted = convert_pt2e(prepared)
        program = torch.export.export(converted, (example,))
    return Made(fp, program, example)


def torchao_flow(config_name: str) -> Made:
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        quantize_,
    )
    from torchao.quantization.granularity import PerGroup

    configs = {
        "int8wo": lambda: Int8WeightOnlyConfig(),
        "int8dyn": lambda: Int8DynamicActivationInt8WeightConfig(),
        "int4wo": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                               granularity=PerGroup(32)),
    }
    fp = float_model()
    with _deterministic("x86"):
        model = copy.deepcopy(fp)
        quantize_(model, configs[config_name]())
    return Made(fp, model, batches(1)[0])


def write_all(out: Path) -> dict[str, Path]:
    """Run every flow and save its files into ``out``; returns {file name: path}."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def save(name: str, fn: Any) -> None:
        path = out / name
        fn(path)
        written[name] = path

    fx = fx_flow()
    save("format_net_fp32.pt", lambda p: torch.save(fx.float_model.state_dict(), p))
    save("format_net_input.npy", lambda p: np.save(p, fx.example.numpy()))
    save("fx_mlp_int8_state_dict.pt", lambda p: torch.save(fx.quantized.state_dict(), p))
    save("fx_mlp_int8_ts.pt", lambda p: torch.jit.save(torch.jit.script(fx.quantized), p))
    save("fx_mlp_int8_graphmodule.pt", lambda p: torch.save(fx.quantized, p))
    eager = eager_flow()
    save("eager_mlp_int8_ts.pt",
         lambda p: torch.jit.save(torch.jit.script(eager.quantized), p))
    for q in ("xnnpack", "x86"):
        made = pt2e_flow(q)
        save(f"pt2e_mlp_{q}.pt2", lambda p, m=made: torch.export.save(m.quantized, p))
    for cfg, name in (("int8wo", "torchao_int8wo.pt"), ("int8dyn", "torchao_int8dyn.pt"),
                      ("int4wo", "torchao_int4wo_cpu.pt")):
        made = torchao_flow(cfg)
        save(name, lambda p, m=made: torch.save(m.quantized.state_dict(), p))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for name, path in write_all(args.out).items():
        print(f"{path.stat().st_size:>9,}  {name}")


if __name__ == "__main__":
    main()

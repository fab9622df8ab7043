"""verify runs TorchScript files of ResNet-, MobileNetV3- and GoogLeNet-shaped quantized
models whole from the file (eager PTQ as torchvision's quantized models are made, then
``torch.jit.save(torch.jit.script(model))``, as users save them): the archive's own code is
interpreted, its scripted helper functions included (``_max_pool2d``, ``adaptive_avg_pool2d``,
``hardsigmoid``...), never ``torch.jit.load``. Truth is torch: the end-to-end SQNR equals
running torch's float and quantized models, and every conv/linear/add/quantize agrees
bit-exactly with qinspect's integer reference on the real input the graph gave it."""

from __future__ import annotations

import graph_models as gm
import numpy as np
import pytest
import torch

import qinspect
from qinspect.analyse.verify import InputKind
from qinspect.model import Mode
from qinspect.quant.metrics import sqnr_db

ENGINE = "x86"


@pytest.fixture(scope="module", params=[(m, f) for m in sorted(gm.MODELS)
                                        for f in ("eager", "fx")])
def made(request, tmp_path_factory):
    name, flow = request.param
    d = tmp_path_factory.mktemp(f"{name}_{flow}")
    fm = gm.float_model(name)
    quantize = gm.quantize if flow == "eager" else gm.quantize_fx
    qm = quantize(fm, ENGINE, gm.calibration())
    x = gm.calibration(seed=9, n=1)[0]
    np.save(d / "x.npy", x.numpy())
    torch.save(fm.state_dict(), d / "fp32.pt")
    with torch.no_grad():
        want = sqnr_db(fm(x).double().numpy(), gm.run(qm, x, ENGINE).double().numpy())
    return name, gm.scripted(qm, d / "int8_ts.pt"), d, want


def test_whole_model_runs_from_the_file_like_torch(made):
    name, path, d, want = made
    report = qinspect.verify(path, input=d / "x.npy", reference=d / "fp32.pt",
                             engine=ENGINE)
    assert report.runner == "torchscript" and report.mode == "graph"
    assert abs(report.end_to_end.sqnr_db - want) < 0.05, (report.end_to_end.sqnr_db, want)
    ckpt = qinspect.load(path)
    quantized = {lay.name for lay in ckpt.layers if lay.mode is not Mode.FLOAT}
    assert {r.name for r in report.layers} == quantized
    for row in report.layers:
        if not row.verified:  # eager: a residual add of a block whose shapes skip it
            assert row.kind == "QFunctional" and "never ran it" in row.reason, row
            continue
        assert row.input_kind is InputKind.MODEL
        kernel_op = row.kind.startswith(("Conv", "Linear", "QuantStub", "QFunctional add",
                                         "quantize_per_tensor", "quantized.add"))
        if kernel_op:
            assert row.kernel is not None and row.kernel.agree, (row.name, row.kernel)
        else:  # mul, cat, hardswish: no integer reference yet, and the row says so
            assert row.kernel is None and "no integer reference" in " ".join(row.notes)
    agreed = sum(r.kernel is not None for r in report.layers)
    assert agreed >= 0.6 * len(report.layers)
    kinds = " ".join(r.kind for r in report.layers if r.verified)
    must = {"resnet": ("ConvReLU2d", "add_relu", "Linear"),
            "mobilenet_v3": ("ConvReLU2d", "Hardswish", "mul", "add", "Linear"),
            "googlenet": ("ConvReLU2d", "Linear")}[name]
    assert all(k in kinds for k in must), kinds


def test_an_op_verify_cannot_run_is_named_with_its_layer(tmp_path):
    """A graph op outside the allow-list stops the run with one line naming it."""
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.dequant = torch.ao.quantization.DeQuantStub()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.dequant(self.fc(self.quant(x)))
            return torch.cumsum(y, 1)

    m = Odd().eval()
    m.qconfig = torch.ao.quantization.get_default_qconfig(ENGINE)
    torch.ao.quantization.prepare(m, inplace=True)
    m(torch.randn(8, 4))
    torch.ao.quantization.convert(m, inplace=True)
    path = gm.scripted(m, tmp_path / "odd.pt")
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    with pytest.raises(qinspect.errors.VerifyError, match="cumsum.*the root forward"):
        qinspect.verify(path, input=tmp_path / "x.npy")

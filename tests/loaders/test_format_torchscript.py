"""TorchScript archives of eager-mode models: read without torch.jit.load, graph parsed."""

from __future__ import annotations

import zipfile

import numpy as np
import torch
from tests_support import keys_attributed

import qinspect
from qinspect.model import Mode, SourceKind


def test_eager_script_archive_matches_the_live_model(eager_made, eager_ts_file):
    q = eager_made.quantized
    ckpt = qinspect.load(eager_ts_file)
    assert ckpt.format.startswith("TorchScript archive")
    # the archive's attributes flatten to exactly the keys of the model's state_dict
    assert keys_attributed(ckpt) == set(q.state_dict()) and not ckpt.unrecognised
    assert [lay.name for lay in ckpt.layers] == ["quant", "conv", "fc1", "fc2"]
    kinds = {lay.name: lay.kind for lay in ckpt.layers}
    assert kinds == {"quant": "Quantize", "conv": "ConvReLU2d", "fc1": "LinearReLU",
                     "fc2": "Linear"}
    stub = ckpt.layer("quant")
    assert stub.output.scale == float(q.quant.scale)
    assert stub.output.zero_point == int(q.quant.zero_point)
    previous = stub
    for name in ("conv", "fc1", "fc2"):
        mod = q.get_submodule(name)
        layer = ckpt.layer(name)
        assert layer.mode is Mode.STATIC
        np.testing.assert_array_equal(layer.weight.values, mod.weight().int_repr().numpy())
        np.testing.assert_array_equal(layer.weight.quant.scale,
                                      mod.weight().q_per_channel_scales().numpy())
        assert layer.output.scale == mod.scale and layer.output.zero_point == mod.zero_point
        # the input comes from the graph in code/, not from module order
        assert layer.input == previous.output
        assert layer.input_source.layer == previous.name
        assert not layer.input_source.inferred
        previous = layer
    assert ckpt.layer("conv").input_source.kind is SourceKind.QUANT_STUB


def test_branches_follow_the_graph_not_the_order(tmp_path):
    """Two layers fed by the QuantStub, registered in the opposite order of use."""
    import torch.ao.quantization as tq
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = tq.QuantStub()
            self.late = nn.Linear(8, 4)
            self.early = nn.Linear(8, 8)
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            return self.dequant(self.late(x)), self.dequant(self.late(self.early(x)))

    torch.manual_seed(0)
    model = Branchy().eval()
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    prepared(torch.randn(4, 8))
    q = tq.convert(prepared)
    path = tmp_path / "branchy.pt"
    torch.jit.save(torch.jit.script(q), path)
    ckpt = qinspect.load(path)
    assert ckpt.layer("early").input_source.layer == "quant"
    late = ckpt.layer("late")  # first call is on the QuantStub's output
    assert late.input_source.layer == "quant" and not late.input_source.inferred


def test_code_is_parsed_never_run(eager_ts_file, tmp_path):
    """Code in the archive that would write a file if executed: qinspect only parses it."""
    marker = tmp_path / "ran"
    src = tmp_path / "evil.pt"
    with zipfile.ZipFile(eager_ts_file) as zin, zipfile.ZipFile(src, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("torch/ao/nn/quantized/modules.py"):
                data = (f"import os\nos.system('touch {marker}')\n").encode() + data
            zout.writestr(info, data)
    ckpt = qinspect.load(src)
    assert ckpt.layer("fc1").input_source.layer == "conv"
    assert not marker.exists()


def test_dynamic_and_weight_only_archives(tmp_path):
    import torch_models as tm
    from torch import nn

    class Dyn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    dyn = torch.ao.quantization.quantize_dynamic(Dyn().eval(), {nn.Linear}, dtype=torch.qint8)
    path = tmp_path / "dyn.pt"
    torch.jit.save(torch.jit.script(dyn), path)
    fc = qinspect.load(path).layer("fc")
    assert fc.mode is Mode.DYNAMIC and fc.input_source.kind is SourceKind.DYNAMIC
    np.testing.assert_array_equal(fc.weight.values, dyn.fc.weight().int_repr().numpy())

    _, emb = tm.embeddings(False)

    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = emb

        def forward(self, i):
            return self.m.emb(i)

    path = tmp_path / "emb.pt"
    torch.jit.save(torch.jit.script(Lookup()), path)
    ckpt = qinspect.load(path)
    assert not ckpt.unrecognised
    for name in ("emb", "bag"):
        layer = ckpt.layer(f"m.{name}")
        live = getattr(emb, name).weight()
        assert layer.mode is Mode.WEIGHT_ONLY
        np.testing.assert_array_equal(layer.weight.values, live.int_repr().numpy())
        np.testing.assert_array_equal(layer.weight.quant.scale,
                                      live.q_per_channel_scales().numpy())

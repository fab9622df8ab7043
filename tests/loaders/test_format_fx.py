"""FX graph mode: state_dict, TorchScript of the FX model, whole pickled GraphModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests_support import keys_attributed

import qinspect
from qinspect.model import Mode, Role, SourceKind


def _assert_weight(layer, qweight):
    w = layer.weight
    np.testing.assert_array_equal(w.values, qweight.int_repr().numpy())
    np.testing.assert_array_equal(w.quant.scale, qweight.q_per_channel_scales().numpy())
    np.testing.assert_array_equal(w.quant.zero_point,
                                  qweight.q_per_channel_zero_points().numpy())
    assert w.quant.axis == qweight.q_per_channel_axis()


def _assert_layers_match(ckpt, q):
    for name in ("conv", "fc1", "fc2"):
        mod = q.get_submodule(name)
        layer = ckpt.layer(name)
        assert layer.mode is Mode.STATIC
        _assert_weight(layer, mod.weight())
        np.testing.assert_array_equal(layer.bias, mod.bias().detach().numpy())
        assert layer.output.scale == float(mod.scale)
        assert layer.output.zero_point == int(mod.zero_point)
    quant = ckpt.layer("conv_input_0")
    assert quant.mode is Mode.QUANTIZE
    assert quant.output.scale == float(q.conv_input_scale_0)
    assert quant.output.zero_point == int(q.conv_input_zero_point_0)
    conv = ckpt.layer("conv")
    assert conv.input == quant.output
    assert conv.input_source.layer == "conv_input_0" and not conv.input_source.inferred


def test_state_dict_attributes_every_key(fx_made, fx_files):
    q = fx_made.quantized
    sd = q.state_dict()
    ckpt = qinspect.load(fx_files["state_dict"])
    assert ckpt.format == "FX graph mode state_dict"
    assert keys_attributed(ckpt) == set(sd) and not ckpt.unrecognised
    _assert_layers_match(ckpt, q)
    roles = {r.key: r.role for lay in ckpt.layers for r in lay.keys}
    assert roles["conv_input_scale_0"] is Role.INPUT_QPARAMS
    # FX's requantize buffers are read, but a state_dict cannot say which layer they feed
    assert ckpt.layer("op_0").output.scale == float(q._scale_0)
    assert ckpt.layer("fc1").input_source.inferred


@pytest.mark.parametrize("kind", ["ts", "pickle"])
def test_graph_formats_give_exact_inputs(fx_made, fx_files, kind):
    q = fx_made.quantized
    ckpt = qinspect.load(fx_files[kind])
    assert keys_attributed(ckpt) == set(q.state_dict()) and not ckpt.unrecognised
    _assert_layers_match(ckpt, q)
    fc1, fc2 = ckpt.layer("fc1"), ckpt.layer("fc2")
    # the graph: relu(dequantize(conv)) is requantized with _scale_0 before fc1
    assert fc1.input.scale == float(q._scale_0) and fc1.input.zero_point == int(q._zero_point_0)
    assert fc2.input.scale == float(q._scale_2) and fc2.input.zero_point == int(q._zero_point_2)
    for layer in (fc1, fc2):
        assert layer.input_source.kind is SourceKind.QUANT_STUB
        assert not layer.input_source.inferred
    assert ckpt.layer("op_0").mode is Mode.QUANTIZE
    assert all(not lay.input_source.inferred for lay in ckpt.layers if lay.input_source)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_graphmodule_pickle_is_read_without_running_its_code(fx_made, tmp_path, cli):
    marker = tmp_path / "pwned"
    q = fx_made.quantized
    q.__dict__["evil"] = _RunsCode(str(marker))
    try:
        path = tmp_path / "gm.pt"
        torch.save(q, path)
    finally:
        del q.__dict__["evil"]
    from qinspect.loaders.safe_pickle import scan_globals
    from qinspect.loaders.zipread import Archive

    with Archive(path) as a:
        assert "posix.system" in scan_globals(a.read("data.pkl"))
    result = cli("show", path)
    assert result.code == 0, result.err
    assert "conv_input_0" in result.out
    assert not marker.exists(), "the pickle's code ran"
    with pytest.raises(Exception):  # noqa: B017 - torch itself cannot load it (upstream bug)
        torch.load(path, weights_only=False)
    assert marker.exists()  # ...and torch.load does run the file's code: proof it was live

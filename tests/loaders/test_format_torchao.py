"""torchao quantize_ state_dicts, read without importing torchao's classes."""

from __future__ import annotations

import numpy as np
from tests_support import keys_attributed

import qinspect
from qinspect.model import Mode, SourceKind


def test_torchao_weights_match_the_tensor_subclass(torchao_made):
    config, made, path = torchao_made
    model = made.quantized
    ckpt = qinspect.load(path)
    assert ckpt.format == "torchao quantize_ state_dict"
    assert keys_attributed(ckpt) == set(model.state_dict()) and not ckpt.unrecognised
    for name in ("fc1", "fc2"):
        live = model.get_submodule(name).weight
        layer = ckpt.layer(name)
        w = layer.weight
        np.testing.assert_array_equal(w.values, live.qdata.numpy())
        np.testing.assert_array_equal(w.quant.scale, live.scale.double().numpy().reshape(-1))
        np.testing.assert_array_equal(w.quant.zero_point,
                                      live.zero_point.numpy().astype(np.int64).reshape(-1))
        assert w.quant.block_size == tuple(live.block_size)
        np.testing.assert_array_equal(layer.bias, model.get_submodule(name).bias.detach())
        if config == "int4wo":
            assert w.quant.dtype == "int4" and w.quant.block_size == (1, 32)
        if config == "int8dyn":
            assert layer.mode is Mode.DYNAMIC
            assert layer.input_source.kind is SourceKind.DYNAMIC
            assert "PerRow" in layer.input_source.explanation
        else:
            assert layer.mode is Mode.WEIGHT_ONLY
    fc1 = ckpt.layer("fc1").weight.quant
    expected = "per_group_affine (group 32)" if config == "int4wo" else "per_channel_affine"
    assert fc1.qscheme == expected
    # a per-row weight dequantizes exactly as torchao does
    if config != "int4wo":
        live = model.fc1.weight
        w = ckpt.layer("fc1").weight
        deq = w.values.astype(np.float32) * w.quant.scale.astype(np.float32)[:, None]
        np.testing.assert_array_equal(deq, live.dequantize().numpy())
    assert ckpt.layer("conv").mode is Mode.FLOAT

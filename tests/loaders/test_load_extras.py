"""Layer.extras: the raw BatchNorm statistics and QAT switches the loader keeps for diff."""

from __future__ import annotations

import numpy as np
import torch
import torch_models as tm

import qinspect
from qinspect.model import Role


def _load(obj, tmp_path, name="ckpt.pt"):
    return qinspect.load(tm.save(obj, tmp_path / name))


def _roles(layer):
    return {ref.key: ref.role for ref in layer.keys}


def test_float_batchnorm_keeps_running_stats(tmp_path):
    model, _ = tm.convnet_bn()
    ckpt = _load(model.state_dict(), tmp_path)
    for name, bn in (("features.0.1", model.features[0][1]), ("bn2", model.bn2)):
        layer = ckpt.layer(name)
        assert layer.kind == "BatchNorm"
        np.testing.assert_array_equal(layer.extras["running_mean"], bn.running_mean.numpy())
        np.testing.assert_array_equal(layer.extras["running_var"], bn.running_var.numpy())
        assert set(layer.extras) == {"running_mean", "running_var"}
        assert _roles(layer)[f"{name}.running_var"] is Role.NORM_STATS
        assert _roles(layer)[f"{name}.num_batches_tracked"] is Role.NORM_STATS
    assert ckpt.layer("conv2").extras == {}


def test_quantized_batchnorm_keeps_running_stats(tmp_path):
    _, _, q = tm.conv_zoo()
    ckpt = _load(q.state_dict(), tmp_path)
    layer = ckpt.layer("bn")
    np.testing.assert_array_equal(layer.extras["running_mean"], q.bn.running_mean.numpy())
    np.testing.assert_array_equal(layer.extras["running_var"], q.bn.running_var.numpy())
    assert _roles(layer)["bn.running_mean"] is Role.NORM_STATS


def test_qat_layer_keeps_fake_quant_switches(tmp_path):
    for freeze in (True, False):
        prepared, _ = tm.mlp_qat_exact(freeze=freeze)
        ckpt = _load(prepared.state_dict(), tmp_path, f"qat{freeze}.pt")
        fc1 = ckpt.layer("fc1")
        fq = prepared.fc1.weight_fake_quant
        assert int(fc1.extras["weight_fake_quant.observer_enabled"][0]) == int(
            fq.observer_enabled[0]) == (0 if freeze else 1)
        assert int(fc1.extras["weight_fake_quant.fake_quant_enabled"][0]) == 1
        assert _roles(fc1)["fc1.weight_fake_quant.observer_enabled"] is Role.FAKE_QUANT_FLAGS


def test_prepared_batchnorm_child_of_qat_convbn_keeps_stats(tmp_path):
    torch.manual_seed(0)
    model = tm.ConvBN()
    model.train()
    model = torch.ao.quantization.fuse_modules_qat(model, tm.CONVBN_FUSE)
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
    prepared = torch.ao.quantization.prepare_qat(model)
    prepared(torch.randn(2, 3, 6, 6))
    ckpt = _load(prepared.state_dict(), tmp_path)
    bn = ckpt.layer("features.0.0.bn")
    np.testing.assert_array_equal(bn.extras["running_var"],
                                  prepared.features[0][0].bn.running_var.numpy())

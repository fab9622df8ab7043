"""`qinspect verify` on the bundled samples and on purpose-built broken checkpoints.

Every expectation is computed from torch itself: the real quantized models' outputs,
their float models, torch's own dequantization; never from qinspect's numbers.
"""

from __future__ import annotations

import warnings

import flows
import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

import qinspect
from qinspect.analyse.verify import InputKind
from qinspect.model import Mode
from qinspect.quant.metrics import sqnr_db

warnings.filterwarnings("ignore")

STATIC_SAMPLES = [
    ("mlp_int8_fbgemm.pt", "sample.npy", None),
    ("mlp_int8_fbgemm.pt", "sample.npy", "fbgemm"),
    ("mlp_int8_qnnpack.pt", "sample.npy", None),
    ("mlp_fused_int8.pt", "sample.npy", None),
    ("convnet_int8.pt", "conv_sample.npy", None),
    ("convnet_int8.pt", "conv_sample.npy", "fbgemm"),
    ("convnet_int8.pt", "conv_sample.npy", "qnnpack"),
    ("lstm_dynamic_int8.pt", "lstm_sample.npy", None),
    ("lstm_dynamic_int8.pt", "lstm_sample.npy", "qnnpack"),
]


def _quantized_names(path) -> set[str]:
    ckpt = qinspect.load(path)
    return {lay.name for lay in ckpt.layers
            if lay.mode in (Mode.STATIC, Mode.DYNAMIC, Mode.QUANTIZE)}


@pytest.mark.parametrize("ckpt,inp,engine", STATIC_SAMPLES)
def test_every_quantized_layer_is_reported_and_kernels_agree_bit_exactly(
        samples, ckpt, inp, engine):
    report = qinspect.verify(samples / ckpt, input=samples / inp, engine=engine)
    rows = {r.name: r for r in report.layers}
    assert set(rows) == _quantized_names(samples / ckpt)
    for row in rows.values():
        assert row.verified, (row.name, row.reason)
        assert row.kernel is not None and row.kernel.elements > 0
        assert row.kernel.mismatches == 0, (row.name, row.kernel)
        assert row.sqnr_db is not None and np.isfinite(row.sqnr_db)
    assert report.engine == (engine or report.engine)


def test_dynamic_linear_sample_chains_on_the_users_input(samples, tmp_path):
    x = flows.dynlinear_dynamic().calib_input.numpy()
    np.save(tmp_path / "x.npy", x)
    report = qinspect.verify(samples / "dynlinear_int8.pt", input=tmp_path / "x.npy")
    rows = {r.name: r for r in report.layers}
    assert set(rows) == {"fc1", "fc2"}
    assert rows["fc1"].input_kind is InputKind.USER
    assert rows["fc2"].input_kind is InputKind.CHAINED
    assert all(r.kernel.agree for r in rows.values())
    assert report.chain == ("fc1", "fc2") and "assuming nothing runs between" in \
        report.chain_note
    # the chain feeds fc2 fc1's output directly (the real model has a ReLU between):
    # exactly what torch's two dynamic Linear modules compute back to back
    q = flows.dynlinear_dynamic().converted_model
    with flows.quant_engine(report.engine), torch.no_grad():
        want = q.fc2(q.fc1(torch.from_numpy(x))).numpy()
    np.testing.assert_array_equal(report.chain_output.values, want)
    fc1_only = qinspect.verify(samples / "dynlinear_int8.pt", input=tmp_path / "x.npy",
                               layer_glob="fc1")
    assert [r.name for r in fc1_only.layers] == ["fc1"]


def test_fused_mlp_chain_output_equals_the_real_quantized_model(samples):
    """LinearReLU: nothing runs between fc1 and fc2, so the chain is the real model."""
    flow = flows.mlp_qat("fbgemm", fused=True)
    x = np.load(samples / "sample.npy")
    report = qinspect.verify(samples / "mlp_fused_int8.pt", input=samples / "sample.npy")
    with flows.quant_engine(report.engine), torch.no_grad():
        want = flow.converted_model(torch.from_numpy(x)).numpy()
    assert report.chain == ("fc1", "fc2")
    assert report.chain_output.layer == "fc2"
    np.testing.assert_array_equal(report.chain_output.values, want)
    assert {r.name: r.relu for r in report.layers}["fc1"] is True


def test_unfused_mlp_chain_is_labelled_as_an_assumption(cli, samples):
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy")
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert "chain fc1 -> fc2" in text
    assert "assuming nothing runs between them" in text
    assert "chained = the previous layer's output (assumed chain)" in text
    assert "--model FILE.py:NAME runs the real model" in text


def _e2e_torch(flow, x, engine) -> float:
    with torch.no_grad():
        f = flow.float_model(x).numpy()
        with flows.quant_engine(engine):
            q = flow.converted_model(x).numpy()
    return sqnr_db(f, q)


@pytest.mark.parametrize("ckpt,ref,cls,inp,make", [
    ("mlp_int8_fbgemm.pt", "mlp_fp32.pt", "MnistMLP", "sample.npy",
     lambda: flows.mlp_qat("fbgemm")),
    ("mlp_int8_qnnpack.pt", "mlp_fp32.pt", "MnistMLP", "sample.npy",
     lambda: flows.mlp_ptq(engine="qnnpack")),
    ("convnet_int8.pt", "convnet_fp32.pt", "SmallConvNet", "conv_sample.npy",
     lambda: flows.convnet_ptq("x86")),
    ("lstm_dynamic_int8.pt", "lstm_fp32.pt", "TinyLSTM", "lstm_sample.npy",
     lambda: flows.lstm_dynamic()),
])
def test_model_end_to_end_sqnr_equals_running_both_torch_models(samples, ckpt, ref, cls, inp,
                                                                make):
    report = qinspect.verify(samples / ckpt, input=samples / inp, reference=samples / ref,
                             model=f"{samples / 'models.py'}:{cls}")
    want = _e2e_torch(make(), torch.from_numpy(np.load(samples / inp)), report.engine)
    assert report.end_to_end is not None
    assert abs(report.end_to_end.sqnr_db - want) < 0.1
    assert report.mode == "model"
    rows = {r.name: r for r in report.layers}
    assert set(rows) == _quantized_names(samples / ckpt)
    assert all(r.verified and r.input_kind is InputKind.MODEL for r in rows.values())
    assert all(r.kernel.agree for r in rows.values())
    if ckpt == "convnet_int8.pt":
        assert "BatchNorm 'bn2' folded" in rows["conv2"].float_domain
        assert "padding 1" in " ".join(rows["conv2"].notes)


def test_model_mode_feeds_each_layer_its_real_float_input(samples):
    """fc2's input is quantize(relu(fc1_float(x))) with fc1's output qparams: with the
    float reference weights, its float domain is the float model's own fc2 output."""
    flow = flows.mlp_qat("fbgemm")
    x = torch.from_numpy(np.load(samples / "sample.npy"))
    report = qinspect.verify(samples / "mlp_int8_fbgemm.pt", input=samples / "sample.npy",
                             reference=samples / "mlp_fp32.pt",
                             model=f"{samples / 'models.py'}:MnistMLP", layer_glob="fc2")
    (row,) = report.layers
    fm, qm = flow.float_model, flow.converted_model
    with torch.no_grad():
        h = fm.relu(fm.fc1(x))
        hq = torch.quantize_per_tensor(h, qm.fc1.scale, qm.fc1.zero_point, torch.quint8)
    assert row.input_scale == pytest.approx(qm.fc1.scale)
    assert row.input_zero_point == qm.fc1.zero_point
    with torch.no_grad():
        float_domain = fm.fc2(hq.dequantize().double().float()).double()
    with flows.quant_engine(report.engine), torch.no_grad():
        kernel = qm.fc2(hq).dequantize().double()
    want = sqnr_db(float_domain.numpy(), kernel.numpy())
    assert row.sqnr_db == pytest.approx(want, abs=0.05)


def _mlp_ptq(calibration_scale: float, seed: int = 0):
    """A small static MLP calibrated on inputs scaled by ``calibration_scale``."""
    torch.manual_seed(seed)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = tq.QuantStub()
            self.fc1 = nn.Linear(32, 24)
            self.fc2 = nn.Linear(24, 8)
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc2(self.fc1(self.quant(x))))

    model = M().eval()
    model.qconfig = tq.get_default_qconfig("x86")
    with flows.quant_engine("x86"):
        prepared = tq.prepare(model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(4):
                prepared(torch.randn(16, 32, generator=g) * calibration_scale)
        converted = tq.convert(prepared)
    return model, converted


def test_an_output_range_calibrated_too_narrow_shows_as_clipping(tmp_path):
    """fc1's output range comes from inputs 4x smaller than the sample: torch's own float
    output of fc1 on the dequantized input falls outside it for a known fraction."""
    _, q = _mlp_ptq(calibration_scale=0.25)
    torch.save(q.state_dict(), tmp_path / "narrow.pt")
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", x.numpy())
    report = qinspect.verify(tmp_path / "narrow.pt", input=tmp_path / "x.npy")
    row = {r.name: r for r in report.layers}["fc1"]
    xq = torch.quantize_per_tensor(x, float(q.quant.scale), int(q.quant.zero_point),
                                   torch.quint8)
    w = q.fc1.weight()
    y = torch.nn.functional.linear(xq.dequantize().double(), w.dequantize().double(),
                                   q.fc1.bias().double())
    s, z = q.fc1.scale, q.fc1.zero_point
    lo, hi = (0 - z - 0.5) * s, (255 - z + 0.5) * s
    want = float(((y < lo) | (y > hi)).double().mean())
    assert want > 0.05
    assert row.clipped == pytest.approx(want, abs=1e-9)
    assert row.input_clipped is not None and row.input_clipped > 0.05
    assert report.worst is not None and "calibrated too narrow" in report.explanation()
    assert row.kernel.agree


def test_a_wrong_output_scale_shows_large_error_and_clipping(samples, tmp_path):
    sd = torch.load(samples / "mlp_int8_qnnpack.pt", weights_only=True)
    good = qinspect.verify(samples / "mlp_int8_qnnpack.pt", input=samples / "sample.npy")
    sd["fc1.scale"] = sd["fc1.scale"] / 16
    torch.save(sd, tmp_path / "bad_scale.pt")
    bad = qinspect.verify(tmp_path / "bad_scale.pt", input=samples / "sample.npy")
    g = {r.name: r for r in good.layers}["fc1"]
    b = {r.name: r for r in bad.layers}["fc1"]
    assert b.output_scale == pytest.approx(float(sd["fc1.scale"]))
    assert g.clipped < 0.01 and g.max_error_lsb < 1.0
    assert b.clipped > 0.3 and b.max_error_lsb > 50 and b.sqnr_db < g.sqnr_db - 20
    assert b.kernel.agree  # torch computes the same wrong thing the file says
    assert bad.worst.name == "fc1"


def test_synthetic_inputs_follow_the_seed_and_the_batch(samples):
    a = qinspect.verify(samples / "convnet_int8.pt", seed=1, batch=2)
    b = qinspect.verify(samples / "convnet_int8.pt", seed=1, batch=2)
    c = qinspect.verify(samples / "convnet_int8.pt", seed=2, batch=2)
    rows = [{r.name: r for r in rep.layers}["conv2"] for rep in (a, b, c)]
    assert all(r.input_kind is InputKind.SYNTHETIC for r in rows)
    assert rows[0].sqnr_db == rows[1].sqnr_db != rows[2].sqnr_db
    assert rows[0].input_shape[0] == 2
    assert "stride 1, padding 0" in " ".join(rows[0].notes)


def test_progress_is_reported(samples):
    seen = []
    qinspect.verify(samples / "mlp_int8_qnnpack.pt", input=samples / "sample.npy",
                    progress=lambda what, done, total: seen.append((what, done, total)))
    assert seen and seen[-1][1] == seen[-1][2]


def test_lstm_chain_output_equals_the_real_quantized_model(samples):
    """TinyLSTM runs lstm -> fc with nothing between: the chain through both LSTM layers
    (torch's dynamic kernels as gates) and the head is the real model, bit for bit."""
    x = np.load(samples / "lstm_sample.npy")
    report = qinspect.verify(samples / "lstm_dynamic_int8.pt", input=samples / "lstm_sample.npy")
    with flows.quant_engine(report.engine), torch.no_grad():
        want = flows.lstm_dynamic().converted_model(torch.from_numpy(x)).numpy()
    assert report.chain == ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1",
                            "lstm.weight_hh_l1", "fc")
    np.testing.assert_array_equal(report.chain_output.values, want)


def test_reference_weights_make_the_float_domain_include_weight_error(samples):
    """With --reference the float domain of fc1 is torch's float Linear with the fp32
    weights on the same quantized input."""
    flow = flows.mlp_ptq(engine="qnnpack")
    x = torch.from_numpy(np.load(samples / "sample.npy"))
    plain = qinspect.verify(samples / "mlp_int8_qnnpack.pt", input=samples / "sample.npy",
                            layer_glob="fc1").layers[0]
    row = qinspect.verify(samples / "mlp_int8_qnnpack.pt", input=samples / "sample.npy",
                          reference=samples / "mlp_fp32.pt", layer_glob="fc1").layers[0]
    qm, fm = flow.converted_model, flow.float_model
    xq = torch.quantize_per_tensor(x, float(qm.quant.scale), int(qm.quant.zero_point),
                                   torch.quint8)
    with torch.no_grad():
        float_domain = torch.nn.functional.linear(xq.dequantize().double(),
                                                  fm.fc1.weight.double(), fm.fc1.bias.double())
        with flows.quant_engine("qnnpack"):
            kernel = qm.fc1(xq).dequantize().double()
    assert row.sqnr_db == pytest.approx(sqnr_db(float_domain.numpy(), kernel.numpy()), abs=1e-6)
    assert "mlp_fp32.pt" in qinspect.verify(samples / "mlp_int8_qnnpack.pt",
                                            reference=samples / "mlp_fp32.pt").float_domain
    assert row.sqnr_db != plain.sqnr_db and row.float_domain != plain.float_domain


def test_model_mode_folds_batchnorm_and_takes_conv_geometry_from_the_model(samples):
    """conv2 (fused with bn2 in the file, padding 1 in the model): its float domain is
    torch's fuse_conv_bn_eval of the float model's conv2/bn2 on the quantized input."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    flow = flows.convnet_ptq("x86")
    x = torch.from_numpy(np.load(samples / "conv_sample.npy"))
    report = qinspect.verify(samples / "convnet_int8.pt", input=samples / "conv_sample.npy",
                             reference=samples / "convnet_fp32.pt",
                             model=f"{samples / 'models.py'}:SmallConvNet", layer_glob="conv2")
    (row,) = report.layers
    fm, qm = flow.float_model, flow.converted_model
    # the file's own weights (the flow re-run here may fold BatchNorm a float32 rounding
    # apart from the machine that wrote the sample)
    qm.load_state_dict(torch.load(samples / "convnet_int8.pt", weights_only=True))
    with torch.no_grad():
        h = fm.features(x)
        hq = torch.quantize_per_tensor(h, qm.features[0].scale, qm.features[0].zero_point,
                                       torch.quint8)
        fused = fuse_conv_bn_eval(fm.conv2, fm.bn2)
        float_domain = torch.nn.functional.conv2d(
            hq.dequantize().double(), fused.weight.double(), fused.bias.double(), padding=1)
        with flows.quant_engine(report.engine):
            kernel = qm.conv2(hq).dequantize().double()
    assert row.input_shape == tuple(hq.shape)
    assert row.sqnr_db == pytest.approx(sqnr_db(float_domain.numpy(), kernel.numpy()), abs=1e-6)
    assert row.kernel.agree and row.kernel.elements == kernel.numel()


def test_a_float_layer_between_quantized_ones_breaks_the_chain(tmp_path):
    """quant -> fc1 -> dequant -> float mid -> quant2 -> fc2: fc2's input is not fc1's."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant, self.fc1, self.dq = tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()
            self.mid, self.q2, self.fc2 = nn.Linear(8, 8), tq.QuantStub(), nn.Linear(8, 8)
            self.dq2 = tq.DeQuantStub()

        def forward(self, x):
            return self.dq2(self.fc2(self.q2(self.mid(self.dq(self.fc1(self.quant(x)))))))

    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    m.mid.qconfig = None
    with flows.quant_engine("x86"):
        prepared = tq.prepare(m)
        prepared(torch.randn(16, 8))
        torch.save(tq.convert(prepared).state_dict(), tmp_path / "partial.pt")
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    report = qinspect.verify(tmp_path / "partial.pt", input=tmp_path / "x.npy")
    kinds = {r.name: r.input_kind for r in report.layers}
    assert kinds == {"quant": InputKind.USER, "fc1": InputKind.USER,
                     "q2": InputKind.SYNTHETIC, "fc2": InputKind.SYNTHETIC}
    assert report.chain == () and report.chain_note is None


def test_a_layer_torch_refuses_is_reported_and_the_rest_still_runs(samples, tmp_path):
    sd = torch.load(samples / "mlp_int8_qnnpack.pt", weights_only=True)
    sd["fc1.scale"] = torch.tensor(1e38)
    torch.save(sd, tmp_path / "refused.pt")
    with pytest.raises(RuntimeError, match="requantization scale"):
        q = flows.mlp_ptq(engine="qnnpack").converted_model
        q.fc1.scale = 1e38
        with flows.quant_engine("qnnpack"):
            q(torch.from_numpy(np.load(samples / "sample.npy")))
    report = qinspect.verify(tmp_path / "refused.pt", input=samples / "sample.npy")
    rows = {r.name: r for r in report.layers}
    assert rows["quant"].verified
    assert not rows["fc1"].verified and "requantization scale" in rows["fc1"].reason

"""The committed sample checkpoints are exactly what the real torch flows produce.

Regenerates every sample into a temporary folder with make_samples.py and compares
tensors (not bytes) with the committed files, then checks facts torch itself reports
about them, which the rest of qinspect's tests rely on.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"
sys.path.insert(0, str(SAMPLES))

import flows  # noqa: E402
import make_samples  # noqa: E402
import models  # noqa: E402
import reproducible  # noqa: E402


class StandIn:
    """Stands in for torch.ScriptObject on weights_only load: keeps the packed state
    (plain tuples, tensors, strings) without instantiating the C++ class."""

    def __setstate__(self, state):
        self.state = state


def load(path: Path):
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with torch.serialization.safe_globals([(StandIn, "torch.ScriptObject")]):
        return torch.load(path, weights_only=True)


def assert_same(a, b, where: str) -> None:
    """Exact, recursive equality of loaded checkpoint contents."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_quantized:
            assert a.qscheme() == b.qscheme(), where
            assert torch.equal(a.int_repr(), b.int_repr()), f"{where}: int values"
            if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                assert a.q_scale() == b.q_scale(), f"{where}: scale"
                assert a.q_zero_point() == b.q_zero_point(), f"{where}: zero_point"
            else:
                assert a.q_per_channel_axis() == b.q_per_channel_axis(), f"{where}: axis"
                s_a, s_b = a.q_per_channel_scales(), b.q_per_channel_scales()
                z_a, z_b = a.q_per_channel_zero_points(), b.q_per_channel_zero_points()
                assert torch.equal(s_a, s_b), f"{where}: scales"
                assert torch.equal(z_a, z_b), f"{where}: zero_points"
        else:
            assert torch.equal(a, b), f"{where}: values"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, StandIn):
        assert_same(a.state, b.state, f"{where}.state")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


EXPECTED_FILES = sorted([*make_samples.FILES, *make_samples.SAMPLES])


# Kernels other than the pinned ones, as another machine or a caller's environment would
# pick them: make_samples.py must override these before torch starts.
UNPINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "ALL"}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """Run ``make_samples.py --out DIR`` as ``make samples`` does, in a fresh process
    whose environment asks torch for other kernels than the pinned ones."""
    out = tmp_path_factory.mktemp("samples")
    env = {**os.environ, **UNPINNED_ENV}
    subprocess.run([sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(out)],
                   env=env, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def sd():
    """Committed files, loaded once."""
    return {name: load(SAMPLES / name) for name in EXPECTED_FILES}


def test_committed_file_set_is_what_make_samples_writes(regenerated):
    # make_format_samples.py writes the other formats' samples into the same folder
    committed = {p.name for p in SAMPLES.iterdir() if p.suffix in (".pt", ".npy")}
    assert set(EXPECTED_FILES) <= committed
    assert sorted(p.name for p in regenerated.iterdir()) == EXPECTED_FILES


def test_folder_stays_small():
    total = sum(p.stat().st_size for p in SAMPLES.iterdir() if p.is_file())
    assert total < 3_000_000


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_committed_equals_regenerated(name, regenerated, sd):
    assert_same(sd[name], load(regenerated / name), name)


# ----------------------------------------------------------- facts torch reports


def _w(sd_, layer):
    return sd_[f"{layer}._packed_params._packed_params"][0]


def test_mlp_fbgemm_weights_per_channel_axis0(sd):
    for name in ("mlp_int8_fbgemm.pt", "mlp_fused_int8.pt"):
        for layer in ("fc1", "fc2"):
            w = _w(sd[name], layer)
            assert w.dtype == torch.qint8
            # qconfig asks per_channel_symmetric; the tensor says affine with zero zps
            assert w.qscheme() == torch.per_channel_affine
            assert w.q_per_channel_axis() == 0
            assert torch.count_nonzero(w.q_per_channel_zero_points()) == 0
            assert sd[name][f"{layer}._packed_params.dtype"] == torch.qint8


def test_mlp_qnnpack_weights_per_tensor(sd):
    s = sd["mlp_int8_qnnpack.pt"]
    for layer in ("fc1", "fc2"):
        w = _w(s, layer)
        assert w.dtype == torch.qint8 and w.qscheme() == torch.per_tensor_affine
    # fbgemm activations use reduce_range (0..127): input scale ~1/127 vs ~1/255
    fb = sd["mlp_int8_fbgemm.pt"]
    assert fb["quant.scale"].item() == pytest.approx(1 / 127, rel=0.01)
    assert s["quant.scale"].item() == pytest.approx(1 / 255, rel=0.01)


def test_mlp_files_share_float_weights_and_keys(sd):
    fp32 = sd["mlp_fp32.pt"]
    assert list(fp32) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert list(sd["mlp_fused_fp32.pt"]) == list(fp32)
    prepared = sd["mlp_qat_prepared.pt"]
    for k, v in fp32.items():
        assert torch.equal(v, prepared[k]), k  # end-of-QAT float weights
    assert "fc1.weight_fake_quant.scale" in prepared
    assert list(sd["mlp_int8_fbgemm.pt"]) == list(sd["mlp_fused_int8.pt"])


def test_fusion_shows_only_in_fc1_output_qparams(sd):
    # fused LinearReLU output is >= 0, so its zero_point sits at quant_min
    assert sd["mlp_fused_int8.pt"]["fc1.zero_point"].item() == 0
    assert sd["mlp_int8_fbgemm.pt"]["fc1.zero_point"].item() > 0


def test_convnet_int8_has_no_bn_and_fp32_has_moved_bn(sd):
    q = sd["convnet_int8.pt"]
    assert not [k for k in q if k.startswith(("bn2", "features.1", "features.2"))]
    assert not [k for k in q if "running_" in k]
    assert q["features.0.weight"].qscheme() == torch.per_channel_affine
    assert {"add.scale", "add.zero_point"} <= set(q)
    f = sd["convnet_fp32.pt"]
    for bn in ("features.1", "bn2"):
        assert f[f"{bn}.num_batches_tracked"].item() == 5
        assert not torch.equal(f[f"{bn}.running_mean"], torch.zeros(8))
        assert not torch.equal(f[f"{bn}.running_var"], torch.ones(8))
        assert not torch.equal(f[f"{bn}.weight"], torch.ones(8))


def test_dynamic_linear_files(sd):
    q8, f16, fp = sd["dynlinear_int8.pt"], sd["dynlinear_fp16.pt"], sd["dynlinear_fp32.pt"]
    assert _w(q8, "fc1").qscheme() == torch.per_tensor_affine
    assert f16["fc1._packed_params.dtype"] == torch.float16
    w16 = _w(f16, "fc1")
    # fp16 weights come back unpacked as float32, rounded to fp16 values
    assert w16.dtype == torch.float32
    assert torch.equal(w16, fp["fc1.weight"].half().float())
    # dynamic modules still write an unused output scale/zero_point
    assert q8["fc1.scale"].item() == 1.0 and q8["fc1.zero_point"].item() == 0


def test_lstm_needs_scriptobject_standin():
    with pytest.raises(pickle.UnpicklingError):
        torch.load(SAMPLES / "lstm_dynamic_int8.pt", weights_only=True)
    s = load(SAMPLES / "lstm_dynamic_int8.pt")
    cell = s["lstm._all_weight_values.0.param"]
    (kind, biases, _doubles, _longs, packed), cls = cell.state
    assert kind == "quantized_dynamic" and cls == "__torch__.torch.classes.rnn.CellParamsBase"
    assert [b.shape for b in biases] == [torch.Size([128])] * 2
    (w_ih, _), lin_cls = packed[0].state
    assert lin_cls == "__torch__.torch.classes.quantized.LinearPackedParamsBase"
    assert w_ih.dtype == torch.qint8 and w_ih.shape == (128, 16)


def test_embedding_4bit_dtype_quirk(sd):
    s = sd["embbag_4bit.pt"]
    assert s["emb_bag._packed_params.dtype"] == torch.quint4x2
    assert s["emb._packed_params.dtype"] == torch.quint8  # torch's record...
    for layer in ("emb_bag", "emb"):
        w = s[f"{layer}._packed_params._packed_weight"]
        assert w.dtype == torch.quint4x2  # ...while the tensor is 4-bit
        assert w.qscheme() == torch.per_channel_affine_float_qparams


def test_sample_inputs(sd):
    for name, shape in [
        ("sample.npy", (4, 784)),
        ("conv_sample.npy", (2, 1, 28, 28)),
        ("lstm_sample.npy", (5, 2, 16)),
    ]:
        assert sd[name].dtype == np.float32 and sd[name].shape == shape


@pytest.mark.parametrize(
    "cls, name",
    [
        (models.MnistMLP, "mlp_fp32.pt"),
        (models.MnistMLPFused, "mlp_fused_fp32.pt"),
        (models.SmallConvNet, "convnet_fp32.pt"),
        (models.TinyLSTM, "lstm_fp32.pt"),
        (models.DynamicLinear, "dynlinear_fp32.pt"),
        (models.TinyEmbeddingBag, "embbag_fp32.pt"),
    ],
)
def test_fp32_files_load_into_no_arg_models(cls, name, sd):
    cls().load_state_dict(sd[name], strict=True)


# --------------------------------------------------------------- live objects


def test_live_mlp_matches_file_and_runs(sd):
    f = flows.mlp_qat("fbgemm", 0)
    assert_same(f.converted_model.state_dict(), sd["mlp_int8_fbgemm.pt"], "live")
    x = torch.from_numpy(sd["sample.npy"])
    with flows.quant_engine("fbgemm"), torch.no_grad():
        yq, yf = f.converted_model(x), f.float_model(x)
    assert yq.shape == (4, 10)
    assert (yq - yf).abs().max().item() < 0.1


def test_live_embedding_scales_match_file(sd):
    # torch 2.13's unpacked embedding weights read scales from the packed module's
    # memory; make_samples must save while the module is alive (see README.md)
    f = flows.embbag_weight_only()
    s = sd["embbag_4bit.pt"]
    for layer in ("emb_bag", "emb"):
        live = getattr(f.converted_model, layer).weight()
        assert_same(live, s[f"{layer}._packed_params._packed_weight"], layer)


def test_this_process_runs_the_pinned_kernels():
    # tests/conftest.py pins before torch is imported; live flows here rely on it
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    for key, value in reproducible.PINNED_ENV.items():
        assert os.environ[key] == value


def test_flows_refuse_to_run_unpinned():
    # torch imported first: too late to pin, so the flow must not silently run
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import flows; "
            "flows.dynlinear_dynamic()")
    env = {k: v for k, v in os.environ.items() if k not in reproducible.PINNED_ENV}
    run = subprocess.run([sys.executable, "-c", code, str(SAMPLES)], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "RuntimeError: sample flows need torch's CPU kernels pinned" in run.stderr


def test_flows_leave_global_state_alone():
    engine = torch.backends.quantized.engine
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    flows.dynlinear_dynamic(torch.qint8, "qnnpack", 0)
    assert torch.backends.quantized.engine == engine
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)

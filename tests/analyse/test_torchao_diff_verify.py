"""qinspect diff and verify on torchao quantize_ state_dicts, against torch/torchao.

The numbers diff reports (SQNR, max error, LSB error with each element's block scale,
clipping) are recomputed here from the live torchao tensors (``weight.dequantize()``,
``weight.scale`` repeated over its block) with torch, independently of qinspect's code.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import qinspect
from qinspect.analyse.diff import Comparison, diff
from qinspect.analyse.verify import InputKind

pytest.importorskip("torchao")

QRANGE = {"int8wo": (-128, 127), "int8dyn": (-128, 127), "int4wo": (-8, 7)}


@pytest.fixture(scope="module")
def float_file(torchao_made, tmp_path_factory):
    _config, made, _path = torchao_made
    path = tmp_path_factory.mktemp("ao_float") / "float.pt"
    torch.save(made.float_model.state_dict(), path)
    return path


def _torch_numbers(fp_w: torch.Tensor, w, qmin: int, qmax: int) -> dict[str, float]:
    """Every diff metric of one weight, from torchao's own tensors, in float64."""
    ref = fp_w.detach().double()
    dq = w.dequantize().double()
    err = ref - dq
    scale = w.scale.double()
    zp = (w.zero_point.double() if w.zero_point is not None else torch.zeros_like(scale))
    for dim, b in enumerate(w.block_size):
        if scale.shape[dim] != ref.shape[dim]:
            scale = scale.repeat_interleave(b, dim=dim)
            zp = zp.repeat_interleave(b, dim=dim)
    lsb = err.abs() / scale
    lo = (qmin - zp - 0.5) * scale - 1e-3 * scale
    hi = (qmax - zp + 0.5) * scale + 1e-3 * scale
    clipped = ((ref < lo) | (ref > hi)).double().mean()
    return {
        "sqnr_db": float(20 * torch.log10(ref.norm() / err.norm())),
        "max_abs_error": float(err.abs().max()),
        "mean_abs_error": float(err.abs().mean()),
        "max_error_lsb": float(lsb.max()),
        "mean_error_lsb": float(lsb.mean()),
        "clipped_fraction": float(clipped),
        "energy": (float((ref * ref).sum()), float((err * err).sum())),
    }


def test_diff_float_vs_torchao_matches_torch(torchao_made, float_file):
    config, made, path = torchao_made
    report = diff(qinspect.load(float_file), qinspect.load(path))
    rows = {r.name: r for r in report.layers}
    signal = noise = 0.0
    for name in ("fc1", "fc2"):
        row = rows[name]
        assert row.comparison is Comparison.FLOAT_VS_QUANTIZED
        w = made.quantized.get_submodule(name).weight
        expected = _torch_numbers(made.float_model.get_submodule(name).weight, w,
                                  *QRANGE[config])
        got = row.weight
        for key in ("sqnr_db", "max_abs_error", "mean_abs_error", "max_error_lsb",
                    "mean_error_lsb", "clipped_fraction"):
            assert math.isclose(getattr(got, key), expected[key], rel_tol=1e-9,
                                abs_tol=1e-12), key
        # round-to-nearest with a symmetric per-block scale: within half a step, no clipping
        assert got.max_error_lsb <= 0.5 + 1e-3 and got.clipped_fraction == 0.0
        groups = w.block_size[-1] < w.qdata.shape[-1]
        assert got.granularity == (f"per group of {w.block_size[-1]} (blocks 1x32)" if groups
                                   else f"per row (blocks 1x{w.qdata.shape[-1]})")
        assert got.dtype == ("int4" if config == "int4wo" else "int8")
        signal += expected["energy"][0]
        noise += expected["energy"][1]
    assert math.isclose(report.summary.weight_sqnr_db, 10 * math.log10(signal / noise),
                        rel_tol=1e-9)
    assert not any(r.flags for r in report.layers)


def test_diff_cli_prints_torchao_rows(torchao_made, float_file, cli):
    config, made, path = torchao_made
    res = cli("diff", str(float_file), str(path), "--json")
    assert res.code == 0, res.out + res.err
    data = json.loads(res.out)
    fc1 = next(r for r in data["layers"] if r["name"] == "fc1")
    w = made.quantized.fc1.weight
    expected = _torch_numbers(made.float_model.fc1.weight, w, *QRANGE[config])
    assert f"{fc1['weight']['sqnr_db']:.1f}" == f"{expected['sqnr_db']:.1f}"
    assert fc1["weight"]["granularity"].startswith(
        "per group of 32" if config == "int4wo" else "per row")
    table = cli("diff", str(float_file), str(path))
    assert f"{expected['sqnr_db']:.1f} dB" in table.out


def test_check_reference_on_torchao(torchao_made, float_file, cli):
    _config, _made, path = torchao_made
    res = cli("check", str(path), "--reference", str(float_file))
    assert res.code == 0, res.out + res.err
    assert "shares no quantized weight" not in res.out + res.err
    assert "QI200" in res.out


def test_torchao_vs_torchao_compares_blockwise(torchao_made):
    _config, _made, path = torchao_made
    ckpt = qinspect.load(path)
    report = diff(ckpt, ckpt)
    fc1 = next(r for r in report.layers if r.name == "fc1")
    assert fc1.comparison is Comparison.QUANTIZED_VS_QUANTIZED
    assert fc1.weight.error_energy == 0 and fc1.quant_change.int_changed_fraction == 0
    np.testing.assert_array_equal(ckpt.layer("fc1").weight.quant.block_size,
                                  tuple(_made.quantized.fc1.weight.block_size))


# --- verify ----------------------------------------------------------------------------


def _float64_linear(module: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    w = module.weight.detach().double().numpy()
    return x.astype(np.float64) @ w.T + module.bias.detach().double().numpy()


@pytest.mark.parametrize("name,k", [("fc1", 128), ("fc2", 32)])
def test_verify_torchao_layer_against_torchao(torchao_made, float_file, tmp_path, name, k):
    from qinspect.analyse.verify import InputKind
    from qinspect.quant.metrics import sqnr_db

    config, made, path = torchao_made
    x = np.random.default_rng(7).standard_normal((5, k)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    report = qinspect.verify(path, input=tmp_path / "x.npy", reference=float_file)
    assert report.engine == "torchao"
    row = next(r for r in report.layers if r.name == name)
    assert row.verified and row.input_kind is InputKind.USER
    assert row.mode == ("dynamic" if config == "int8dyn" else "weight_only")
    with torch.no_grad():
        live = made.quantized.get_submodule(name)(torch.from_numpy(x)).numpy()
    expected = _float64_linear(made.float_model.get_submodule(name), x)
    assert math.isclose(row.sqnr_db, sqnr_db(expected, live), rel_tol=1e-12)
    assert row.max_abs_error == pytest.approx(float(np.abs(expected - live).max()), rel=1e-12)
    assert row.kernel.engine == "torchao" and row.kernel.agree
    if config == "int8dyn":  # qinspect's numpy arithmetic is bit-exact with torchao's
        assert row.kernel.max_diff == 0.0
        assert row.input_sqnr_db is not None and row.input_clipped == 0.0
    other = next(r for r in report.layers if r.name != name)
    assert other.input_kind is InputKind.SYNTHETIC


def test_verify_torchao_without_reference_measures_float_rounding(torchao_made):
    config, made, path = torchao_made
    report = qinspect.verify(path)
    for row in report.layers:
        assert row.verified and "dequantized" in row.float_domain
        if config != "int8dyn":  # weight-only: nothing but float32 rounding is left
            assert row.sqnr_db > 100
    # every row ran on synthetic input: a stress test of the arithmetic, never a headline
    assert all(r.input_kind is InputKind.SYNTHETIC for r in report.layers)
    assert report.worst is None and report.explanation() is None


DYNAMIC_REFERENCE_CHECK = """
import numpy as np, torch
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8Tensor, quantize_
from torchao.quantization.granularity import PerRow
from qinspect.analyse.verify.kernels import torchao_int8_pairs_saturate
from qinspect.analyse.verify.torchao import dynamic_linear_reference, quantize_per_token_symmetric

torch.manual_seed(0)
rng = np.random.default_rng(3)
x = (rng.standard_normal((64, 48)) * np.exp(rng.uniform(-8, 8, (64, 1)))).astype(np.float32)
x[0] = 0.0
x[1] = np.float32(2.0 ** -140)
x[2, ::2] = 127.5 * np.float32(0.25)  # exact ties of x / scale
live = Int8Tensor.from_hp(torch.from_numpy(x), PerRow())
q, s = quantize_per_token_symmetric(x)
np.testing.assert_array_equal(q, live.qdata.numpy())
np.testing.assert_array_equal(s.view(np.uint32), live.scale.numpy().view(np.uint32))
lin = torch.nn.Linear(48, 24)
quantize_(lin, Int8DynamicActivationInt8WeightConfig())
with torch.no_grad():
    expected = lin(torch.from_numpy(x)).numpy()
pairs = torchao_int8_pairs_saturate()
got, _, _ = dynamic_linear_reference(x, lin.weight.qdata.numpy(), lin.weight.scale.numpy(),
                                     lin.bias.detach().numpy(), int16_pairs=pairs)
np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
exact, _, _ = dynamic_linear_reference(x, lin.weight.qdata.numpy(), lin.weight.scale.numpy(),
                                       lin.bias.detach().numpy())
print(pairs, int(np.count_nonzero(exact != got)))
"""


@pytest.mark.parametrize("onednn_isa", ["SSE41", "AVX512_CORE_VNNI", None])
def test_dynamic_reference_is_bit_exact_with_torchao(onednn_isa):
    """The reference equals torchao's live Int8Tensor linear bit for bit whichever path
    torchao's CPU matmul takes here: exact int32 (s8s8, or u8s8 with VNNI) or, on a VNNI
    CPU with oneDNN capped below VNNI, u8s8 with byte-product pairs saturated to int16 (the
    kernel probe decides; each case in a fresh process, since oneDNN reads its cap once)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if onednn_isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = onednn_isa
    done = subprocess.run([sys.executable, "-c", DYNAMIC_REFERENCE_CHECK],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    saturates, differ = done.stdout.split()
    # where the kernel saturates, the check above is not vacuous: outputs really change
    assert saturates == "False" or int(differ) > 0


def test_verify_torchao_cli_json(torchao_made, float_file, cli):
    from importlib import resources

    import jsonschema

    _config, _made, path = torchao_made
    res = cli("verify", str(path), "--reference", str(float_file), "--json")
    assert res.code == 0, res.out + res.err
    data = json.loads(res.out)
    schema = json.loads(resources.files("qinspect.schemas").joinpath("verify-2.json")
                        .read_text())
    jsonschema.validate(data, schema)
    assert data["engine"] == "torchao"
    assert {r["name"] for r in data["layers"]} == {"fc1", "fc2"}
    table = cli("verify", str(path), "--reference", str(float_file))
    assert table.code == 0 and "torchao" in table.out


def test_verify_torchao_refuses_model(torchao_made, float_file, tmp_path):
    from qinspect.errors import InputError

    _config, _made, path = torchao_made
    np.save(tmp_path / "x.npy", np.zeros((1, 128), np.float32))
    with pytest.raises(InputError, match="--model"):
        qinspect.verify(path, model="m.py:Net", reference=float_file, input=tmp_path / "x.npy")

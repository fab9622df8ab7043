"""qinspect diff and verify on torchao quantize_ state_dicts, against torch/torchao.

The numbers diff reports (SQNR, max error, LSB error with each element's block scale,
clipping) are recomputed here from the live torchao tensors (``weight.dequantize()``,
``weight.scale`` repeated over its block) with torch, independently of qinspect's code.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import qinspect
from qinspect.analyse.diff import Comparison, diff

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

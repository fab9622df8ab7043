"""verify on files that carry their graph (TorchScript, pickled GraphModule): the whole
model runs once from the stored code, each layer on its real input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qinspect
from qinspect.analyse.verify import InputKind
from qinspect.model import Mode
from qinspect.quant.metrics import sqnr_db


def _direct(made, x):
    with torch.no_grad():
        return sqnr_db(made.float_model(x).double().numpy(), made.quantized(x).double().numpy())


def _check(report, ckpt, expected):
    assert report.mode == "graph"
    quantized = {lay.name for lay in ckpt.layers if lay.mode is not Mode.FLOAT}
    assert {r.name for r in report.layers if r.verified} == quantized
    assert all(r.input_kind is InputKind.MODEL for r in report.layers)
    assert round(report.end_to_end.sqnr_db, 1) == round(expected, 1)
    for row in report.layers:
        assert row.sqnr_db > 30 and row.max_error_lsb < 1.0


@pytest.mark.parametrize("kind", ["ts", "pickle"])
def test_fx_graph_verify_matches_running_the_models(fx_made, fx_files, tmp_path, kind):
    x = fx_made.example
    sample, reference = tmp_path / "x.npy", tmp_path / "fp32.pt"
    np.save(sample, x.numpy())
    torch.save(fx_made.float_model.state_dict(), reference)
    report = qinspect.verify(fx_files[kind], input=sample, reference=reference)
    _check(report, qinspect.load(fx_files[kind]), _direct(fx_made, x))


def test_eager_torchscript_verify_matches_running_the_models(eager_made, eager_ts_file,
                                                             tmp_path):
    x = eager_made.example
    sample, reference = tmp_path / "x.npy", tmp_path / "fp32.pt"
    np.save(sample, x.numpy())
    torch.save(eager_made.float_model.state_dict(), reference)
    report = qinspect.verify(eager_ts_file, input=sample, reference=reference)
    _check(report, qinspect.load(eager_ts_file), _direct(eager_made, x))


def test_graph_verify_needs_an_input(eager_ts_file, cli):
    result = cli("verify", eager_ts_file)
    assert result.code == 2 and "--input" in result.err


def test_pt2_verify_with_a_wrongly_shaped_input_is_a_clear_input_error(cli, samples):
    result = cli("verify", samples / "pt2e_mlp_x86.pt2", "--input", samples / "sample.npy")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0]
    assert "cannot run on --input of shape [4, 784]" in lines[0]

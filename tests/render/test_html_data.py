"""The numbers the pages draw that the terminal tables do not show: SQNR per output
channel (diff) and the histogram of stored integers (show), against torch's own values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch_models import mlp_ptq, save

from qinspect.quant.metrics import channel_sqnr_db, sqnr_db


def _torch_channel_sqnr(w: torch.Tensor, dq: torch.Tensor) -> list[float]:
    w, e = w.double().flatten(1), (w.double() - dq.double()).flatten(1)
    return (20 * (w.norm(dim=1).log10() - e.norm(dim=1).log10())).tolist()


def test_diff_channel_sqnr_is_torchs_per_channel_sqnr(tmp_path, cli):
    import json

    model, _, converted = mlp_ptq("x86")
    a = save(model.state_dict(), tmp_path / "fp32.pt")
    b = save(converted.state_dict(), tmp_path / "int8.pt")
    doc = json.loads(cli("diff", a, b, "--json").out)
    by_name = {lay["name"]: lay["weight"] for lay in doc["layers"]}
    for name in ("fc1", "fc2"):
        expected = _torch_channel_sqnr(getattr(model, name).weight.detach(),
                                       getattr(converted, name).weight().dequantize())
        got = by_name[name]["channel_sqnr_db"]
        assert len(got) == getattr(model, name).out_features
        # float64 sums in another order than torch's norm: equal to ~1e-12 relative
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(0, 5)),
              elements=st.floats(-1e3, 1e3, width=32)),
       arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(0, 5)),
              elements=st.floats(-1e3, 1e3, width=32)))
def test_channel_sqnr_is_sqnr_of_each_row(ref, noise):
    if ref.shape != noise.shape:
        noise = np.resize(noise, ref.shape) if noise.size else np.zeros_like(ref)
    test = ref + noise
    got = channel_sqnr_db(ref, test)
    want = [sqnr_db(ref[i], test[i]) for i in range(ref.shape[0])]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_channel_sqnr_edges_and_axis():
    ref = np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    test = np.array([[1.0, 2.0], [0.0, 0.0], [0.5, 0.0], [1.0, 1.0]])
    got = channel_sqnr_db(ref, test)
    assert got[0] == np.inf and got[1] == np.inf and got[2] == -np.inf and np.isnan(got[3])
    big = np.full((2, 3), 1e200)
    assert channel_sqnr_db(big, big * (1 + 1e-6))[0] == pytest.approx(120.0, abs=1e-6)
    m = np.random.default_rng(0).standard_normal((3, 4))
    t = m + 0.01
    np.testing.assert_allclose(channel_sqnr_db(m, t, axis=1),
                               [sqnr_db(m[:, j], t[:, j]) for j in range(4)], rtol=1e-12)


def test_show_histogram_counts_torchs_int_repr(tmp_path):
    from qinspect import load, summarise
    from qinspect.render.html_show import _layer_charts

    _, _, converted = mlp_ptq("x86")
    path = save(converted.state_dict(), tmp_path / "int8.pt")
    rows = {row.layer.name: row for row in summarise(load(path)).layers}
    for name in ("fc1", "fc2"):
        ints = getattr(converted, name).weight().int_repr().flatten().numpy().astype(np.int64)
        hist = _layer_charts(rows[name].layer.weight)["histogram"]
        assert (hist["lo"], hist["hi"], hist["width"]) == (-128, 127, 1)  # qint8
        expected = np.bincount(ints + 128, minlength=256)
        assert hist["counts"].tolist() == expected.tolist()
        assert hist["outside"] == 0
        scales = getattr(converted, name).weight().q_per_channel_scales().numpy()
        assert _layer_charts(rows[name].layer.weight)["scales"]["min"].tolist() == \
            scales.astype(np.float64).tolist()


@pytest.mark.parametrize("axis", [1, 5, -3, None])
def test_channel_sqnr_of_a_weight_with_any_axis_from_the_file(axis):
    """The file's axis is untrusted: out of range (or absent) falls back to axis 0."""
    from qinspect.analyse.diff import weight_error
    from qinspect.model import TensorQuant, axis_granularity

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4, 3))
    cand = ref + 0.01 * rng.standard_normal((4, 3))
    quant = TensorQuant("qint8", "per_channel_affine", np.full(3, np.nan), np.zeros(3), axis,
                        granularity=axis_granularity(axis))
    got = weight_error(ref, cand, quant, "a").channel_sqnr_db
    on = 1 if axis == 1 else 0
    want = [sqnr_db(np.take(ref, i, on), np.take(cand, i, on)) for i in range(ref.shape[on])]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)

"""qinspect.quant.metrics against independent torch float64 computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qinspect.quant import metrics as qm
from qinspect.quant.affine import dequantize_per_channel, quantize_per_channel
from qinspect.quant.dtypes import qdtype

SETTINGS = settings(max_examples=80, deadline=None)
RTOL = 1e-12

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def ref_test_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A reference array and a perturbed copy (float32 or float64)."""
    shape = draw(shapes)
    dt = draw(st.sampled_from([np.float32, np.float64]))
    ref = draw(hnp.arrays(np.float64, shape, elements=finite)).astype(dt)
    noise = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3, width=64)))
    return ref, (ref + noise).astype(dt)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@SETTINGS
@given(pair=ref_test_pair())
@example(pair=(np.zeros(2), np.full(2, 1.15000978e-248)))  # once underflowed the reference
@example(pair=(np.full(3, 1e-200), np.full(3, 2e-200)))
def test_error_metrics_match_torch(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, test = pair
    r, t = t64(ref), t64(test)
    err = (r - t).abs()
    assert qm.max_abs_error(ref, test) == err.max().item()
    np.testing.assert_allclose(qm.mean_abs_error(ref, test), err.mean().item(), rtol=RTOL)
    # math.hypot scales internally, so tiny errors (1e-248) do not underflow to zero
    # the way torch.linalg.vector_norm's sum of squares does
    noise = math.hypot(*(r - t).reshape(-1).tolist())
    signal = math.hypot(*r.reshape(-1).tolist())
    got = qm.sqnr_db(ref, test)
    if noise == 0:
        assert got == math.inf
    elif signal == 0:
        assert got == -math.inf
    else:
        want = 20 * (math.log10(signal) - math.log10(noise))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    if torch.linalg.vector_norm(r) > 0 and torch.linalg.vector_norm(t) > 0:
        cos = torch.nn.functional.cosine_similarity(r.reshape(-1), t.reshape(-1), dim=0, eps=0)
        np.testing.assert_allclose(qm.cosine_similarity(ref, test), cos.item(), rtol=0, atol=1e-12)


@SETTINGS
@given(pair=ref_test_pair(), data=st.data())
def test_error_in_lsb_matches_torch(pair: tuple[np.ndarray, np.ndarray], data) -> None:
    ref, test = pair
    axis = data.draw(st.one_of(st.none(), st.integers(-ref.ndim, ref.ndim - 1)))
    n = 1 if axis is None else ref.shape[axis]
    scale = np.array([10.0 ** data.draw(st.floats(-6, 3)) for _ in range(n)], dtype=np.float64)
    s = torch.from_numpy(scale)
    if axis is not None:
        view = [1] * ref.ndim
        view[axis] = n
        s = s.reshape(view)
    e = (t64(ref) - t64(test)).abs() / s
    arg = scale[0] if axis is None else scale
    got = qm.error_in_lsb(ref, test, arg, axis=axis)
    np.testing.assert_allclose(got.max, e.max().item(), rtol=RTOL)
    np.testing.assert_allclose(got.mean, e.mean().item(), rtol=RTOL)


@SETTINGS
@given(
    name=st.sampled_from(["qint8", "quint8", "quint4x2", "int4", "qint32"]),
    shape=shapes,
    float_zp=st.booleans(),
    data=st.data(),
)
def test_clipped_and_saturated_fraction_match_torch(name, shape, float_zp, data) -> None:
    d = qdtype(name)
    axis = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)))
    n = 1 if axis is None else shape[axis]
    scale = np.array([10.0 ** data.draw(st.floats(-4, 1)) for _ in range(n)])
    if float_zp:
        zp = np.array([data.draw(st.floats(d.qmin, d.qmax)) for _ in range(n)])
    else:
        zp = np.array([data.draw(st.integers(d.qmin, d.qmax)) for _ in range(n)], np.int64)
    view = [1] * len(shape)
    if axis is not None:
        view[axis] = n
    s, z = torch.from_numpy(scale).reshape(view), torch.from_numpy(zp).double().reshape(view)
    margin = data.draw(st.sampled_from([0.0, 0.5]))
    lo, hi = (d.qmin - z - margin) * s, (d.qmax - z + margin) * s
    # values around, on and beyond both clipping bounds, plus NaN / inf
    edges = torch.stack([lo, hi]).expand(2, *shape)
    pick = torch.from_numpy(data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 1))))
    offset = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 0.0, 1.0])))
    # 1e-2 steps: ten times the slack clipped_fraction gives half-step bounds
    x = torch.gather(edges, 0, pick.unsqueeze(0))[0] + torch.from_numpy(offset) * 1e-2 * s
    if data.draw(st.booleans()):
        x.reshape(-1)[0] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    inside = (x >= lo) & (x <= hi)
    want = 1.0 - inside.double().mean().item()
    sarg = scale[0] if axis is None else scale
    zarg = zp[0] if axis is None else zp
    got = qm.clipped_fraction(x.numpy(), sarg, zarg, name, axis=axis, margin_lsb=margin)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)

    q = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(d.qmin, d.qmax)))
    tq = torch.from_numpy(q)
    want_sat = ((tq == d.qmin) | (tq == d.qmax)).double().mean().item()
    assert qm.saturated_fraction(q, name) == pytest.approx(want_sat, rel=0, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(["qint8", "quint8"]))
def test_round_trip_metrics_are_consistent(seed: int, name: str) -> None:
    """Quantize inside the range: error <= 0.5 LSB, nothing clipped, ~6.02 dB per bit."""
    d = qdtype(name)
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-4, 1, 4)
    zp = rng.integers(d.qmin + 20, d.qmax - 20, 4)
    lo = ((d.qmin - zp) * scale)[:, None]
    hi = ((d.qmax - zp) * scale)[:, None]
    x = (lo + (hi - lo) * rng.uniform(0.001, 0.999, (4, 4096))).astype(np.float32)
    q = quantize_per_channel(x, scale, zp, 0, name)
    deq = dequantize_per_channel(q, scale, zp, 0)
    lsb = qm.error_in_lsb(x, deq, scale, axis=0)
    assert lsb.max <= 0.5 + 1e-3
    assert 0.2 < lsb.mean < 0.3  # uniform rounding error: mean 0.25 LSB
    assert qm.clipped_fraction(x, scale, zp, name, axis=0) == 0.0
    assert qm.saturated_fraction(q, name) < 0.01
    x0 = x - ((lo + hi) / 2).astype(np.float32)  # zero-mean full-scale uniform signal
    deq0 = deq - ((lo + hi) / 2).astype(np.float32)
    assert qm.sqnr_db(x0, deq0) == pytest.approx(6.02 * d.bits, abs=1.0)
    assert qm.cosine_similarity(x, deq) > 0.999


def test_conventions_for_degenerate_input() -> None:
    z = np.zeros(5)
    one = np.ones(5)
    assert qm.sqnr_db(one, one) == math.inf
    assert qm.sqnr_db(z, z) == math.inf
    assert qm.sqnr_db(z, one) == -math.inf
    assert qm.sqnr_db(np.array([]), np.array([])) == math.inf
    assert math.isnan(qm.sqnr_db(np.array([1.0, np.nan]), one[:2]))
    assert qm.max_abs_error(np.array([]), np.array([])) == 0.0
    assert qm.mean_abs_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert math.isnan(qm.max_abs_error(np.array([np.nan]), np.array([1.0])))
    assert qm.cosine_similarity(z, z) == 1.0
    assert qm.cosine_similarity(z, one) == 0.0
    assert qm.cosine_similarity(one, -one) == pytest.approx(-1.0, abs=1e-15)
    assert qm.error_in_lsb(np.array([]), np.array([]), 0.1) == (0.0, 0.0)
    assert qm.clipped_fraction(np.array([]), 0.1, 0, "qint8") == 0.0
    assert qm.saturated_fraction(np.array([], np.int8), "qint8") == 0.0
    big = np.array([1e200, -1e200])  # the norm must not overflow
    assert qm.sqnr_db(big, big * (1 + 1e-3)) == pytest.approx(60.0)
    assert isinstance(qm.sqnr_db(one, one * 1.1), float)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        qm.sqnr_db(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="scale must be a scalar"):
        qm.error_in_lsb(np.zeros((2, 3)), np.zeros((2, 3)), [1.0, 2.0])
    with pytest.raises(ValueError, match="scale has 2 values but axis 1 has 3"):
        qm.error_in_lsb(np.zeros((2, 3)), np.zeros((2, 3)), [1.0, 2.0], axis=1)
    with pytest.raises(ValueError, match="axis 2 out of range"):
        qm.clipped_fraction(np.zeros((2, 3)), [1.0, 2.0], [0, 0], "qint8", axis=2)
    with pytest.raises(ValueError, match="scale must be positive"):
        qm.error_in_lsb(np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(KeyError):
        qm.saturated_fraction(np.zeros(3), "int3")


def test_value_on_the_half_step_bound_is_not_clipped() -> None:
    """Symmetric per-channel scales put each channel's max at exactly 127.5 steps: torch
    rounds it to the edge with a 0.5 LSB error, which is rounding, not clipping."""
    import torch as _torch

    w = np.array([[-0.7, 0.25, 0.7], [0.1, -0.33, 0.33]], dtype=np.float32)
    scale = np.abs(w).max(axis=1).astype(np.float64) / 127.5
    zp = np.zeros(2, np.int64)
    assert qm.clipped_fraction(w, scale, zp, "qint8", axis=0) == 0.0
    q = _torch.quantize_per_channel(_torch.from_numpy(w), _torch.from_numpy(scale),
                                    _torch.from_numpy(zp), 0, _torch.qint8)
    lsb = qm.error_in_lsb(w, q.dequantize().numpy(), scale, axis=0)
    assert lsb.max <= 0.5 + 1e-6
    beyond = w * np.float32(1.001)  # the maxima now lie 0.13 steps past the half step
    assert qm.clipped_fraction(beyond, scale, zp, "qint8", axis=0) == pytest.approx(2 / 6)
    # float32-stored scales put the bound ~1e-5 steps off: still rounding, not clipping
    assert qm.clipped_fraction(w, scale.astype(np.float32), zp, "qint8", axis=0) == 0.0


@settings(max_examples=80, deadline=None)
@given(data=st.data(), name=st.sampled_from(["qint8", "quint8", "quint4x2"]),
       per_channel=st.booleans(), chunk=st.sampled_from([1, 7, 64, qm.CHUNK_ELEMENTS]))
def test_pair_stats_equals_the_separate_metrics(data, name, per_channel, chunk) -> None:
    """The one-pass streaming stats agree with the reference functions (float64 sums in
    another order: 1e-12 relative), with blocks small enough to split every shape."""
    saved = qm.CHUNK_ELEMENTS
    qm.CHUNK_ELEMENTS = chunk
    try:
        _check_pair_stats(data, name, per_channel)
    finally:
        qm.CHUNK_ELEMENTS = saved


def _check_pair_stats(data, name, per_channel) -> None:
    d = qdtype(name)
    shape = data.draw(shapes)
    axis = data.draw(st.integers(0, len(shape) - 1)) if per_channel else None
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ref = rng.normal(size=shape).astype(np.float32)
    test = (ref + rng.normal(scale=0.01, size=shape)).astype(np.float32)
    n = shape[axis] if axis is not None else 1
    scale = rng.uniform(0.001, 0.05, n)
    zp = rng.integers(d.qmin, d.qmax + 1, n)
    sarg, zarg = (scale, zp) if axis is not None else (scale[0], zp[0])
    got = qm.pair_stats(ref, test, sarg, zarg, name, axis)
    close = {"rtol": 1e-12, "atol": 0}
    np.testing.assert_allclose(got.sqnr_db, qm.sqnr_db(ref, test), rtol=1e-12, atol=1e-12)
    assert got.max_abs_error == qm.max_abs_error(ref, test)
    np.testing.assert_allclose(got.mean_abs_error, qm.mean_abs_error(ref, test), **close)
    np.testing.assert_allclose(got.cosine_similarity, qm.cosine_similarity(ref, test),
                               rtol=0, atol=1e-12)
    lsb = qm.error_in_lsb(ref, test, sarg, axis)
    assert got.max_error_lsb == lsb.max
    np.testing.assert_allclose(got.mean_error_lsb, lsb.mean, **close)
    assert got.clipped_fraction == qm.clipped_fraction(ref, sarg, zarg, name, axis)
    plain = qm.pair_stats(ref, test)
    assert plain.max_error_lsb is None and plain.clipped_fraction is None
    # blocks run along the channel axis when one is given, so the sums differ in order
    np.testing.assert_allclose(plain.sqnr_db, got.sqnr_db, rtol=1e-12, atol=1e-12)


def test_pair_stats_degenerate_inputs_follow_the_conventions() -> None:
    z = np.zeros(4)
    assert qm.pair_stats(z, z).sqnr_db == math.inf
    assert qm.pair_stats(z, z).cosine_similarity == 1.0
    assert qm.pair_stats(z, np.ones(4)).sqnr_db == -math.inf
    assert math.isnan(qm.pair_stats(np.array([1.0, math.nan]), np.ones(2)).sqnr_db)
    huge = np.array([1e200, -1e200])
    assert qm.pair_stats(huge, huge * 0.5).sqnr_db == pytest.approx(qm.sqnr_db(huge, huge * 0.5))
    empty = qm.pair_stats(np.zeros((0, 3)), np.zeros((0, 3)), 0.1, 0, "qint8")
    assert (empty.sqnr_db, empty.max_abs_error, empty.clipped_fraction) == (math.inf, 0.0, 0.0)

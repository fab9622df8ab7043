"""Weight health numbers against an independent torch computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qinspect.analyse.health import scale_problems, weight_health
from qinspect.loaders.tensors import int_values, tensor_quant
from qinspect.model import Weight

QMIN = {torch.qint8: -128, torch.quint8: 0}
QMAX = {torch.qint8: 127, torch.quint8: 255}


def _weight(q: torch.Tensor) -> Weight:
    return Weight("w", tuple(q.shape), str(q.dtype).removeprefix("torch."), int_values(q),
                  tensor_quant(q))


def _torch_reference(q: torch.Tensor) -> tuple[float, float, float]:
    ints = q.int_repr().to(torch.int64)
    if q.qscheme() == torch.per_tensor_affine:
        zps = torch.tensor([q.q_zero_point()])
        chans = ints.reshape(1, -1)
    else:
        zps = q.q_per_channel_zero_points()
        chans = ints.movedim(q.q_per_channel_axis(), 0).reshape(ints.shape[
            q.q_per_channel_axis()], -1)
    qmin, qmax = QMIN[q.dtype], QMAX[q.dtype]
    dist = (chans - zps[:, None]).abs().max(dim=1).values.double()
    limit = torch.maximum(qmax - zps, zps - qmin).double()
    used = dist / limit
    saturated = ((ints == qmin) | (ints == qmax)).double().mean().item()
    return used.max().item(), used.min().item(), saturated


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 9), axis=st.integers(0, 1),
    dtype=st.sampled_from([torch.qint8, torch.quint8]), per_channel=st.booleans(),
    spread=st.floats(0.01, 5.0), seed=st.integers(0, 2**16),
)
def test_health_matches_torch(rows, cols, axis, dtype, per_channel, spread, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * spread
    if per_channel:
        n = x.shape[axis]
        scales = torch.rand(n, generator=g, dtype=torch.float64) * 0.05 + 0.001
        zps = torch.randint(QMIN[dtype] // 2 + 64 if dtype == torch.quint8 else -20,
                            QMAX[dtype] // 2 + 1 if dtype == torch.quint8 else 21, (n,),
                            generator=g)
        q = torch.quantize_per_channel(x, scales, zps, axis, dtype)
    else:
        zp = 0 if dtype == torch.qint8 else 128
        q = torch.quantize_per_tensor(x, 0.02, zp, dtype)
    health = weight_health(_weight(q))
    used, worst, saturated = _torch_reference(q)
    assert health.range_used == pytest.approx(used, rel=0, abs=1e-12)
    assert health.min_channel_range_used == pytest.approx(worst, rel=0, abs=1e-12)
    assert health.saturated_fraction == pytest.approx(saturated, rel=0, abs=1e-12)


def test_flags_point_at_real_problems():
    x = torch.linspace(-1, 1, 64).reshape(4, 16)
    wasteful = torch.quantize_per_channel(x, torch.full((4,), 0.1, dtype=torch.float64),
                                          torch.zeros(4, dtype=torch.long), 0, torch.qint8)
    h = weight_health(_weight(wasteful))
    assert h.range_used == pytest.approx(10 / 128)
    assert any("int range" in f for f in h.flags)
    clipping = torch.quantize_per_tensor(x, 0.001, 0, torch.qint8)
    h = weight_health(_weight(clipping))
    assert h.saturated_fraction > 0.5
    assert any("qmin/qmax" in f for f in h.flags)
    # min/max calibration: each channel's extremes sit on the edges; that is not clipping
    sym = torch.linspace(-1, 1, 16) * torch.arange(1.0, 5.0)[:, None]
    scales = (sym.abs().amax(dim=1) / 127.5).double()
    calibrated = torch.quantize_per_channel(sym, scales, torch.zeros(4, dtype=torch.long), 0,
                                            torch.qint8)
    h = weight_health(_weight(calibrated))
    ints = calibrated.int_repr()
    at_edges = int(((ints == -128) | (ints == 127)).sum())
    assert 4 <= at_edges <= 8  # every channel's max lands on 127; some minima on -128
    assert h.saturated_fraction == at_edges / 64
    assert h.excess_saturated_fraction == 0.0
    assert not any("qmin/qmax" in f for f in h.flags)


def test_scale_problems_are_counted():
    scales = np.array([0.1, 0.0, np.nan, np.inf, -0.2, 1e-45, 1e-3])
    p = scale_problems(scales)
    assert (p.zero, p.nan, p.inf, p.negative, p.denormal) == (1, 1, 1, 1, 1)
    assert p.total == 5


def test_int_values_are_views_of_the_storage():
    q = torch.quantize_per_tensor(torch.randn(8, 8), 0.1, 0, torch.qint8)
    values = int_values(q)
    np.testing.assert_array_equal(values, q.int_repr().numpy())
    assert not values.flags["OWNDATA"]

"""verify's torch float64 convolution gives the numpy reference's exact integer sums."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from qinspect.analyse.verify.kernels import conv_sum
from qinspect.quant import reference as R


@pytest.mark.parametrize(("shape", "groups", "stride", "padding", "dilation"), [
    ((2, 64, 9, 9), 1, (2, 2), (1, 1), (1, 1)),
    ((1, 8, 7, 6), 4, (1, 2), (2, 0), (2, 1)),
    ((1, 6, 11), 3, (2,), (1,), (1,)),
    ((1, 4, 5, 5, 5), 1, (1, 1, 1), (1, 1, 1), (1, 1, 1)),
])
def test_conv_sum_is_exact_and_matches_numpy(shape, groups, stride, padding, dilation):
    rng = np.random.default_rng(0)
    nd = len(shape) - 2
    x = rng.choice([-255.0, 255.0, -254.0, 3.0], size=shape)  # extreme 8-bit products
    w = rng.choice([-128.0, 127.0, -1.0], size=(12, shape[1] // groups) + (3,) * nd)
    want = R._conv_sum(x, w, stride, padding, dilation, groups, True)
    got = conv_sum(x, w, stride, padding, dilation, groups, True)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    floats = conv_sum(x * 0.01, w, stride, padding, dilation, groups, False)
    np.testing.assert_allclose(floats, R._conv_sum(x * 0.01, w, stride, padding, dilation,
                                                   groups, False), rtol=1e-12, atol=1e-9)

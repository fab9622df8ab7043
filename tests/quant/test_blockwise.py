"""qinspect.quant.affine.dequantize_blockwise against torchao, bit for bit (rtol = atol = 0).

Hypothesis draws 2-d and 3-d shapes, block sizes that tile them (per tensor, per row, per
group, 2-d blocks), int8 / int4-in-int8 values, float32 and float64 scales (tiny to huge,
so products overflow to inf) and zero points; torchao's ``dequantize_affine`` (and its
no-zero-point and tinygemm variants) must give the same bits. The torchao tensor
subclasses (``Int8Tensor``, ``IntxUnpackedToInt8Tensor``) are checked through their own
``dequantize()``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qinspect.quant.affine import block_grid, dequantize_blockwise, expand_blocks

warnings.filterwarnings("ignore")
qp = pytest.importorskip("torchao.quantization.quant_primitives")

EXAMPLES = int(os.environ.get("QINSPECT_QUANT_EXAMPLES", "250"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
BITS = {"int8": (-128, 127), "int4": (-8, 7), "uint4": (0, 15)}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.sampled_from([1, 2, 4, 6, 8, 12, 32, 64])) for _ in range(ndim))
    block = tuple(draw(st.sampled_from(_divisors(n))) for n in shape)
    grid = block_grid(shape, block)
    kind = draw(st.sampled_from(sorted(BITS)))
    lo, hi = BITS[kind]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(lo, hi + 1, size=shape).astype(np.int8 if lo < 0 else np.uint8)
    exp = draw(st.sampled_from([-40, -12, -3, 0, 5, 30, 120]))
    sdtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = (rng.uniform(0.5, 2.0, size=grid) * 2.0 ** exp).astype(sdtype)
    zp = None
    if draw(st.booleans()):
        zp = rng.integers(lo, hi + 1, size=grid).astype(np.int8 if lo < 0 else np.uint8)
    return q, scale, zp, block, kind


@SETTINGS
@given(cases())
def test_int_domain_matches_dequantize_affine(case):
    q, scale, zp, block, kind = case
    lo, hi = BITS[kind]
    expected = qp.dequantize_affine(
        torch.from_numpy(q), block, torch.from_numpy(scale),
        None if zp is None else torch.from_numpy(zp),
        torch.int8 if q.dtype == np.int8 else torch.uint8, lo, hi,
        output_dtype=torch.float32).numpy()
    got = dequantize_blockwise(q, scale, zp, block, "int")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@SETTINGS
@given(cases())
def test_no_zero_point_domain_matches(case):
    q, scale, _zp, block, kind = case
    lo, hi = BITS[kind]
    expected = qp._dequantize_affine_no_zero_point(
        torch.from_numpy(q), block, torch.from_numpy(scale), None,
        torch.int8 if q.dtype == np.int8 else torch.uint8, lo, hi,
        output_dtype=torch.float32).numpy()
    got = dequantize_blockwise(q, scale, None, block, "none")
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@SETTINGS
@given(cases(), st.integers(0, 2**32 - 1))
def test_float_zero_point_domain_matches_tinygemm(case, seed):
    q, scale, _zp, block, _kind = case
    scale = scale.astype(np.float32)
    uq = (q.astype(np.int16) & 0xF).astype(np.int32)  # tinygemm: uint4 in int32
    rng = np.random.default_rng(seed)
    zp = (rng.standard_normal(scale.shape) * scale * 8).astype(np.float32)
    expected = qp._dequantize_affine_tinygemm(
        torch.from_numpy(uq), block, torch.from_numpy(scale), torch.from_numpy(zp),
        torch.int32, 0, 15, output_dtype=torch.float32).numpy()
    got = dequantize_blockwise(uq, scale, zp, block, "float", 0, 15)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_expand_blocks_follows_the_grid():
    scale = np.arange(6).reshape(2, 3)
    full = expand_blocks(scale, (4, 6), (2, 2))
    assert full.shape == (4, 6)
    assert full[0].tolist() == [0, 0, 1, 1, 2, 2] and full[3].tolist() == [3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError):
        block_grid((4, 6), (3, 4))


@pytest.mark.parametrize("config", ["int8wo", "int8dyn", "int4wo"])
def test_torchao_tensor_subclasses_dequantize_identically(config):
    import make_format_samples as mfs

    made = mfs.torchao_flow(config)
    for name in ("fc1", "fc2"):
        w = made.quantized.get_submodule(name).weight
        zp = None if w.zero_point is None else w.zero_point.numpy()
        got = dequantize_blockwise(w.qdata.numpy(), w.scale.numpy(), zp, w.block_size)
        expected = w.dequantize().numpy()
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))

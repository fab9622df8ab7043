"""qinspect.quant.reference against torch's quantized CPU kernels, bit for bit.

Every test runs the real torch op on random data and compares the integers (or the
float32 outputs of dynamic layers) exactly; hypothesis varies shapes, qparams and
conv geometry.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qinspect.analyse.verify import kernels as K
from qinspect.quant import reference as R

warnings.filterwarnings("ignore")
ENGINES = [e for e in ("fbgemm", "x86", "qnnpack")
           if e in torch.backends.quantized.supported_engines]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
scales = st.floats(0.002, 0.5)
zps = st.integers(0, 255)


def _weight(rng, shape, per_channel, symmetric):
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 0.3)
    out = shape[0]
    if per_channel:
        s = (w.abs().flatten(1).amax(1) / 127).double().clamp_min(1e-4)
        zp = torch.zeros(out, dtype=torch.long) if symmetric else torch.from_numpy(
            rng.integers(-4, 5, out))
        wq = torch.quantize_per_channel(w, s, zp, 0, torch.qint8)
        return wq, wq.q_per_channel_scales().numpy(), wq.q_per_channel_zero_points().numpy()
    zp = 0 if symmetric else int(rng.integers(-4, 5))
    wq = torch.quantize_per_tensor(w, max(float(w.abs().max()) / 127, 1e-4), zp, torch.qint8)
    return wq, np.array([wq.q_scale()]), np.array([wq.q_zero_point()])


def _pairs(kernel: str) -> bool:
    """fbgemm on a CPU without VNNI, and oneDNN capped below VNNI on a CPU with it, add
    byte-product pairs in int16 (saturating)."""
    return K.int16_gemm(kernel)


def _act(rng, shape, scale, zp):
    ints = torch.from_numpy(rng.integers(0, 256, shape).astype(np.uint8))
    return torch._make_per_tensor_quantized_tensor(ints, scale, zp)


@SETTINGS
@given(engine=st.sampled_from(ENGINES), per_channel=st.booleans(), symmetric=st.booleans(),
       relu=st.booleans(), bias=st.booleans(), m=st.integers(1, 9), k=st.integers(1, 80),
       n=st.integers(1, 40), sx=scales, zx=zps, so=scales, zo=zps, seed=st.integers(0, 99))
def test_linear_matches_torch(engine, per_channel, symmetric, relu, bias, m, k, n, sx, zx,
                              so, zo, seed):
    rng = np.random.default_rng(seed)
    wq, sw, zw = _weight(rng, (n, k), per_channel, symmetric)
    b = torch.from_numpy(rng.standard_normal(n).astype(np.float32)) if bias else None
    xq = _act(rng, (m, k), sx, zx)
    with K.engine_context(engine):
        packed = torch.ops.quantized.linear_prepack(wq, b)
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        want = op(xq, packed, so, zo).int_repr().numpy()
    got = R.quantized_linear(xq.int_repr().numpy(), sx, zx, wq.int_repr().numpy(), sw, zw,
                             None if b is None else b.numpy(), so, zo,
                             kernel=K.linear_kernel(engine), relu=relu,
                             int16_gemm=_pairs(K.linear_kernel(engine)))
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(engine=st.sampled_from(ENGINES), dim=st.integers(1, 3), per_channel=st.booleans(),
       symmetric=st.booleans(), relu=st.booleans(), bias=st.booleans(),
       k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), group_cfg=st.sampled_from([(1, 3, 4), (2, 4, 6), (4, 4, 4),
                                                              (8, 8, 8), (8, 8, 16)]),
       sx=scales, zx=zps, so=scales, zo=zps, seed=st.integers(0, 99))
def test_conv_matches_torch(engine, dim, per_channel, symmetric, relu, bias, k, stride,
                            padding, dilation, group_cfg, sx, zx, so, zo, seed):
    groups, cin, cout = group_cfg
    rng = np.random.default_rng(seed)
    wq, sw, zw = _weight(rng, (cout, cin // groups) + (k,) * dim, per_channel, symmetric)
    b = torch.from_numpy(rng.standard_normal(cout).astype(np.float32)) if bias else None
    size = {1: 11, 2: 7, 3: 5}[dim]
    xq = _act(rng, (2, cin) + (size,) * dim, sx, zx)
    geo = K.ConvGeometry((stride,) * dim, (padding,) * dim, (dilation,) * dim, groups)
    ops = torch.ops.quantized
    prepack = {1: ops.conv1d_prepack, 2: ops.conv2d_prepack, 3: ops.conv3d_prepack}[dim]
    run = {1: (ops.conv1d, ops.conv1d_relu), 2: (ops.conv2d, ops.conv2d_relu),
           3: (ops.conv3d, ops.conv3d_relu)}[dim][int(relu)]
    with K.engine_context(engine):
        packed = prepack(wq, b, list(geo.stride), list(geo.padding), list(geo.dilation), groups)
        want = run(xq, packed, so, zo).int_repr().numpy()
    kernel = K.conv_kernel(engine, zw, groups)
    depthwise = kernel == "fbgemm" and K.fbgemm_depthwise(cin, tuple(wq.shape), geo)
    got = R.quantized_conv(xq.int_repr().numpy(), sx, zx, wq.int_repr().numpy(), sw, zw,
                           None if b is None else b.numpy(), so, zo, kernel=kernel, relu=relu,
                           stride=stride, padding=padding, dilation=dilation, groups=groups,
                           int16_pairs=depthwise, int16_gemm=_pairs(kernel) and not depthwise)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dim", [2, 3])
def test_fbgemm_depthwise_adds_byte_pairs_in_int16(dim):
    """Full-range activations and large weights overflow int16 in fbgemm's depthwise
    kernel; the plain reference misses that, the int16-pair reference reproduces it."""
    rng = np.random.default_rng(0)
    c = 16
    wq, sw, zw = _weight(rng, (c, 1) + (3,) * dim, True, True)
    xq = _act(rng, (2, c) + (9,) * dim, 0.05, 3)
    geo = K.ConvGeometry((1,) * dim, (1,) * dim, (1,) * dim, c)
    assert K.fbgemm_depthwise(c, tuple(wq.shape), geo)
    ops = torch.ops.quantized
    prepack, run = {2: (ops.conv2d_prepack, ops.conv2d), 3: (ops.conv3d_prepack, ops.conv3d)}[dim]
    with K.engine_context("fbgemm"):
        want = run(xq, prepack(wq, None, [1] * dim, [1] * dim, [1] * dim, c), 0.1, 60)
    want = want.int_repr().numpy()
    args = (xq.int_repr().numpy(), 0.05, 3, wq.int_repr().numpy(), sw, zw, None, 0.1, 60)
    plain = R.quantized_conv(*args, kernel="fbgemm", padding=1, groups=c)
    pairs = R.quantized_conv(*args, kernel="fbgemm", padding=1, groups=c, int16_pairs=True)
    np.testing.assert_array_equal(pairs, want)
    assert np.count_nonzero(plain != want) > 0


@pytest.mark.skipif(not K.fbgemm_int16_gemm(), reason="this CPU has VNNI: no int16 pairs")
@pytest.mark.parametrize("op", ["linear", "conv"])
def test_fbgemm_without_vnni_adds_byte_pairs_in_int16(op):
    """Without VNNI fbgemm's GEMM saturates pairs of byte products to int16: full-range
    activations and large weights hit it; the plain reference misses that, the int16-pair
    reference (pairs along K, conv taps outermost) reproduces it."""
    rng = np.random.default_rng(0)
    x = _act(rng, (3, 8, 7, 7) if op == "conv" else (64, 72), 0.05, 3)
    shape = (6, 8, 3, 3) if op == "conv" else (6, 72)
    wq, sw, zw = _weight(rng, shape, True, True)
    with K.engine_context("fbgemm"):
        if op == "conv":
            packed = torch.ops.quantized.conv2d_prepack(wq, None, [1, 1], [1, 1], [1, 1], 1)
            want = torch.ops.quantized.conv2d(x, packed, 0.2, 60)
        else:
            want = torch.ops.quantized.linear(x, torch.ops.quantized.linear_prepack(wq, None),
                                              0.2, 60)
    want = want.int_repr().numpy()
    args = (x.int_repr().numpy(), 0.05, 3, wq.int_repr().numpy(), sw, zw, None, 0.2, 60)
    run = (lambda **kw: R.quantized_conv(*args, kernel="fbgemm", padding=1, **kw)) \
        if op == "conv" else (lambda **kw: R.quantized_linear(*args, kernel="fbgemm", **kw))
    np.testing.assert_array_equal(run(int16_gemm=True), want)
    assert np.count_nonzero(run() != want) > 0


@pytest.mark.skipif(not K.onednn_int16_pairs(),
                    reason="oneDNN here is exact (VNNI, or no VNNI CPU: x86 convs use fbgemm)")
@pytest.mark.parametrize("cin", [1, 3, 8])
def test_capped_onednn_adds_channel_pairs_of_one_tap_in_int16(cin):
    """oneDNN capped below VNNI on a VNNI CPU (the suite's ONEDNN_MAX_CPU_ISA=SSE41):
    neighbouring channels of one kernel tap saturate to int16, an odd last channel stays
    alone, and one combined scale rescales; full-range activations and large weights hit
    the saturation, so the exact reference misses what the int16 one reproduces."""
    rng = np.random.default_rng(cin)
    x = _act(rng, (3, cin, 9, 9), 0.05, 3)
    wq, sw, zw = _weight(rng, (6, cin, 3, 3), True, True)
    assert K.conv_kernel("x86", zw, 1) == "onednn_int16"
    b = torch.from_numpy(rng.standard_normal(6).astype(np.float32))
    with K.engine_context("x86"):
        packed = torch.ops.quantized.conv2d_prepack(wq, b, [1, 1], [1, 1], [1, 1], 1)
        want = torch.ops.quantized.conv2d(x, packed, 0.2, 60).int_repr().numpy()
    args = (x.int_repr().numpy(), 0.05, 3, wq.int_repr().numpy(), sw, zw, b.numpy(), 0.2, 60)
    got = R.quantized_conv(*args, kernel="onednn_int16", padding=1, int16_gemm=True)
    np.testing.assert_array_equal(got, want)
    if cin > 1:  # one channel: no pair to saturate
        exact = R.quantized_conv(*args, kernel="onednn", padding=1)
        assert np.count_nonzero(exact != want) > 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("out_scale", [1e-9, 1e-5, 1e3])
def test_requantization_overflow_behaves_like_torch(engine, out_scale):
    """A scale far too small overflows int32 in the float -> int conversion: fbgemm and
    QNNPACK then give qmin, oneDNN saturates in float. Both are reproduced."""
    rng = np.random.default_rng(1)
    cw, csw, czw = _weight(rng, (8, 4, 3, 3), True, True)
    lw, lsw, lzw = _weight(rng, (8, 36), False, True)
    b = torch.from_numpy(rng.standard_normal(8).astype(np.float32))
    cx, lx = _act(rng, (1, 4, 6, 6), 0.03, 61), _act(rng, (5, 36), 0.03, 61)
    with K.engine_context(engine):
        packed = torch.ops.quantized.conv2d_prepack(cw, b, [1, 1], [0, 0], [1, 1], 1)
        conv = torch.ops.quantized.conv2d(cx, packed, out_scale, 70).int_repr().numpy()
        lin = torch.ops.quantized.linear(lx, torch.ops.quantized.linear_prepack(lw, b),
                                         out_scale, 70).int_repr().numpy()
    ck, lk = K.conv_kernel(engine, czw, 1), K.linear_kernel(engine)
    got_conv = R.quantized_conv(cx.int_repr().numpy(), 0.03, 61, cw.int_repr().numpy(), csw,
                                czw, b.numpy(), out_scale, 70, kernel=ck,
                                int16_gemm=_pairs(ck))
    got_lin = R.quantized_linear(lx.int_repr().numpy(), 0.03, 61, lw.int_repr().numpy(), lsw,
                                 lzw, b.numpy(), out_scale, 70, kernel=lk, int16_gemm=_pairs(lk))
    np.testing.assert_array_equal(got_conv, conv)
    np.testing.assert_array_equal(got_lin, lin)
    if out_scale == 1e-9:  # the quirk is really exercised: both ends are hit
        assert {0, 255} <= set(np.unique(conv)) and {0, 255} <= set(np.unique(lin))


@SETTINGS
@given(engine=st.sampled_from(ENGINES), relu=st.booleans(), n=st.integers(1, 300),
       sa=scales, za=zps, sb=scales, zb=zps, so=st.floats(0.01, 0.5), zo=zps,
       seed=st.integers(0, 99))
def test_add_matches_torch(engine, relu, n, sa, za, sb, zb, so, zo, seed):
    rng = np.random.default_rng(seed)
    a, b = _act(rng, (n,), sa, za), _act(rng, (n,), sb, zb)
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    with K.engine_context(engine):
        want = op(a, b, so, zo).int_repr().numpy()
    got = R.quantized_add(a.int_repr().numpy(), sa, za, b.int_repr().numpy(), sb, zb, so, zo,
                          kernel=K.linear_kernel(engine), relu=relu)
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(engine=st.sampled_from(ENGINES), per_channel=st.booleans(), relu=st.booleans(),
       bias=st.booleans(), reduce_range=st.booleans(), m=st.integers(1, 9),
       k=st.integers(1, 64), n=st.integers(1, 32),
       spread=st.sampled_from([0.0, 1e-7, 1e-3, 1.0, 50.0]), shift=st.floats(-3, 3),
       seed=st.integers(0, 99))
def test_dynamic_linear_matches_torch(engine, per_channel, relu, bias, reduce_range, m, k, n,
                                      spread, shift, seed):
    rng = np.random.default_rng(seed)
    wq, sw, zw = _weight(rng, (n, k), per_channel, True)
    b = torch.from_numpy(rng.standard_normal(n).astype(np.float32)) if bias else None
    x = (rng.standard_normal((m, k)) * spread + shift * spread).astype(np.float32)
    ops = torch.ops.quantized
    with K.engine_context(engine), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = ops.linear_relu_dynamic if relu else ops.linear_dynamic
        want = op(torch.from_numpy(x), ops.linear_prepack(wq, b), reduce_range).numpy()
    got, _, _, _ = R.dynamic_linear(x, wq.int_repr().numpy(), sw, zw,
                                    None if b is None else b.numpy(),
                                    kernel=K.linear_kernel(engine), reduce_range=reduce_range,
                                    relu=relu, int16_gemm=_pairs(K.linear_kernel(engine)))
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(lo=st.floats(-1e4, 1e4, width=32), width=st.floats(0, 1e4, width=32),
       reduce_range=st.booleans())
def test_dynamic_qparams_match_torch(lo, width, reduce_range):
    x = torch.tensor([lo, np.float32(lo + width)], dtype=torch.float32)
    want = torch._choose_qparams_per_tensor(x, reduce_range)
    got = R.choose_dynamic_qparams(float(x.min()), float(x.max()), reduce_range)
    assert got == (pytest.approx(want[0], rel=0, abs=0), want[1])


def test_accumulator_is_exact_for_long_sums():
    """The float64 BLAS sum equals an int64 sum: no rounding even for long rows."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 5000))
    w = rng.integers(-128, 128, (4, 5000))
    acc = R.accumulate_linear(x, 7, w, np.array([3]))
    exact = (x.astype(np.int64) - 7) @ (w.astype(np.int64) - 3).T
    np.testing.assert_array_equal(acc, exact.astype(np.int32))


def test_conv_float64_matches_torch_double():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 9, 9))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    got = R.conv_float64(x, w, b, stride=2, padding=1, dilation=1, groups=2)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), stride=2, padding=1, groups=2)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


def _tricky_scales(n: int) -> list[float]:
    """Output scales whose float32 reciprocal differs from the float64 one rounded."""
    grid = np.linspace(0.05, 0.3, 40000)
    bad = [s for s in grid if np.float32(1) / np.float32(s) != np.float32(1 / s)]
    return [float(s) for s in bad[:n]]


@pytest.mark.parametrize("engine,op", [(e, op) for e in ENGINES for op in ("linear", "conv")])
def test_rounding_order_on_a_million_outputs(engine, op):
    """Subtle rounding choices (float32 vs float64 reciprocal, order of the scale products)
    change about one output in 10**5; a million outputs pin them down."""
    rng = np.random.default_rng(7)
    k, n = 48, 64
    wq, sw, zw = _weight(rng, (n, k), True, True)
    b = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 3)
    mismatches = 0
    for so in _tricky_scales(4):
        xq = _act(rng, (4096, k), 0.011, 61)
        with K.engine_context(engine):
            if op == "linear":
                packed = torch.ops.quantized.linear_prepack(wq, b)
                want = torch.ops.quantized.linear(xq, packed, so, 70).int_repr().numpy()
            else:
                w4 = torch.quantize_per_channel(  # the same ints as a 1x1 conv weight
                    wq.dequantize().reshape(n, k, 1, 1), wq.q_per_channel_scales(),
                    wq.q_per_channel_zero_points(), 0, torch.qint8)
                packed = torch.ops.quantized.conv2d_prepack(w4, b, [1, 1], [0, 0], [1, 1], 1)
                x4 = _act(rng, (16, k, 16, 16), 0.011, 61)
                want = torch.ops.quantized.conv2d(x4, packed, so, 70).int_repr().numpy()
        if op == "linear":
            lk = K.linear_kernel(engine)
            got = R.quantized_linear(xq.int_repr().numpy(), 0.011, 61, wq.int_repr().numpy(),
                                     sw, zw, b.numpy(), so, 70, kernel=lk, int16_gemm=_pairs(lk))
        else:
            ck = K.conv_kernel(engine, zw, 1)
            got = R.quantized_conv(x4.int_repr().numpy(), 0.011, 61, w4.int_repr().numpy(), sw,
                                   zw, b.numpy(), so, 70, kernel=ck, int16_gemm=_pairs(ck))
        mismatches += int(np.count_nonzero(got != want))
    assert mismatches == 0

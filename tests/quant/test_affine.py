"""qinspect.quant.affine / dtypes against torch, bit for bit (rtol = atol = 0).

Property tests draw shapes (1..4 dims), dtypes, axes, scales (1e-6..1e3, float32-exact
and power-of-two ones so that ``(k + 0.5) * scale`` is an exact tie), zero points over the
full valid range, and inputs that mix exact ties, in-range values, values far outside
the range and +-inf / NaN.  Every comparison is on the raw bits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qinspect.quant import affine as qa
from qinspect.quant.dtypes import QDTYPES, activation_range, qdtype

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")

# QINSPECT_QUANT_EXAMPLES=5000 for a long soak; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("QINSPECT_QUANT_EXAMPLES", "250"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TORCH_DTYPE = {n: getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")}
DECOMPOSED = {"int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32}


# --------------------------------------------------------------------------- helpers


def int_repr(qt: torch.Tensor) -> np.ndarray:
    """``int_repr()`` with quint4x2 / quint2x4 unpacked to one value per element."""
    raw = qt.int_repr().numpy()
    if qt.dtype not in (torch.quint4x2, torch.quint2x4):
        return raw
    bits = 4 if qt.dtype == torch.quint4x2 else 2
    per = 8 // bits
    i = np.arange(qt.numel())
    vals = (raw[i // per].astype(np.int64) >> ((i % per) * bits)) & ((1 << bits) - 1)
    return vals.astype(np.uint8).reshape(tuple(qt.shape))


def assert_bitexact(got: np.ndarray, ref: np.ndarray, x: np.ndarray | None = None) -> None:
    """Exact equality of dtype, shape and bits; the message shows the worst mismatch."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.dtype == ref.dtype, f"dtype {got.dtype} != torch {ref.dtype}"
    assert got.shape == ref.shape, f"shape {got.shape} != torch {ref.shape}"
    if ref.dtype.kind == "f":
        gbits, rbits = got.view(f"i{ref.itemsize}"), ref.view(f"i{ref.itemsize}")
        gnum = np.nan_to_num(got.astype(np.float64), nan=np.inf)
        rnum = np.nan_to_num(ref.astype(np.float64), nan=np.inf)
    else:
        gbits, rbits = got, ref
        gnum, rnum = got.astype(np.float64), ref.astype(np.float64)
    bad = (gbits != rbits).reshape(-1)
    if not bad.any():
        return
    with np.errstate(invalid="ignore"):
        dist = np.where(bad, np.abs(gnum - rnum).reshape(-1), -1.0)
    i = int(np.nanargmax(np.nan_to_num(dist, nan=np.inf)))
    where = np.unravel_index(i, ref.shape) if ref.ndim else ()
    xi = "" if x is None else f" x={np.asarray(x, np.float32).reshape(-1)[i]!r}"
    msg = (
        f"{int(bad.sum())}/{bad.size} elements differ; worst at {where}:{xi} "
        f"ours={got.reshape(-1)[i]!r} torch={ref.reshape(-1)[i]!r}"
    )
    np.testing.assert_array_equal(gbits, rbits, err_msg=msg)


def make_x(
    seed: int, shape: tuple[int, ...], scale: np.ndarray, zp: np.ndarray, qrange: tuple[int, int]
) -> np.ndarray:
    """float32 input mixing ties, in-range values, far-out values and specials.

    ``scale``/``zp`` broadcast to ``shape`` (per-tensor or per-channel).
    """
    rng = np.random.default_rng(seed)
    lo, hi = qrange
    s = np.broadcast_to(np.asarray(scale, np.float64), shape)
    z = np.broadcast_to(np.asarray(zp, np.float64), shape)
    span = min(hi - lo, 4000)
    k = rng.integers(-span, span + 1, shape).astype(np.float64)
    tie_x = (k + 0.5) * s  # x/s exactly k + 0.5 (exact for power-of-two scales)
    tie_xz = (k + 0.5 - np.mod(z, 1.0)) * s  # x/s + zp exactly at a tie (float zp)
    in_range = rng.uniform(np.maximum(lo - z - 2, -span), np.minimum(hi - z + 2, span), shape) * s
    far = rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(0, 12, shape) * s * span
    special = rng.choice(np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30]), shape)
    kind = rng.choice(5, size=shape, p=[0.3, 0.15, 0.3, 0.2, 0.05])
    x = np.choose(kind, [tie_x, tie_xz, in_range, far, special])
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32)


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def scales(draw: st.DrawFn) -> float:
    """Scale in [1e-6, 1e3]: arbitrary float64, float32-exact, or a power of two."""
    kind = draw(st.sampled_from(["f64", "f32", "pow2"]))
    if kind == "pow2":
        return 2.0 ** draw(st.integers(-19, 9))
    s = 10.0 ** draw(st.floats(-6, 3))
    return float(np.float32(s)) if kind == "f32" else s


def channel_params(draw: st.DrawFn, n: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 scales and int64 zero points (edges included)."""
    sc = np.array([draw(scales()) for _ in range(n)], dtype=np.float64)
    zp = np.array(
        [draw(st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi))) for _ in range(n)],
        dtype=np.int64,
    )
    return sc, zp


def channel_view(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


# --------------------------------------------------------------------------- dtypes


def test_quantized_dtype_ranges_match_torch() -> None:
    x = torch.tensor([-1e12, 1e12])  # not 1e30: the sub-byte kernel maps that to qmin
    for name, tdt in TORCH_DTYPE.items():
        q = int_repr(torch.quantize_per_tensor(x, 1.0, 0, tdt))
        d = qdtype(name)
        assert (int(q.min()), int(q.max())) == (d.qmin, d.qmax), name
        assert q.dtype == d.storage or d.is_packed
        assert d.bits == int(np.log2(d.qmax - d.qmin + 1))
        assert d.signed == (d.qmin < 0)
    for name in ("int8", "uint8", "int32"):
        info = torch.iinfo(getattr(torch, name))
        assert (QDTYPES[name].qmin, QDTYPES[name].qmax) == (info.min, info.max)
        assert QDTYPES[name].storage == np.dtype(name)
    assert (QDTYPES["int4"].qmin, QDTYPES["int4"].qmax) == (-8, 7)
    assert (QDTYPES["uint4"].qmin, QDTYPES["uint4"].qmax) == (0, 15)


def test_qdtype_lookup() -> None:
    assert qdtype("torch.qint8") is QDTYPES["qint8"]
    assert qdtype(QDTYPES["uint4"]) is QDTYPES["uint4"]
    with pytest.raises(KeyError, match="unknown quantization dtype 'qint4'.*known dtypes"):
        qdtype("qint4")
    with pytest.raises(AttributeError):
        QDTYPES["qint8"].qmin = 0  # type: ignore[misc]


@pytest.mark.parametrize("name", ["quint8", "qint8", "qint32"])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_activation_range_matches_observer(name: str, reduce_range: bool) -> None:
    from torch.ao.quantization.observer import MinMaxObserver

    obs = MinMaxObserver(dtype=getattr(torch, name), reduce_range=reduce_range)
    assert activation_range(name, reduce_range) == (obs.quant_min, obs.quant_max)
    plain = {"quint8": "uint8", "qint8": "int8", "qint32": "int32"}[name]
    obs = MinMaxObserver(dtype=getattr(torch, plain), reduce_range=reduce_range)
    assert activation_range(plain, reduce_range) == (obs.quant_min, obs.quant_max)


# --------------------------------------------------------------------------- per tensor


@SETTINGS
@given(
    name=st.sampled_from(list(TORCH_DTYPE)),
    shape=st.one_of(shapes, st.just(())),
    scale=scales(),
    seed=seeds,
    data=st.data(),
)
def test_per_tensor_matches_torch(name: str, shape, scale: float, seed: int, data) -> None:
    d = qdtype(name)
    zp = data.draw(st.one_of(st.sampled_from([d.qmin, d.qmax]), st.integers(d.qmin, d.qmax)))
    x = make_x(seed, shape, np.float64(scale), np.float64(zp), (d.qmin, d.qmax))
    qt = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, TORCH_DTYPE[name])
    q = int_repr(qt)
    assert_bitexact(qa.quantize_per_tensor(x, scale, zp, name), q, x)
    assert_bitexact(qa.dequantize_per_tensor(q, scale, zp), qt.dequantize().numpy())


def test_per_tensor_adds_zero_point_before_rounding_with_fma() -> None:
    # x/s = 2.5 exactly; zp = 1: rint(2.5 + 1) = 4, but rint(2.5) + 1 = 3.
    x = np.array([1.25, -1.25], np.float32)
    ref = int_repr(torch.quantize_per_tensor(torch.from_numpy(x), 0.5, 1, torch.qint8))
    np.testing.assert_array_equal(ref, [4, -2])
    assert_bitexact(qa.quantize_per_tensor(x, 0.5, 1, "qint8"), ref)
    # the fake-quant kernel rounds first, then adds the zero point: q = 3, -1, so the
    # QAT model sees 1.0 / -1.0 where the converted model dequantizes to 1.5 / -1.5
    fq = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), 0.5, 1, -128, 127).numpy()
    np.testing.assert_array_equal(fq, [1.0, -1.0])
    np.testing.assert_array_equal(qa.dequantize_per_tensor(ref, 0.5, 1), [1.5, -1.5])
    assert_bitexact(qa.fake_quantize_per_tensor(x, 0.5, 1, -128, 127), fq)


def test_per_tensor_8bit_is_a_single_rounding_fma() -> None:
    """Find inputs where fma(x, inv, zp) and f32(f32(x*inv) + zp) round differently."""
    scale, zp = 0.0123, 77
    base = ((np.arange(-77, 178) + 0.5) * scale).astype(np.float32)  # near x/s = k + 0.5
    up, down = np.float32(np.inf), np.float32(-np.inf)
    x = np.concatenate([base, np.nextafter(base, up), np.nextafter(base, down)])
    x = np.concatenate([x, np.nextafter(x, up), np.nextafter(x, down)])
    fused = qa.quantize_per_tensor(x, scale, zp, "quint8")
    split = qa.quantize_per_tensor(x, scale, zp, "quint8", fused=False)
    differ = fused != split
    assert differ.any(), "no FMA-sensitive input found"
    ref = int_repr(torch.quantize_per_tensor(torch.from_numpy(x[differ]), scale, zp, torch.quint8))
    assert_bitexact(fused[differ], ref, x[differ])


def _exact_f32(v: Fraction) -> np.float32:
    """Correctly rounded (ties-to-even) float32 of an exact rational."""
    f = np.float32(float(v))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - v), int(c.view(np.int32)) & 1))
    return np.float32(best)


def test_fma_emulation_is_correctly_rounded() -> None:
    """Double rounding (exact -> f64 -> f32) would be wrong; round-to-odd fixes it.

    2**36 + 1 = 4097 * 16773121, so a*b = 2**-24 + 2**-60 exactly and 1 + a*b lies
    just above the float32 midpoint 1 + 2**-24: correct result 1 + 2**-23, whereas
    rounding through float64 lands on the midpoint and ties to 1.0.
    """
    a, b = np.float32(4097 * 2.0**-30), np.float32(16773121 * 2.0**-30)
    assert float(np.float32(np.float64(a) * np.float64(b) + 1.0)) == 1.0
    assert qa._fma_f32(np.array([a]), b, 1.0)[0] == np.float32(1 + 2.0**-23)
    rng = np.random.default_rng(5)
    x = (rng.normal(0, 1, 3000) * 10.0 ** rng.uniform(-8, 8, 3000)).astype(np.float32)
    y = (10.0 ** rng.uniform(-4, 4, 3000)).astype(np.float32)
    c = rng.integers(-300, 300, 3000).astype(np.float64)
    got = qa._fma_f32(x, y, c)
    want = [
        _exact_f32(Fraction(float(p)) * Fraction(float(q)) + int(r))
        for p, q, r in zip(x, y, c, strict=True)
    ]
    assert_bitexact(got, np.array(want, np.float32))


SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9, 2.0**32 + 512, 2.0**63, 0.0, -0.0],
    np.float32,
)


@pytest.mark.parametrize("name", list(TORCH_DTYPE))
def test_per_tensor_specials_and_extreme_zero_points(name: str) -> None:
    d = qdtype(name)
    for zp in sorted({d.qmin, d.qmax, (d.qmin + d.qmax) // 2}):
        for scale in (1.0, 1e-6, 1e3):
            qt = torch.quantize_per_tensor(torch.from_numpy(SPECIALS), scale, zp, TORCH_DTYPE[name])
            q = int_repr(qt)
            assert_bitexact(qa.quantize_per_tensor(SPECIALS, scale, zp, name), q, SPECIALS)
            assert_bitexact(qa.dequantize_per_tensor(q, scale, zp), qt.dequantize().numpy())


def test_sub_byte_quirk_huge_positive_goes_to_qmin() -> None:
    x = np.array([1e30, np.inf, np.nan, 100.0], np.float32)
    ref = int_repr(torch.quantize_per_tensor(torch.from_numpy(x), 1.0, 3, torch.quint4x2))
    np.testing.assert_array_equal(ref, [0, 0, 0, 15])
    assert_bitexact(qa.quantize_per_tensor(x, 1.0, 3, "quint4x2"), ref)


# --------------------------------------------------------------------------- per channel


@SETTINGS
@given(
    name=st.sampled_from(["qint8", "quint8", "qint32"]),
    shape=shapes,
    seed=seeds,
    data=st.data(),
)
def test_per_channel_matches_torch(name: str, shape, seed: int, data) -> None:
    d = qdtype(name)
    axis = data.draw(st.integers(0, len(shape) - 1))
    sc, zp = channel_params(data.draw, shape[axis], d.qmin, d.qmax)
    ndim = len(shape)
    x = make_x(
        seed, shape, channel_view(sc, ndim, axis), channel_view(zp, ndim, axis), (d.qmin, d.qmax)
    )
    qt = torch.quantize_per_channel(
        torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(zp), axis, TORCH_DTYPE[name]
    )
    assert qt.q_per_channel_scales().dtype == torch.float64
    q = int_repr(qt)
    neg_axis = axis - ndim if data.draw(st.booleans()) else axis
    assert_bitexact(qa.quantize_per_channel(x, sc, zp, neg_axis, name), q, x)
    assert_bitexact(qa.dequantize_per_channel(q, sc, zp, axis), qt.dequantize().numpy())


def test_per_channel_dequantize_uses_float64_scale() -> None:
    """The per-channel kernel multiplies by the float64 scale; float32 would differ."""
    rng = np.random.default_rng(1)
    sc = 10.0 ** rng.uniform(-6, 3, 64)
    q = rng.integers(-128, 128, (64, 32)).astype(np.int8)
    zp = np.zeros(64, np.int64)
    qt = torch._make_per_channel_quantized_tensor(
        torch.from_numpy(q), torch.from_numpy(sc), torch.from_numpy(zp), 0
    )
    ref = qt.dequantize().numpy()
    assert_bitexact(qa.dequantize_per_channel(q, sc, zp, 0), ref)
    f32_path = q.astype(np.float32) * sc.astype(np.float32)[:, None]
    assert not np.array_equal(f32_path, ref)


# --------------------------------------------------------------------------- float qparams


@SETTINGS
@given(
    name=st.sampled_from(["quint8", "quint4x2", "quint2x4", "qint8"]),
    shape=shapes,
    seed=seeds,
    f64_scales=st.booleans(),
    data=st.data(),
)
def test_float_qparams_matches_torch(name: str, shape, seed: int, f64_scales: bool, data) -> None:
    d = qdtype(name)
    axis = data.draw(st.integers(0, len(shape) - 1))
    n, ndim = shape[axis], len(shape)
    sc = np.array([data.draw(scales()) for _ in range(n)], np.float64)
    sc = sc if f64_scales else sc.astype(np.float32)
    zp = np.array(
        [data.draw(st.floats(d.qmin, d.qmax, width=32)) for _ in range(n)], dtype=np.float32
    )
    x = make_x(
        seed, shape, channel_view(sc, ndim, axis), channel_view(zp, ndim, axis), (d.qmin, d.qmax)
    )
    qt = torch.quantize_per_channel(
        torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(zp), axis, TORCH_DTYPE[name]
    )
    assert qt.qscheme() == torch.per_channel_affine_float_qparams
    q = int_repr(qt)
    assert_bitexact(qa.quantize_per_channel_float_qparams(x, sc, zp, axis, name), q, x)
    assert_bitexact(
        qa.dequantize_per_channel_float_qparams(q, sc, zp, axis), qt.dequantize().numpy()
    )


def test_float_qparams_int_cast_wraps() -> None:
    # lrintf gives 2**32 + 5; torch's (int) cast keeps the low 32 bits -> 5.
    x = np.array([[2.0**32 + 512, 1e30, np.nan, 300.0]], np.float32)
    sc, zp = np.ones(1, np.float32), np.zeros(1, np.float32)
    qt = torch.quantize_per_channel(
        torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(zp), 0, torch.quint8
    )
    ref = int_repr(qt)
    np.testing.assert_array_equal(ref, [[255, 0, 0, 255]])  # 2**32+512 wraps to 512 -> 255
    assert_bitexact(qa.quantize_per_channel_float_qparams(x, sc, zp, 0, "quint8"), ref)
    x2 = np.array([[2.0**32 + 5.0]], np.float64).astype(np.float32)  # f32 -> 4294967296
    assert qa.quantize_per_channel_float_qparams(x2, sc, zp, 0, "quint8")[0, 0] == 0


# --------------------------------------------------------------------------- fake quant

QRANGES = [(-128, 127), (0, 255), (0, 127), (-64, 63), (-127, 127), (0, 15), (-8, 7), (0, 3)]


@SETTINGS
@given(qrange=st.sampled_from(QRANGES), shape=shapes, scale=scales(), seed=seeds, data=st.data())
def test_fake_quantize_per_tensor_matches_torch(qrange, shape, scale, seed, data) -> None:
    lo, hi = qrange
    zp = data.draw(st.integers(lo, hi))
    x = make_x(seed, shape, np.float64(scale), np.float64(zp), qrange)
    ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), scale, zp, lo, hi).numpy()
    assert_bitexact(qa.fake_quantize_per_tensor(x, scale, zp, lo, hi), ref, x)


@SETTINGS
@given(
    qrange=st.sampled_from(QRANGES),
    shape=shapes,
    float_zp=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_fake_quantize_per_channel_matches_torch(qrange, shape, float_zp, seed, data) -> None:
    lo, hi = qrange
    axis = data.draw(st.integers(0, len(shape) - 1))
    n, ndim = shape[axis], len(shape)
    sc = np.array([data.draw(scales()) for _ in range(n)]).astype(np.float32)
    if float_zp:
        zp = np.array([data.draw(st.floats(lo, hi, width=32)) for _ in range(n)], np.float32)
    else:
        zp = np.array([data.draw(st.integers(lo, hi)) for _ in range(n)], np.int32)
    x = make_x(seed, shape, channel_view(sc, ndim, axis), channel_view(zp, ndim, axis), qrange)
    ref = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(zp), axis, lo, hi
    ).numpy()
    fused = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    got = qa.fake_quantize_per_channel(x, sc, zp, axis, lo, hi, fused=fused)
    assert_bitexact(got, ref, x)


_DEFAULT_CAPABILITY_SCRIPT = r"""
import sys, warnings
import numpy as np, torch
warnings.filterwarnings("ignore")
from qinspect.quant.affine import fake_quantize_per_channel
assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
rng = np.random.default_rng(7)
sc = (10.0 ** rng.uniform(-4, 1, 256)).astype(np.float32)
zp = rng.uniform(0, 255, 256).astype(np.float32)
x = ((rng.integers(-300, 300, (256, 64)) + 0.5 - (zp % 1)[:, None]) * sc[:, None])
x = x.astype(np.float32)
ref = torch.fake_quantize_per_channel_affine(
    torch.from_numpy(x), torch.from_numpy(sc), torch.from_numpy(zp), 0, 0, 255).numpy()
ok = np.array_equal(fake_quantize_per_channel(x, sc, zp, 0, 0, 255, fused=False).view(np.int32),
                    ref.view(np.int32))
fused_differs = not np.array_equal(fake_quantize_per_channel(x, sc, zp, 0, 0, 255), ref)
print(ok, fused_differs)
"""


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="needs an AVX2+ machine"
)
def test_fake_quantize_float_zp_unfused_matches_default_capability() -> None:
    """With ATEN_CPU_CAPABILITY=default torch does not contract to an FMA."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run(
        [sys.executable, "-c", _DEFAULT_CAPABILITY_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


# --------------------------------------------------------------------------- decomposed (PT2E)


@SETTINGS
@given(
    name=st.sampled_from(list(DECOMPOSED)),
    narrow=st.booleans(),
    shape=shapes,
    scale=scales(),
    seed=seeds,
    data=st.data(),
)
def test_decomposed_per_tensor_matches_torch(name, narrow, shape, scale, seed, data) -> None:
    d = qdtype(name)
    lo, hi = (d.qmin + 1, d.qmax) if narrow else (d.qmin, d.qmax)
    zp = data.draw(st.integers(max(lo, -(2**20)), min(hi, 2**20)))
    x = make_x(seed, shape, np.float64(scale), np.float64(zp), (lo, hi))
    ops = torch.ops.quantized_decomposed
    ref = ops.quantize_per_tensor(torch.from_numpy(x), scale, zp, lo, hi, DECOMPOSED[name])
    assert_bitexact(qa.quantize_per_tensor_decomposed(x, scale, zp, name, lo, hi), ref.numpy(), x)
    deq = ops.dequantize_per_tensor(ref, scale, zp, lo, hi, DECOMPOSED[name]).numpy()
    assert_bitexact(qa.dequantize_per_tensor_decomposed(ref.numpy(), scale, zp), deq)


@SETTINGS
@given(
    name=st.sampled_from(list(DECOMPOSED)),
    f64_scales=st.booleans(),
    shape=shapes,
    seed=seeds,
    data=st.data(),
)
def test_decomposed_per_channel_matches_torch(name, f64_scales, shape, seed, data) -> None:
    d = qdtype(name)
    axis = data.draw(st.integers(0, len(shape) - 1))
    ndim = len(shape)
    sc, zp = channel_params(data.draw, shape[axis], max(d.qmin, -(2**20)), min(d.qmax, 2**20))
    sc = sc if f64_scales else sc.astype(np.float32)
    x = make_x(
        seed, shape, channel_view(sc, ndim, axis), channel_view(zp, ndim, axis), (d.qmin, d.qmax)
    )
    ops = torch.ops.quantized_decomposed
    args = (torch.from_numpy(sc), torch.from_numpy(zp), axis, d.qmin, d.qmax, DECOMPOSED[name])
    ref = ops.quantize_per_channel(torch.from_numpy(x), *args)
    got = qa.quantize_per_channel_decomposed(x, sc, zp, axis, name)
    assert_bitexact(got, ref.numpy(), x)
    deq = ops.dequantize_per_channel(ref, *args).numpy()
    assert_bitexact(qa.dequantize_per_channel_decomposed(ref.numpy(), sc, zp, axis), deq)
    deq0 = ops.dequantize_per_channel(ref, args[0], None, *args[2:]).numpy()
    assert_bitexact(qa.dequantize_per_channel_decomposed(ref.numpy(), sc, None, axis), deq0)


# --------------------------------------------------------------------------- argument checks


def test_argument_errors() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="quantize_per_tensor_decomposed"):
        qa.quantize_per_tensor(x, 1.0, 0, "int8")
    with pytest.raises(ValueError, match="quantize_per_channel_decomposed"):
        qa.quantize_per_channel(x, [1.0, 1.0], [0, 0], 0, "uint8")
    with pytest.raises(ValueError, match="does not support dtype 'quint4x2'"):
        qa.quantize_per_channel(x, [1.0, 1.0], [0, 0], 0, "quint4x2")
    with pytest.raises(ValueError, match="does not support dtype 'qint32'"):
        qa.quantize_per_channel_float_qparams(x, [1.0, 1.0], [0.0, 0.0], 0, "qint32")
    with pytest.raises(KeyError):
        qa.quantize_per_tensor(x, 1.0, 0, "float8")
    with pytest.raises(ValueError, match="zero_point out of range"):
        qa.quantize_per_tensor(x, 1.0, 256, "quint8")
    with pytest.raises(ValueError, match="zero_point out of range"):
        qa.quantize_per_channel(x, [1.0, 1.0], [0, -1], 0, "quint8")
    with pytest.raises(ValueError, match="3 channels"):
        qa.quantize_per_channel(x, [1.0, 1.0], [0, 0], 1, "qint8")
    with pytest.raises(ValueError, match="axis 2 out of range"):
        qa.dequantize_per_channel(x.astype(np.int8), [1.0], [0], 2)
    with pytest.raises(ValueError, match="at least one dimension"):
        qa.quantize_per_channel(np.float32(1.0), [1.0], [0], 0, "qint8")
    with pytest.raises(ValueError, match="quant_min 5 must be <= quant_max 4"):
        qa.fake_quantize_per_tensor(x, 1.0, 0, 5, 4)
    with pytest.raises(ValueError, match="invalid for int8"):
        qa.quantize_per_tensor_decomposed(x, 1.0, 0, "int8", -129, 127)


def test_no_torch_import() -> None:
    """qinspect.quant must import without torch (the parent package is bypassed)."""
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(qa.__file__)))
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('qinspect'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['qinspect'] = pkg\n"
        "import qinspect.quant, qinspect.quant.affine, qinspect.quant.metrics\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, pkg_dir], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

"""Run one layer with PyTorch's own quantized kernels (the torch side of ``verify``).

The packed weights are rebuilt with torch from the integers and qparams the checkpoint
stores (``linear_prepack``, ``conv2d_prepack``...) under the chosen engine, so the result
is what the file computes when torch runs it. Everything here imports torch inside
functions; results come back as numpy arrays.

Which arithmetic a kernel uses (for :mod:`qinspect.quant.reference`) depends on the
engine, and for convolutions on the layer and the CPU: torch's ``x86`` engine runs
linear layers with fbgemm, and convolutions with oneDNN when the CPU has AVX512-VNNI,
the weights are symmetric (every zero point 0) and ``groups <= 100``
(``should_use_onednn_quant`` in ATen), else with fbgemm. fbgemm runs some depthwise
convolutions with a kernel that adds byte products in int16 (:func:`fbgemm_depthwise`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qinspect.errors import VerifyError
from qinspect.model import Layer, TensorQuant
from qinspect.quant.reference import Geometry

ENGINES = ("fbgemm", "x86", "qnnpack")
ONEDNN_MAX_GROUPS = 100


@dataclass(frozen=True)
class ConvGeometry:
    """Convolution hyper-parameters; a state_dict stores none of them."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    @classmethod
    def default(cls, ndim: int) -> ConvGeometry:
        return cls((1,) * ndim, (0,) * ndim, (1,) * ndim, 1)

    def describe(self) -> str:
        def one(t: tuple[int, ...]) -> str:
            return str(t[0]) if len(set(t)) == 1 else "x".join(map(str, t))
        return (f"stride {one(self.stride)}, padding {one(self.padding)}, dilation "
                f"{one(self.dilation)}, groups {self.groups}")


@contextlib.contextmanager
def engine_context(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, then restore it."""
    import torch

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def available_engines() -> tuple[str, ...]:
    import torch

    return tuple(e for e in ENGINES if e in torch.backends.quantized.supported_engines)


def default_engine() -> str:
    """torch's own default quantized engine on this machine (``x86`` on x86-64)."""
    import torch

    engine = torch.backends.quantized.engine
    if engine in ENGINES:
        return engine
    return available_engines()[0] if available_engines() else "qnnpack"


def has_avx512_vnni() -> bool:
    import torch

    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a missing probe means "assume no VNNI"
        return False


def fbgemm_int16_gemm() -> bool:
    """Whether fbgemm's GEMM here adds byte-product pairs in int16 with saturation
    (``vpmaddubsw``: a CPU without AVX512-VNNI), which the reference must reproduce
    (``int16_gemm`` in :mod:`qinspect.quant.reference`; measured on an AVX2 machine)."""
    return not has_avx512_vnni()


@functools.cache
def torchao_int8_pairs_saturate() -> bool:
    """Whether torchao's CPU int8 matmul (``torchao.kernel.int_scaled_matmul``) adds pairs of
    byte products in int16 with saturation on this machine, measured on the kernel itself.

    On a CPU with VNNI and no AMX, torchao shifts the int8 activations to uint8 (+128) and
    calls ``torch._int_mm`` (u8s8, then subtracts 128 x the weight's column sums); oneDNN
    runs that with VNNI (exact) unless its ISA is capped below VNNI (``ONEDNN_MAX_CPU_ISA``
    = SSE41, AVX2, AVX512_CORE...: measured on an AVX512-VNNI CPU, 1834 of 2048 random
    int8 outputs differ), where ``vpmaddubsw`` saturates each pair to int16. One row of
    127s against a column of 127s tells: each pair is 2 x 255 x 127 = 64770 > 32767."""
    import torch
    from torchao.kernel import int_scaled_matmul

    k = 16
    a = torch.full((1, k), 127, dtype=torch.int8)
    b = torch.full((k, 1), 127, dtype=torch.int8)
    got = int_scaled_matmul(a, b, torch.ones((1, 1), dtype=torch.float32))
    return float(got.reshape(-1)[0]) != float(k * 127 * 127)


@functools.cache
def onednn_int16_pairs() -> bool:
    """Whether oneDNN's int8 convolution here adds byte-product pairs in int16 with
    saturation, measured on the kernel: a CPU with AVX512-VNNI (so ATen hands symmetric
    x86 convolutions to oneDNN) whose oneDNN is capped below VNNI by
    ``ONEDNN_MAX_CPU_ISA`` (SSE41, AVX2, AVX512_CORE...; the test suite and the sample
    scripts set SSE41). Then the arithmetic is :mod:`qinspect.quant.reference`'s
    ``onednn_int16`` (measured: 0 of a million outputs differ). A 1x1 convolution of
    sixteen 255s by sixteen 127s tells: each pair is 2 x 255 x 127 = 64770 > 32767."""
    if not has_avx512_vnni():
        return False
    import torch

    k = 16
    exact = k * 255 * 127
    with engine_context("x86"):
        w = torch.quantize_per_channel(torch.full((1, k, 1, 1), 127.0), torch.ones(1),
                                       torch.zeros(1, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.conv2d_prepack(w, None, [1, 1], [0, 0], [1, 1], 1)
        x = torch.quantize_per_tensor(torch.full((1, k, 1, 1), 255.0), 1.0, 0, torch.quint8)
        out = torch.ops.quantized.conv2d(x, packed, exact / 200.0, 0)
    return int(out.int_repr().reshape(-1)[0]) != 200


def int16_gemm(arith: str) -> bool:
    """Whether the GEMM of kernel arithmetic ``arith`` saturates byte-product pairs to
    int16 on this machine (``int16_gemm`` of :mod:`qinspect.quant.reference`)."""
    return arith == "onednn_int16" or (arith == "fbgemm" and fbgemm_int16_gemm())


def linear_kernel(engine: str) -> str:
    """Arithmetic of static/dynamic Linear and of add under ``engine``."""
    return "qnnpack" if engine == "qnnpack" else "fbgemm"


def conv_kernel(engine: str, weight_zero_points: np.ndarray, groups: int) -> str:
    """Arithmetic of a convolution under ``engine`` (see the module docstring)."""
    if engine == "qnnpack":
        return "qnnpack"
    if engine == "x86":
        symmetric = bool(np.all(np.asarray(weight_zero_points) == 0))
        if has_avx512_vnni() and symmetric and groups <= ONEDNN_MAX_GROUPS:
            # capped oneDNN: its grouped kernels were measured exact, its plain ones not
            return "onednn_int16" if groups == 1 and onednn_int16_pairs() else "onednn"
    return "fbgemm"


def fbgemm_depthwise(in_channels: int, weight_shape: Sequence[int], geo: ConvGeometry) -> bool:
    """fbgemm's depthwise fast path (``takeDepthWiseFastPath``), which adds byte
    products of kernel-tap pairs in int16 with saturation.

    Taken when groups == input channels (a multiple of 8), output channels are 1x or 2x
    the groups, 2-D or 3-D with equal last two kernel sizes in {3, 5, 7}, strides 1 or
    2, dilation 1 and "same" padding ((k - 1) / 2). Checked on torch 2.13 by experiment.
    """
    nd = len(weight_shape) - 2
    k = tuple(int(v) for v in weight_shape[2:])
    out_channels = int(weight_shape[0])
    g = geo.groups
    return (nd >= 2 and g == in_channels and g % 8 == 0 and int(weight_shape[1]) == 1
            and out_channels in (g, 2 * g) and k[-1] == k[-2]
            and all(v in (3, 5, 7) for v in k) and all(s in (1, 2) for s in geo.stride)
            and all(d == 1 for d in geo.dilation)
            and all(p == (kk - 1) // 2 for p, kk in zip(geo.padding, k, strict=True)))


# --- tensors ------------------------------------------------------------------------


def weight_tensor(layer: Layer) -> Any:
    """The layer's quantized weight as a torch quantized tensor, from the stored ints."""
    import torch

    w = layer.weight
    if w is None or w.quant is None or not w.is_quantized:
        raise VerifyError(f"{layer.name}: no quantized weight to run")
    q: TensorQuant = w.quant
    dtype = {"qint8": torch.qint8, "quint8": torch.quint8}.get(q.dtype)
    if dtype is None:
        raise VerifyError(f"{layer.name}: {q.dtype} weights are not supported by verify")
    ints = torch.from_numpy(np.ascontiguousarray(w.values))
    if q.axis is None:
        return torch._make_per_tensor_quantized_tensor(
            ints, float(q.scale[0]), int(q.zero_point[0]))
    return torch._make_per_channel_quantized_tensor(
        ints, torch.from_numpy(np.asarray(q.scale, np.float64)),
        torch.from_numpy(np.asarray(q.zero_point, np.int64)), int(q.axis))


def activation_tensor(values: np.ndarray, scale: float, zero_point: int) -> Any:
    """quint8 torch tensor holding exactly these integer values."""
    import torch

    ints = torch.from_numpy(np.ascontiguousarray(values, dtype=np.uint8))
    return torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero_point))


def _bias(layer: Layer) -> Any:
    import torch

    if layer.bias is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(layer.bias, dtype=np.float32))


def _int_repr(t: Any) -> np.ndarray:
    return t.int_repr().numpy()


def _kernel_error(layer: Layer, exc: Exception) -> VerifyError:
    line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return VerifyError(f"{layer.name}: torch's quantized kernel refused the layer ({line})")


# --- runners --------------------------------------------------------------------------


class LinearKernel:
    """``torch.ops.quantized.linear`` / ``linear_relu`` with the layer's packed weight."""

    def __init__(self, layer: Layer, engine: str, packed: Any = None) -> None:
        """``packed``: the same weight and bias already packed (a quantized model's)."""
        import torch

        self.layer, self.engine, self.packed = layer, engine, packed
        if packed is not None:
            return
        with engine_context(engine):
            try:
                self.packed = torch.ops.quantized.linear_prepack(weight_tensor(layer),
                                                                 _bias(layer))
            except RuntimeError as exc:
                raise _kernel_error(layer, exc) from exc

    def __call__(self, x_q: np.ndarray, scale: float, zero_point: int, out_scale: float,
                 out_zp: int, relu: bool) -> np.ndarray:
        import torch

        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        with engine_context(self.engine), torch.no_grad():
            try:
                y = op(activation_tensor(x_q, scale, zero_point), self.packed,
                       float(out_scale), int(out_zp))
            except RuntimeError as exc:
                raise _kernel_error(self.layer, exc) from exc
        return _int_repr(y)


class ConvKernel:
    """``torch.ops.quantized.conv{1,2,3}d`` (``_relu``) with the layer's packed weight."""

    def __init__(self, layer: Layer, engine: str, geo: ConvGeometry, packed: Any = None
                 ) -> None:
        """``packed``: the same weight, bias and geometry already packed (a quantized
        model's conv module), saving a prepack."""
        import torch

        self.layer, self.engine, self.geo, self.packed = layer, engine, geo, packed
        w = weight_tensor(layer) if packed is None else None
        if w is not None:
            dims = w.dim()
        elif layer.weight is not None:
            dims = len(layer.weight.shape)
        else:
            raise VerifyError(f"{layer.name}: no weight in the file to tell the convolution's "
                              "dimensions")
        self.nd = dims - 2
        if self.nd not in (1, 2, 3):
            raise VerifyError(f"{layer.name}: {self.nd}-d convolutions are not supported")
        if packed is not None:
            return
        ops = torch.ops.quantized
        prepack = {1: ops.conv1d_prepack, 2: ops.conv2d_prepack, 3: ops.conv3d_prepack}
        with engine_context(engine):
            try:
                self.packed = prepack[self.nd](w, _bias(layer), list(geo.stride),
                                               list(geo.padding), list(geo.dilation),
                                               geo.groups)
            except RuntimeError as exc:
                raise _kernel_error(layer, exc) from exc

    def __call__(self, x_q: np.ndarray, scale: float, zero_point: int, out_scale: float,
                 out_zp: int, relu: bool) -> np.ndarray:
        import torch

        ops = torch.ops.quantized
        plain = {1: ops.conv1d, 2: ops.conv2d, 3: ops.conv3d}
        fused = {1: ops.conv1d_relu, 2: ops.conv2d_relu, 3: ops.conv3d_relu}
        op = (fused if relu else plain)[self.nd]
        with engine_context(self.engine), torch.no_grad():
            try:
                y = op(activation_tensor(x_q, scale, zero_point), self.packed,
                       float(out_scale), int(out_zp))
            except RuntimeError as exc:
                raise _kernel_error(self.layer, exc) from exc
        return _int_repr(y)


def conv_sum(x: np.ndarray, w: np.ndarray, stride: Geometry, padding: Geometry,
             dilation: Geometry, groups: int, exact: bool) -> np.ndarray:
    """:func:`qinspect.quant.reference._conv_sum` by torch's float64 convolution (im2col +
    double GEMM on CPU, no Winograd): same result, exact on integer-valued inputs (sums
    of 8-bit products stay far below 2**53), several times faster than numpy's im2col."""
    import torch
    import torch.nn.functional as F

    nd = w.ndim - 2
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]

    def tup(v: Geometry) -> tuple[int, ...]:
        return (int(v),) * nd if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)

    with torch.no_grad():
        out = fn(torch.from_numpy(np.ascontiguousarray(x, np.float64)),
                 torch.from_numpy(np.ascontiguousarray(w, np.float64)), None,
                 tup(stride), tup(padding), tup(dilation), int(groups)).numpy()
    return np.rint(out).astype(np.int64) if exact else out


class DynamicLinearKernel:
    """``torch.ops.quantized.linear_dynamic`` (``linear_relu_dynamic``), float in and out."""

    def __init__(self, layer: Layer, engine: str, reduce_range: bool = True) -> None:
        import torch

        # QNNPACK ignores reduce_range (and warns on every process's first call)
        self.layer, self.engine = layer, engine
        self.reduce_range = reduce_range and engine != "qnnpack"
        with engine_context(engine):
            try:
                self.packed = torch.ops.quantized.linear_prepack(weight_tensor(layer),
                                                                 _bias(layer))
            except RuntimeError as exc:
                raise _kernel_error(layer, exc) from exc

    def __call__(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        import torch

        ops = torch.ops.quantized
        op = ops.linear_relu_dynamic if relu else ops.linear_dynamic
        with engine_context(self.engine), torch.no_grad(), _quiet():
            try:
                y = op(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                       self.packed, self.reduce_range)
            except RuntimeError as exc:
                raise _kernel_error(self.layer, exc) from exc
        return y.numpy()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """qnnpack warns on every dynamic call that it ignores reduce_range."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quantize_kernel(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``torch.quantize_per_tensor(x, scale, zp, quint8)`` (what a QuantStub runs)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return _int_repr(torch.quantize_per_tensor(t, float(scale), int(zero_point), torch.quint8))


def add_kernel(layer: Layer, engine: str, a: tuple[np.ndarray, float, int],
               b: tuple[np.ndarray, float, int], out_scale: float, out_zp: int,
               relu: bool) -> np.ndarray:
    """``torch.ops.quantized.add`` / ``add_relu`` of two quint8 tensors."""
    import torch

    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    with engine_context(engine), torch.no_grad():
        try:
            y = op(activation_tensor(*a), activation_tensor(*b), float(out_scale), int(out_zp))
        except RuntimeError as exc:
            raise _kernel_error(layer, exc) from exc
    return _int_repr(y)


# --- recurrent layers -----------------------------------------------------------------

GateFn = Callable[[np.ndarray], np.ndarray]


def lstm_sequence(x: np.ndarray, ih: GateFn, hh: GateFn, hidden: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Run one unidirectional LSTM layer over ``x`` (T, B, I) with the given gate functions.

    ``ih`` is applied to the whole sequence at once (T*B rows), as ATen's quantized LSTM
    does (so a dynamic kernel picks one input quantization for the sequence); ``hh`` to
    each step's previous hidden state. The cell arithmetic is torch's float32
    (``sigmoid``/``tanh``), so with torch's dynamic kernels as gates this reproduces
    ``torch.quantized_lstm`` bit for bit. Returns (h for every step (T, B, H),
    the hidden states ``hh`` was applied to (T, B, H): zeros, h_0, ..., h_{T-2}).
    """
    import torch

    steps, batch = x.shape[0], x.shape[1]
    gi = torch.from_numpy(np.ascontiguousarray(
        ih(x.reshape(steps * batch, -1)), dtype=np.float32)).reshape(steps, batch, -1)
    h = torch.zeros(batch, hidden)
    c = torch.zeros(batch, hidden)
    outs, prev = [], []
    with torch.no_grad():
        for t in range(steps):
            prev.append(h.numpy().copy())
            gh = torch.from_numpy(np.ascontiguousarray(hh(h.numpy()), dtype=np.float32))
            i, f, g, o = (gi[t] + gh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h.numpy().copy())
    return np.stack(outs), np.stack(prev)

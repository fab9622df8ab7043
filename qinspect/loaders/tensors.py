"""Tensors as qinspect reads them: numpy views of a file's storages, without torch.

The pickle reader (:mod:`qinspect.loaders.safe_pickle`) turns torch's rebuild calls
(``torch._utils._rebuild_tensor_v2`` / ``_v3`` / ``_rebuild_qtensor``) into
:class:`ArrayTensor`: the storage's bytes, offset, size and stride, the dtype, and for
quantized tensors the quantizer parameters exactly as the pickle holds them (the layout of
``torch/_tensor.py`` ``Tensor.__reduce_ex__``: ``(qscheme, scale, zero_point)`` per
tensor, ``(qscheme, scales, zero_points, axis)`` per channel). Values are read as strided
numpy views of the storage, bounds-checked when the tensor is built, so a memory-mapped
file stays on disk; the only copies are the unpacking of sub-byte types and the widening
of bfloat16.

The functions below accept an :class:`ArrayTensor` or a live ``torch.Tensor`` (tests and
``verify`` hand in torch's own objects); torch is never imported to answer for an
:class:`ArrayTensor`. :func:`to_torch` rebuilds torch tensors with torch's own rebuild
functions, for the places that run kernels.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from qinspect.errors import LoadError
from qinspect.loaders._quiet import silence_torch_notices
from qinspect.model import PerAxis, PerTensor, TensorQuant

if TYPE_CHECKING:
    import torch

silence_torch_notices()

SUB_BYTE_BITS = {"quint4x2": 4, "quint2x4": 2}


@dataclass(frozen=True)
class DType:
    """A torch dtype named by a file (``torch.qint8``); ``str()`` spells it as torch does."""

    name: str

    def __str__(self) -> str:
        return f"torch.{self.name}"

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.name]

    @property
    def is_floating_point(self) -> bool:
        return self.name.startswith(("float", "bfloat"))


@dataclass(frozen=True)
class QScheme:
    """A torch qscheme named by a file (``torch.per_channel_affine``)."""

    name: str

    def __str__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class Layout:
    """A torch layout (``torch.strided``, ``torch.sparse_coo``...)."""

    name: str

    def __str__(self) -> str:
        return f"torch.{self.name}"


#: bytes per element of each dtype torch 2.13 defines (``torch.dtype.itemsize``)
ITEMSIZE: dict[str, int] = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
    "int16": 2, "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "complex64": 8, "complex128": 16, "complex32": 4,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1, "bits8": 1, "bits16": 2, "bits1x8": 1,
    "bits2x4": 1, "bits4x2": 1,
    **{f"int{n}": 1 for n in range(1, 8)}, **{f"uint{n}": 1 for n in range(1, 8)},
}
#: torch's other names for the same dtypes (``torch.float`` is ``torch.float32``)
ALIASES = {"float": "float32", "double": "float64", "half": "float16", "int": "int32",
           "long": "int64", "short": "int16", "cfloat": "complex64",
           "cdouble": "complex128", "chalf": "complex32", "bit": "bits8"}
#: numpy dtype of each torch dtype qinspect reads values of (raw bits for bfloat16)
NUMPY_DTYPES: dict[str, str] = {
    "float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8",
    "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "uint16": "<u2",
    "uint32": "<u4", "uint64": "<u8", "bool": "?", "qint8": "i1", "quint8": "u1",
    "qint32": "<i4", "quint4x2": "u1", "quint2x4": "u1", "complex64": "<c8",
    "complex128": "<c16",
}
QUANTIZED = frozenset({"qint8", "quint8", "qint32", "quint4x2", "quint2x4"})
#: values per storage element of the sub-byte quantized types
PER_ELEMENT = {"quint4x2": 2, "quint2x4": 4}
DTYPES = {name: DType(name) for name in ITEMSIZE}
DTYPES.update({alias: DTYPES[name] for alias, name in ALIASES.items()})
QSCHEMES = {name: QScheme(name) for name in (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
    "per_channel_symmetric", "per_channel_affine_float_qparams")}
LAYOUTS = {name: Layout(name) for name in (
    "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
    "_mkldnn", "jagged")}


class Storage:
    """The bytes of one storage record (``data/<key>``): a read-only uint8 array, bound
    when the record is read (the legacy format names storages before their bytes)."""

    def __init__(self, key: str, dtype: DType, numel: int, data: np.ndarray | None = None,
                 device: str = "cpu") -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data = data
        self.device = device

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"Storage({self.key!r}, {self.dtype}, {self.numel})"


class ArrayTensor:
    """A tensor read from a file: storage, offset, size, stride, dtype, quantizer params.

    ``qparams`` is ``None`` or ``(qscheme, scale(s), zero point(s)[, axis])`` as pickled.
    ``problem`` says why qinspect cannot read its values (set aside by the reader)."""

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...], dtype: DType, qparams: tuple | None = None,
                 problem: str | None = None, layout: str = "strided") -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype
        self.qparams = qparams
        self.problem = problem
        self.layout = layout
        self.attrs: dict[str, Any] = {}

    # the bits of torch.Tensor's interface the loaders use ---------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    @property
    def is_quantized(self) -> bool:
        return self.qparams is not None

    def dim(self) -> int:
        return len(self.size)

    def numel(self) -> int:
        return math.prod(self.size)

    def is_complex(self) -> bool:
        return self.dtype.name.startswith("complex")

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def device(self) -> str:
        return self.storage.device

    def __repr__(self) -> str:
        return f"ArrayTensor({self.dtype}, {list(self.size)})"

    def item(self) -> float | int | bool | complex:
        """The one value of a one-element tensor (``torch.Tensor.item``)."""
        if self.numel() != 1:
            raise ValueError(f"a tensor of {self.numel()} elements has no single value")
        values = int_values(self) if self.is_quantized else float_values(self)
        return values.reshape(-1)[0].item()

    def __float__(self) -> float:
        return float(self._real_item())

    def __int__(self) -> int:
        return int(self._real_item())

    def _real_item(self) -> float | int | bool:
        value = self.item()
        if isinstance(value, complex):  # as float()/int() of a complex number
            raise TypeError("a complex value converts to neither float nor int")
        return value

    # values ------------------------------------------------------------------------------
    def raw(self) -> np.ndarray:
        """The stored elements as a strided numpy view (bfloat16 as raw uint16,
        quantized types as their integer type; sub-byte types: see :func:`int_values`)."""
        code = NUMPY_DTYPES.get(self.dtype.name)
        if code is None or self.dtype.name in SUB_BYTE_BITS:
            raise LoadError(f"dtype {self.dtype.name}: qinspect cannot read its values yet")
        data = self.storage.data
        if data is None:
            raise LoadError(f"storage {self.storage.key!r} has no data in the file")
        item = np.dtype(code).itemsize
        if self.numel() == 0:
            return np.zeros(self.size, dtype=code)
        flat = data[: (data.size // item) * item].view(code)
        return np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride),
            writeable=bool(data.flags.writeable))


def check_extent(storage: Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...], bits: int) -> str | None:
    """Why a view (offset, size, stride; ``bits`` per element) does not fit its storage."""
    if len(size) != len(stride) or len(size) > 64:
        return f"{len(size)} sizes and {len(stride)} strides"
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        return f"a negative size, stride or offset (size {list(size)}, stride {list(stride)})"
    if math.prod(size) == 0:
        return None
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if -(-extent * bits // 8) > storage.nbytes:
        return (f"shape {list(size)} (stride {list(stride)}, offset {offset}) reaches past "
                f"its storage of {storage.nbytes} bytes")
    return None


# --- the functions every loader uses -----------------------------------------------------


def dtype_name(dtype: Any) -> str:
    """``torch.qint8`` (or its :class:`DType`) -> ``"qint8"``."""
    return str(dtype).removeprefix("torch.")


def is_dtype(value: Any) -> bool:
    if isinstance(value, DType):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.dtype)


def is_tensor(value: object) -> TypeGuard[ArrayTensor | torch.Tensor]:
    """A tensor as the safe reader makes it, or a real torch tensor (torch loaded)."""
    if isinstance(value, ArrayTensor):
        return True
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch is loaded
    return torch is not None and isinstance(value, torch.Tensor)


def is_quantized(value: Any) -> bool:
    return is_tensor(value) and bool(value.is_quantized)


def float_values(t: Any) -> np.ndarray:
    """A float tensor as numpy (bf16 is widened to float32; other dtypes kept)."""
    if isinstance(t, ArrayTensor):
        if t.is_quantized:
            raise LoadError("a quantized tensor where float values were expected")
        raw = t.raw()
        if t.dtype.name == "bfloat16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return t.numpy()


INT_VIEW_DTYPES = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}


def int_values(t: Any) -> np.ndarray:
    """The integer values ``q`` of a quantized tensor, shaped like the tensor.

    For 8- and 32-bit types this is a zero-copy view of the storage (so a memory-mapped
    checkpoint stays on disk). Sub-byte types are unpacked into a new uint8 array.
    """
    name = dtype_name(t.dtype)
    bits = SUB_BYTE_BITS.get(name)
    if isinstance(t, ArrayTensor):
        if bits is None:
            return t.raw()
        data = t.storage.data
        if data is None:
            raise LoadError(f"storage {t.storage.key!r} has no data in the file")
        count = -(-t.numel() * bits // 8)
        return unpack_sub_byte(data[t.offset:t.offset + count], bits, t.size)
    if bits is not None:
        from qinspect.loaders._quiet import quiet_torch_warnings

        with quiet_torch_warnings():
            raw = t.int_repr().numpy()
        return unpack_sub_byte(raw, bits, tuple(t.shape))
    return _storage_view(t, INT_VIEW_DTYPES[name])


def _storage_view(t: Any, int_dtype: str) -> np.ndarray:
    import torch

    view = torch.empty(0, dtype=getattr(torch, int_dtype))
    view.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return view.numpy()


def unpack_sub_byte(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Unpack torch's quint4x2/quint2x4 bytes: values are packed over the flattened tensor,
    lowest bits first."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    flat = packed.reshape(-1)
    parts = [(flat >> (bits * i)) & mask for i in range(per_byte)]
    values = np.stack(parts, axis=-1).reshape(-1)
    count = int(np.prod(shape, dtype=np.int64))
    return values[:count].reshape(shape).astype(np.uint8)


def tensor_quant(t: Any) -> TensorQuant:
    """Describe the quantization of a quantized tensor, as torch reports it."""
    if isinstance(t, ArrayTensor):
        return _array_quant(t)
    import torch

    from qinspect.loaders._quiet import quiet_torch_warnings

    qscheme = t.qscheme()
    name = str(qscheme).removeprefix("torch.")
    dtype = dtype_name(t.dtype)
    with quiet_torch_warnings():
        if qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale = np.array([t.q_scale()], dtype=np.float64)
            zero_point = np.array([t.q_zero_point()], dtype=np.int64)
            return TensorQuant(dtype, name, scale, zero_point, None, granularity=PerTensor())
        scale = t.q_per_channel_scales().detach().to(torch.float64).numpy()
        zps = t.q_per_channel_zero_points().detach()
        zero_point = zps.numpy().astype(np.float64 if zps.is_floating_point() else np.int64)
        axis = int(t.q_per_channel_axis())
        return TensorQuant(dtype, name, scale, zero_point, axis, granularity=PerAxis(axis))


def _array_quant(t: ArrayTensor) -> TensorQuant:
    """torch/_utils.py ``_rebuild_qtensor``: per tensor ``(qscheme, scale, zero_point)``;
    per channel ``(qscheme, scales, zero_points, axis)``, scales and zero points as
    tensors (or lists: double/long for ``per_channel_affine``, float/float for
    ``per_channel_affine_float_qparams``)."""
    assert t.qparams is not None
    qscheme = t.qparams[0].name
    dtype = t.dtype.name
    if qscheme in ("per_tensor_affine", "per_tensor_symmetric"):
        _, scale, zero_point = t.qparams
        return TensorQuant(dtype, qscheme, np.array([float(scale)], dtype=np.float64),
                           np.array([int(zero_point)], dtype=np.int64), None,
                           granularity=PerTensor())
    _, scales, zero_points, axis = t.qparams
    floating = qscheme == "per_channel_affine_float_qparams"
    scale = _param_values(scales, np.float64 if not floating else np.float32)
    zps = _param_values(zero_points, np.float32 if floating else np.int64)
    zp_floating = zps.dtype.kind == "f"
    if zp_floating:
        # torch pickles float-qparams tensors as per_channel_affine; the rebuild picks the
        # quantizer from the zero points' dtype (make_per_channel_affine_quantizer)
        qscheme = "per_channel_affine_float_qparams"
    return TensorQuant(dtype, qscheme, scale.astype(np.float64).reshape(-1),
                       zps.astype(np.float64 if zp_floating else np.int64).reshape(-1),
                       int(axis), granularity=PerAxis(int(axis)))


def _param_values(value: Any, list_dtype: Any) -> np.ndarray:
    if isinstance(value, ArrayTensor):
        return float_values(value)
    return np.asarray(value, dtype=list_dtype)


def describe(value: Any) -> str:
    """A short description of any value found in a file, for listings."""
    if is_tensor(value):
        shape = "x".join(str(d) for d in value.shape) or "scalar"
        return f"tensor {dtype_name(value.dtype)} [{shape}]"
    if isinstance(value, tuple):
        return f"tuple of {len(value)}"
    return type(value).__name__


def scalar(value: float | int, dtype: str) -> ArrayTensor:
    """A 0-d tensor holding ``value`` (``torch.tensor(value, dtype=...)``)."""
    arr = np.array(value, dtype=NUMPY_DTYPES[dtype]).reshape(1)
    storage = Storage("<literal>", DTYPES[dtype], 1, arr.view(np.uint8))
    return ArrayTensor(storage, 0, (), (), DTYPES[dtype])


# --- torch, where a kernel must run ------------------------------------------------------


def to_torch(value: Any, _memo: dict[int, Any] | None = None) -> Any:
    """``value`` with every :class:`ArrayTensor`, dtype, qscheme and layout replaced by
    torch's own object, rebuilt with torch's rebuild functions (containers and the state
    of pickled objects are walked; shared objects stay shared). Imports torch."""
    memo: dict[int, Any] = {} if _memo is None else _memo
    todo: list[tuple[Any, Any, Any]] = []
    result = _convert(value, memo, todo)
    while todo:
        target, key, item = todo.pop()
        new = _convert(item, memo, todo)
        if isinstance(target, dict):
            target[key] = new
        elif isinstance(target, list):
            target[key] = new
        else:
            target.__dict__[key] = new
    return result


def _convert(value: Any, memo: dict[int, Any], todo: list) -> Any:
    import torch

    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, DType):
        return getattr(torch, value.name)
    if isinstance(value, QScheme):
        return getattr(torch, value.name)
    if isinstance(value, Layout):
        return getattr(torch, value.name, value)
    if isinstance(value, ArrayTensor):
        out = _torch_tensor(value, memo)
        memo[id(value)] = out
        return out
    if isinstance(value, tuple):
        out_t = tuple(to_torch(v, memo) for v in value)  # tuples are immutable: rebuild
        memo[id(value)] = out_t
        return out_t
    if isinstance(value, list):
        out_l = list(value)
        memo[id(value)] = out_l
        todo.extend((out_l, i, v) for i, v in enumerate(value))
        return out_l
    if isinstance(value, Mapping):
        out_d: dict[Any, Any] = {}
        if isinstance(value, dict):  # keep OrderedDict & co.
            try:
                out_d = type(value)()
            except TypeError:
                pass
        memo[id(value)] = out_d
        for k, v in value.items():
            out_d[k] = None
            todo.append((out_d, k, v))
        return out_d
    if hasattr(value, "__dict__") and not isinstance(value, type):
        memo[id(value)] = value
        for k, v in list(vars(value).items()):
            todo.append((value, k, v))
        return value
    return value


def _torch_tensor(t: ArrayTensor, memo: dict[int, Any]) -> Any:
    import collections

    import torch
    from torch._utils import _rebuild_qtensor, _rebuild_tensor

    from qinspect.loaders._quiet import quiet_torch_warnings

    key = ("storage", id(t.storage))
    storage = memo.get(key)  # type: ignore[call-overload]
    with quiet_torch_warnings():
        if storage is None:
            dtype = getattr(torch, t.storage.dtype.name)
            data = t.storage.data
            raw = bytearray(data.tobytes()) if data is not None and data.size else None
            untyped = (torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw
                       else torch.UntypedStorage(0))
            storage = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype,
                                                 _internal=True)
            memo[key] = storage  # type: ignore[index]
        if t.dtype != t.storage.dtype:
            storage = torch.storage.TypedStorage(wrap_storage=storage._untyped_storage,
                                                 dtype=getattr(torch, t.dtype.name),
                                                 _internal=True)
        if t.qparams is None:
            return _rebuild_tensor(storage, t.offset, t.size, t.stride)
        params = tuple(to_torch(p, memo) for p in t.qparams)
        return _rebuild_qtensor(storage, t.offset, t.size, t.stride, params, False,
                                collections.OrderedDict())

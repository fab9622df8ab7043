"""Turn torch tensors into numpy arrays and :class:`TensorQuant` descriptions.

Views are kept where torch allows it (memory-mapped storages stay on disk); the only
copies are ``int_repr()`` for quantized tensors and the unpacking of sub-byte types.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qinspect.loaders._quiet import quiet_torch_warnings
from qinspect.model import TensorQuant

SUB_BYTE_BITS = {"quint4x2": 4, "quint2x4": 2}


def dtype_name(dtype: Any) -> str:
    """``torch.qint8`` -> ``"qint8"``."""
    return str(dtype).removeprefix("torch.")


def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def is_quantized(value: Any) -> bool:
    return is_tensor(value) and bool(value.is_quantized)


def float_values(t: Any) -> np.ndarray:
    """A float tensor as numpy (bf16 is widened to float32; other dtypes kept)."""
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return t.numpy()


INT_VIEW_DTYPES = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}


def int_values(t: Any) -> np.ndarray:
    """The integer values ``q`` of a quantized tensor, shaped like the tensor.

    For 8- and 32-bit types this is a zero-copy view of the tensor's storage (so a
    memory-mapped checkpoint stays on disk); torch checks the view's bounds against the
    storage. Sub-byte types are unpacked into a new uint8 array.
    """
    name = dtype_name(t.dtype)
    bits = SUB_BYTE_BITS.get(name)
    if bits is not None:
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
    """Describe the quantization of a torch quantized tensor, as torch reports it."""
    import torch

    qscheme = t.qscheme()
    name = str(qscheme).removeprefix("torch.")
    dtype = dtype_name(t.dtype)
    with quiet_torch_warnings():
        if qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale = np.array([t.q_scale()], dtype=np.float64)
            zero_point = np.array([t.q_zero_point()], dtype=np.int64)
            return TensorQuant(dtype, name, scale, zero_point, None)
        scale = t.q_per_channel_scales().detach().to(torch.float64).numpy()
        zps = t.q_per_channel_zero_points().detach()
        zero_point = zps.numpy().astype(np.float64 if zps.is_floating_point() else np.int64)
        return TensorQuant(dtype, name, scale, zero_point, int(t.q_per_channel_axis()))


def describe(value: Any) -> str:
    """A short description of any value found in a file, for listings."""
    if is_tensor(value):
        shape = "x".join(str(d) for d in value.shape) or "scalar"
        return f"tensor {dtype_name(value.dtype)} [{shape}]"
    if isinstance(value, tuple):
        return f"tuple of {len(value)}"
    return type(value).__name__

"""Decoding the codes of Hugging Face quantized formats, in numpy, bit-exactly.

Every function here is pure: arrays in, arrays out. The producers' own formulas (and their
rounding order) are quoted where each is used; /work/shared/formats/hf-quantized.md and the
docstrings cite the library source each follows.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: FP4 E2M1 values by 4-bit code, bit 3 = sign (transformers ``FP4_VALUES``,
#: compressed-tensors ``kE2M1ToFloat``, ModelOpt ``e2m1_values``)
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
#: ModelOpt's ``e2m1_values`` (``qtensor/nvfp4_tensor.py``) decode code 8 as +0, not -0
E2M1_MODELOPT = np.where(E2M1 == 0, np.float32(0), E2M1).astype(np.float32)
#: AWQ GEMM: column ``8w + c`` of a packed word sits in nibble ``AWQ_REVERSE[c]``
#: (AutoAWQ ``awq/utils/packing_utils.py`` ``AWQ_REVERSE_ORDER``)
AWQ_REVERSE = np.array([0, 4, 1, 5, 2, 6, 3, 7])

_ML = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}


def decode_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (raw storage) as float32; exact for every format narrower than 32 bits."""
    values: np.ndarray
    if dtype in _ML:
        values = raw.view(_ML[dtype]).astype(np.float32)
        return values
    if dtype == "F4":
        values = E2M1[unpack_nibbles(raw.reshape(-1), low_first=True)]
        return values
    if dtype == "F64":
        return raw.astype(np.float64)
    return raw.astype(np.float32)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values once to ``dtype`` (round to nearest even) and return float32."""
    if dtype in ("BF16", "bfloat16"):
        return values.astype(ml_dtypes.bfloat16).astype(np.float32)
    if dtype in ("F16", "float16"):
        return values.astype(np.float16).astype(np.float32)
    return values.astype(np.float32)


def unpack_nibbles(data: np.ndarray, low_first: bool) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis. ``low_first``: the low nibble is the
    even element (compressed-tensors/ModelOpt/gpt-oss FP4); otherwise the high nibble is
    (bitsandbytes ``quantize_4bit``: byte k = ``code[2k] << 4 | code[2k+1]``)."""
    b = np.asarray(data, dtype=np.uint8)
    lo, hi = b & 0x0F, b >> 4
    pair = (lo, hi) if low_first else (hi, lo)
    return np.stack(pair, axis=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


def unpack_stream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unsigned ``bits``-wide fields of a little-endian bit stream of 32-bit words along the
    last axis: element k at bits ``[k*bits, (k+1)*bits)`` (compressed-tensors >= 0.18
    ``pack_to_int32``; GPTQ ``qweight``/``qzeros`` including the 3-bit 10|1|10|1|10 layout).
    Returns ``[..., count]`` uint8 (bits <= 8) codes."""
    if 32 % bits == 0:  # whole fields per word: the padded layout has no padding
        return unpack_padded(words, bits, count)
    w = np.ascontiguousarray(words).view(np.uint32)
    pos = np.arange(count, dtype=np.int64) * bits
    idx, off = pos // 32, (pos % 32).astype(np.uint64)
    padded = np.concatenate([w, np.zeros((*w.shape[:-1], 1), np.uint32)], axis=-1)
    lo = padded[..., idx].astype(np.uint64)
    hi = padded[..., idx + 1].astype(np.uint64)
    joined = lo | (hi << np.uint64(32))
    codes: np.ndarray = ((joined >> off) & np.uint64((1 << bits) - 1)).astype(np.uint8)
    return codes


def unpack_padded(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """compressed-tensors 0.17.x ``pack_to_int32`` for widths that do not divide 32:
    ``32 // bits`` fields per word at shifts ``bits*j``, high bits unused."""
    per = 32 // bits
    w = np.ascontiguousarray(words).view(np.uint32)
    shifts = np.arange(per, dtype=np.uint32) * bits
    fields = (w[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    codes: np.ndarray = fields.reshape(*w.shape[:-1], w.shape[-1] * per)[..., :count]
    return codes.astype(np.uint8)


def unpack_awq(words: np.ndarray, count: int) -> np.ndarray:
    """AWQ GEMM ``qweight``/``qzeros`` ``[rows, cols/8]`` -> ``[rows, cols]`` unsigned 4-bit
    codes in column order (nibble k of word w holds column ``8w + [0,2,4,6,1,3,5,7][k]``)."""
    nib = unpack_stream(words, 4, words.shape[-1] * 8)
    nib = nib.reshape(*nib.shape[:-1], -1, 8)[..., AWQ_REVERSE]
    codes: np.ndarray = nib.reshape(*nib.shape[:-2], -1)[..., :count]
    return codes


def group_index(columns: int, group_size: int) -> np.ndarray:
    return np.arange(columns) // group_size


def expand_groups(per_group: np.ndarray, g_idx: np.ndarray) -> np.ndarray:
    """``[O, G]`` per-group values -> ``[O, I]``: column c takes group ``g_idx[c]``."""
    return per_group[:, g_idx]


def expand_scales(s: np.ndarray, shape: tuple[int, ...],
                  block: tuple[int, int] | None) -> np.ndarray:
    """Per-tensor, per-row or per-block scales -> one per element of a ``[O, I]`` weight."""
    rows, cols = shape
    if block:
        return expand_blocks(s.reshape(-(-rows // block[0]), -(-cols // block[1])),
                             (rows, cols), block)
    if s.size == 1:
        return np.broadcast_to(s.reshape(1, 1), (rows, cols))
    return np.broadcast_to(s.reshape(rows, 1), (rows, cols))


def expand_blocks(per_block: np.ndarray, shape: tuple[int, int],
                  block: tuple[int, int]) -> np.ndarray:
    """``[ceil(O/bo), ceil(I/bi)]`` block values -> ``[O, I]`` (edge blocks partial)."""
    rows = np.arange(shape[0]) // block[0]
    cols = np.arange(shape[1]) // block[1]
    return per_block[rows[:, None], cols[None, :]]

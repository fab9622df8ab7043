"""One decoder per weight format: codes, scales, zero points and the producer's dequantization.

Each decoder reads its tensors from the memory-mapped shards only when asked, so loading a
checkpoint unpacks nothing. ``dequantize`` reproduces the producing library's arithmetic
and rounding order (sources cited per class; checked bit for bit against the libraries in
tests/loaders/hf and tests/support/libref.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qinspect.loaders.hf.container import TensorSet
from qinspect.quant import hfcodes as H

#: bitsandbytes int8 dequant constant (``int8_vectorwise_dequant``: 1/127 as float32)
BNB_INV_127 = np.float32(7.874015718698502e-3)


@dataclass
class Decoder:
    """Base: a weight of ``shape`` whose tensors are ``keys`` (role -> tensor name)."""

    ts: TensorSet
    keys: dict[str, str]
    shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)

    def raw(self, role: str) -> np.ndarray:
        return self.ts.raw(self.keys[role])

    def floats(self, role: str) -> np.ndarray:
        return self.ts.floats(self.keys[role])

    def dtype_of(self, role: str) -> str:
        return self.ts.tensors[self.keys[role]].dtype

    def codes(self) -> np.ndarray:
        """The stored codes (ints, or the element values of float formats), unpacked."""
        raise NotImplementedError

    def scales(self) -> np.ndarray:
        """The stored scales (one per channel, group or block), as floats."""
        raise NotImplementedError

    def zero_points(self) -> np.ndarray | None:
        return None

    def element_scales(self) -> np.ndarray:
        """The effective scale of every element, in the weight's logical shape."""
        raise NotImplementedError

    def element_zero_points(self) -> np.ndarray | None:
        """The effective zero point of every element (int formats with zero points)."""
        return None

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(code values, counts)`` over the whole weight from one streamed pass over its
        bytes, or None where codes do not sit in whole bytes or nibbles (then the caller
        unpacks). Code values are what ``codes()`` returns."""
        return None

    def _nibble_or_byte_counts(self, role: str, bits: int, fields: int) -> np.ndarray | None:
        """Counts of each unsigned field value when fields tile bytes exactly: 8-bit fields
        are bytes, 4-bit fields nibbles (their order inside a byte does not matter for a
        histogram). None when padding fields would be counted."""
        info = self.ts.tensors[self.keys[role]]
        if bits == 8 and info.nbytes == fields:
            return self.ts.byte_histogram(self.keys[role])
        if bits == 4 and info.nbytes * 2 == fields:
            b = self.ts.byte_histogram(self.keys[role]).reshape(16, 16)  # [high, low]
            return b.sum(axis=0) + b.sum(axis=1)
        return None

    # subclasses: codes(), scales(), dequantize(), element_scales()


# --- compressed-tensors --------------------------------------------------------------------


@dataclass
class CTInt(Decoder):
    """compressed-tensors int weights, packed (``pack-quantized``: ``weight_packed`` int32,
    signed codes stored ``+2^(b-1)``) or not (``int-quantized``/``naive``: int8 ``weight``).

    Dequantization (``quantization/lifecycle/forward_helpers.py _dequantize``):
    ``x = (q - zp) * scale`` in ``scale.dtype``, one rounding; column c of a group scheme
    uses group ``g_idx[c]`` (``weight_g_idx``) or ``c // group_size``.
    """

    def codes(self) -> np.ndarray:
        bits = self.params["bits"]
        if "packed" not in self.keys:
            return self.raw("weight").astype(np.int16)
        words = self.raw("packed")
        cols = self.shape[-1]
        unpack = H.unpack_padded if self.params.get("padded") else H.unpack_stream
        return unpack(words, bits, cols).astype(np.int16) - (1 << (bits - 1))

    def scales(self) -> np.ndarray:
        return self.floats("scale")

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        bits = self.params["bits"]
        n = int(np.prod(self.shape))
        if "packed" not in self.keys:
            counts = self._nibble_or_byte_counts("weight", 8, n)
            if counts is None:
                return None
            return np.arange(256).astype(np.int8).astype(np.int16), counts
        counts = self._nibble_or_byte_counts("packed", bits, n)
        if counts is None:
            return None
        return np.arange(counts.size, dtype=np.int16) - (1 << (bits - 1)), counts

    def zero_points(self) -> np.ndarray | None:
        if "zero_point" not in self.keys:
            return None
        raw = self.raw("zero_point")
        if self.dtype_of("zero_point") == "I32" and self.params.get("bits", 8) < 8 or (
                self.dtype_of("zero_point") == "I32" and raw.shape != self.scales().shape):
            bits = self.params["bits"]
            rows = self.scales().shape[0]
            unpack = H.unpack_padded if self.params.get("padded") else H.unpack_stream
            return (unpack(raw.T, bits, rows).T.astype(np.int16) - (1 << (bits - 1)))
        return raw.astype(np.int16).reshape(self.scales().shape)

    def column_groups(self) -> np.ndarray:
        cols = self.shape[-1]
        if "g_idx" in self.keys:
            return self.raw("g_idx").astype(np.int64)
        groups = self.scales().shape[-1]
        size = self.params.get("group_size") or -(-cols // max(groups, 1))
        return np.arange(cols) // size

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        rows, cols = self.shape[-2], self.shape[-1]
        if per_group.size == 1:
            return np.broadcast_to(per_group.reshape(1, 1), (rows, cols))
        per_group = per_group.reshape(rows, -1)
        if per_group.shape[1] == 1:
            return np.broadcast_to(per_group, (rows, cols))
        return H.expand_groups(per_group, self.column_groups())

    def element_scales(self) -> np.ndarray:
        return self.expand(self.scales())

    def element_zero_points(self) -> np.ndarray | None:
        zp = self.zero_points()
        return None if zp is None else self.expand(zp.astype(np.float32))

    def dequantize(self) -> np.ndarray:
        q = self.codes().astype(np.float32)
        zp = self.zero_points()
        if zp is not None:
            q = q - self.expand(zp.astype(np.float32))
        out = q * self.expand(self.scales())
        return H.round_to(H.round_to(out, self.dtype_of("scale")), self.params["out_dtype"])


@dataclass
class CTFloat(Decoder):
    """compressed-tensors ``float-quantized`` FP8: ``x = fp8 * scale`` in ``scale.dtype``
    (tensor, channel or 128x128 block scales; ``_process_block`` pads edge blocks)."""

    def codes(self) -> np.ndarray:
        return self.floats("weight")

    def scales(self) -> np.ndarray:
        return self.floats("scale")

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        return H.decode_float(np.arange(256, dtype=np.uint8), "F8_E4M3"), \
            self.ts.byte_histogram(self.keys["weight"])

    def element_scales(self) -> np.ndarray:
        return H.expand_scales(self.scales(), self.shape, self.params.get("block"))

    def dequantize(self) -> np.ndarray:
        out = self.codes() * self.element_scales()
        return H.round_to(H.round_to(out, self.dtype_of("scale")), self.params["out_dtype"])


@dataclass
class _FP4Groups(Decoder):
    """E2M1 codes with one effective scale per ``GROUP`` values along the last axis."""

    GROUP = 0

    def element_scales(self) -> np.ndarray:
        return np.repeat(self.scales(), self.GROUP, axis=-1)[..., :self.shape[-1]]

    def dequantize(self) -> np.ndarray:
        return H.round_to(self.codes() * self.element_scales(), self.params["out_dtype"])


@dataclass
class NVFP4(_FP4Groups):
    """NVFP4: two E2M1 codes per byte (low nibble = even column), an FP8 E4M3 scale per 16
    values and a float32 global scale.

    compressed-tensors divides (``scale.to(bf16) / weight_global_scale`` in float32, then
    ``fp4 * scale``, cast to the model dtype); ModelOpt multiplies
    (``NVFP4QTensor.dequantize``: ``fp4 * (weight_scale.float() * weight_scale_2)``).
    """

    GROUP = 16

    def table(self) -> np.ndarray:
        return H.E2M1_MODELOPT if self.params["global_op"] == "multiply" else H.E2M1

    def codes(self) -> np.ndarray:
        return self.table()[H.unpack_nibbles(self.raw("packed"), low_first=True)]

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self._nibble_or_byte_counts("packed", 4, int(np.prod(self.shape)))
        return None if counts is None else (self.table(), counts)

    def group_scales(self) -> np.ndarray:
        return self.floats("scale")

    def scales(self) -> np.ndarray:
        s = self.group_scales()
        g = self.floats("global_scale").reshape(())
        if self.params["global_op"] == "divide":
            return (s / g).astype(np.float32)
        return (s * g).astype(np.float32)


@dataclass
class MXFP4(_FP4Groups):
    """MX formats: E2M1 codes (low nibble first) with an E8M0 scale ``2^(e-127)`` per 32
    values (compressed-tensors ``mxfp4-pack-quantized``; gpt-oss ``*_blocks``/``*_scales``
    as transformers ``convert_moe_packed_tensors``), computed in bf16."""

    GROUP = 32

    def codes(self) -> np.ndarray:
        packed = self.raw("packed")
        if packed.ndim == 4:  # gpt-oss [E, O, I/32, 16]
            packed = packed.reshape(*packed.shape[:2], -1)
        return H.E2M1[H.unpack_nibbles(packed, low_first=True)]

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self._nibble_or_byte_counts("packed", 4, int(np.prod(self.shape)))
        return None if counts is None else (H.E2M1, counts)

    def scales(self) -> np.ndarray:
        e = self.raw("scale").astype(np.int32)
        return np.ldexp(np.float32(1), e - 127).astype(np.float32)


# --- GPTQ / AWQ ----------------------------------------------------------------------------


@dataclass
class GPTQ(Decoder):
    """GPTQ ``qweight`` ``[I*b/32, O]`` (packed along the input), ``qzeros`` ``[G, O*b/32]``,
    fp16 ``scales`` ``[G, O]``, ``g_idx`` ``[I]``; unsigned codes; v1 checkpoints store
    ``zero - 1`` (AutoGPTQ ``qlinear_cuda.py``: ``zeros -= 1`` before packing, ``+ 1`` in
    ``forward``). ``W^T[i,o] = fp16(scales[g_idx[i],o] * (q[i,o] - z[g_idx[i],o]))``."""

    def codes(self) -> np.ndarray:
        q = H.unpack_stream(self.raw("qweight").T, self.params["bits"], self.shape[1])
        return q.astype(np.int16)

    def scales(self) -> np.ndarray:
        return self.floats("scales")

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self._nibble_or_byte_counts("qweight", self.params["bits"],
                                             int(np.prod(self.shape)))
        return None if counts is None else (np.arange(counts.size, dtype=np.int16), counts)

    def stored_zeros(self) -> np.ndarray:
        return H.unpack_stream(self.raw("qzeros"), self.params["bits"], self.shape[0])

    def zero_points(self) -> np.ndarray:
        return self.stored_zeros().astype(np.int16) + self.params["zp_offset"]

    def column_groups(self) -> np.ndarray:
        if "g_idx" in self.keys:
            return self.raw("g_idx").astype(np.int64)
        return np.arange(self.shape[1]) // self.params["group_size"]

    def element_scales(self) -> np.ndarray:
        return self.scales()[self.column_groups()].T

    def element_zero_points(self) -> np.ndarray:
        return self.zero_points()[self.column_groups()].T.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        z = self.element_zero_points()  # [O, I]
        s = self.element_scales()
        return H.round_to((self.codes().astype(np.float32) - z) * s, self.dtype_of("scales"))


@dataclass
class AWQ(Decoder):
    """AutoAWQ GEMM: ``qweight`` ``[I, O/8]`` packed along the output in the order
    ``[0,2,4,6,1,3,5,7]``; ``qzeros`` ``[G, O/8]`` likewise, stored as is; fp16 ``scales``
    ``[G, O]``. ``dequantize_gemm``: ``W^T = (q - z[i//gs]) * s[i//gs]`` in fp16."""

    def codes(self) -> np.ndarray:
        return H.unpack_awq(self.raw("qweight"), self.shape[0]).T.astype(np.int16)

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self._nibble_or_byte_counts("qweight", 4, int(np.prod(self.shape)))
        return None if counts is None else (np.arange(16, dtype=np.int16), counts)

    def scales(self) -> np.ndarray:
        return self.floats("scales")

    def zero_points(self) -> np.ndarray:
        return H.unpack_awq(self.raw("qzeros"), self.shape[0]).astype(np.int16)

    def element_scales(self) -> np.ndarray:
        return self.scales()[np.arange(self.shape[1]) // self.params["group_size"]].T

    def element_zero_points(self) -> np.ndarray:
        g = np.arange(self.shape[1]) // self.params["group_size"]
        return self.zero_points()[g].T.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        z = self.element_zero_points()
        s = self.element_scales()
        return H.round_to((self.codes().astype(np.float32) - z) * s, self.dtype_of("scales"))


# --- bitsandbytes --------------------------------------------------------------------------


@dataclass
class BnB4(Decoder):
    """bitsandbytes 4-bit (NF4/FP4): the row-major flattened weight, two codes per byte
    (first element in the high nibble), one absmax per ``blocksize`` values (blocks may span
    rows). ``_dequantize_4bit_compute``: ``code[nib] * absmax[k // blocksize]`` in float32,
    then cast; double quantization first restores
    ``absmax = nested_quant_map[q] * nested_absmax[j // 256] + nested_offset``."""

    def codes(self) -> np.ndarray:
        data = self.raw("weight")
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        n = int(np.prod(self.shape))
        return H.unpack_nibbles(raw, low_first=False)[:n].reshape(self.shape)

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self._nibble_or_byte_counts("weight", 4, int(np.prod(self.shape)))
        return None if counts is None else (np.arange(16, dtype=np.int16), counts)

    def scales(self) -> np.ndarray:
        absmax = self.raw("absmax")
        if "nested_absmax" not in self.keys:
            return absmax.astype(np.float32)
        code2 = self.floats("nested_quant_map")
        nested = self.floats("nested_absmax")
        block2 = self.params["nested_blocksize"]
        j = np.arange(absmax.size) // block2
        restored = code2[absmax.astype(np.int64)] * nested[j]
        return (restored + np.float32(self.params["nested_offset"])).astype(np.float32)

    def element_scales(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        return self.scales()[np.arange(n) // self.params["blocksize"]].reshape(self.shape)

    def dequantize(self) -> np.ndarray:
        table = self.floats("quant_map")
        flat = self.codes().reshape(-1)
        absmax = self.scales()
        block = np.arange(flat.size) // self.params["blocksize"]
        out = (table[flat] * absmax[block]).astype(np.float32)
        return H.round_to(out, self.params["out_dtype"]).reshape(self.shape)


@dataclass
class BnB8(Decoder):
    """bitsandbytes LLM.int8: int8 ``weight`` (CB) and float32 ``SCB`` (row absmax);
    ``int8_vectorwise_dequant``: ``CB * SCB * (1/127)`` in float32, two roundings."""

    def codes(self) -> np.ndarray:
        return self.raw("weight").astype(np.int16)

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (np.arange(256).astype(np.int8).astype(np.int16),
                self.ts.byte_histogram(self.keys["weight"]))

    def scales(self) -> np.ndarray:
        return self.floats("SCB")

    def element_scales(self) -> np.ndarray:
        return np.broadcast_to((self.scales() * BNB_INV_127)[:, None], self.shape)

    def dequantize(self) -> np.ndarray:
        cb = self.raw("weight").astype(np.float32)
        return ((cb * self.scales()[:, None]).astype(np.float32) * BNB_INV_127).astype(
            np.float32)


# --- plain FP8 (transformers FineGrained FP8 / DeepSeek, AutoFP8, ModelOpt) ---------------


@dataclass
class FP8(Decoder):
    """FP8 E4M3 ``weight`` times a float32 scale: per tensor (``weight_scale``) or per
    128x128 block (``weight_scale_inv``, multiplied despite its name): transformers
    ``Fp8Dequantize`` computes ``fp8.float() * scale`` in float32. ModelOpt's
    ``FP8QTensor.dequantize`` computes ``fp8.to(dtype) * scale.to(dtype)`` in the model
    dtype, so its scale is rounded to that dtype first (``params["scale_in_dtype"]``)."""

    def codes(self) -> np.ndarray:
        return self.floats("weight")

    def scales(self) -> np.ndarray:
        return self.floats("scale")

    def code_histogram(self) -> tuple[np.ndarray, np.ndarray] | None:
        return H.decode_float(np.arange(256, dtype=np.uint8), "F8_E4M3"), \
            self.ts.byte_histogram(self.keys["weight"])

    def element_scales(self) -> np.ndarray:
        return H.expand_scales(self.scales(), self.shape, self.params.get("block"))

    def dequantize(self) -> np.ndarray:
        s = self.element_scales()
        if self.params.get("scale_in_dtype"):
            s = H.round_to(np.asarray(s, np.float32), self.params["out_dtype"])
        return H.round_to((self.codes() * s).astype(np.float32), self.params["out_dtype"])

"""Pure-numpy quantization math (no torch import): dtypes, (de)quantization, metrics.

The (de)quantization functions reproduce torch's CPU kernels bit for bit; see
:mod:`qinspect.quant.affine` for the exact formulas of each torch code path.
"""

from __future__ import annotations

from .affine import (
    dequantize_per_channel,
    dequantize_per_channel_decomposed,
    dequantize_per_channel_float_qparams,
    dequantize_per_tensor,
    dequantize_per_tensor_decomposed,
    fake_quantize_per_channel,
    fake_quantize_per_tensor,
    quantize_per_channel,
    quantize_per_channel_decomposed,
    quantize_per_channel_float_qparams,
    quantize_per_tensor,
    quantize_per_tensor_decomposed,
)
from .dtypes import QDTYPES, QDtype, activation_range, qdtype
from .metrics import (
    LsbError,
    PairStats,
    clipped_fraction,
    cosine_similarity,
    error_in_lsb,
    max_abs_error,
    mean_abs_error,
    pair_stats,
    saturated_fraction,
    sqnr_db,
)

__all__ = [
    "QDTYPES",
    "LsbError",
    "PairStats",
    "QDtype",
    "activation_range",
    "clipped_fraction",
    "cosine_similarity",
    "dequantize_per_channel",
    "dequantize_per_channel_decomposed",
    "dequantize_per_channel_float_qparams",
    "dequantize_per_tensor",
    "dequantize_per_tensor_decomposed",
    "error_in_lsb",
    "fake_quantize_per_channel",
    "fake_quantize_per_tensor",
    "max_abs_error",
    "mean_abs_error",
    "pair_stats",
    "qdtype",
    "quantize_per_channel",
    "quantize_per_channel_decomposed",
    "quantize_per_channel_float_qparams",
    "quantize_per_tensor",
    "quantize_per_tensor_decomposed",
    "saturated_fraction",
    "sqnr_db",
]

"""Checkpoint -> Summary: what `qinspect show` reports."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from qinspect.analyse.health import WeightHealth, weight_health
from qinspect.analyse.packed import PackedHealth, packed_health
from qinspect.model import Checkpoint, Layer, Mode, OpKind

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class LayerSummary:
    layer: Layer
    health: WeightHealth | None
    packed: PackedHealth | None = None


@dataclass(frozen=True)
class Summary:
    checkpoint: Checkpoint
    layers: tuple[LayerSummary, ...]
    quantized_layers: int
    float_layers: int
    fp32_equivalent_bytes: int
    hints: tuple[str, ...]

    @property
    def parameters(self) -> int:
        """Logical parameter count: weights, biases and loose float parameters, packed
        elements counted as the values they hold."""
        return self.fp32_equivalent_bytes // FLOAT32_BYTES

    @property
    def compression_ratio(self) -> float:
        size = self.checkpoint.file_size
        return self.fp32_equivalent_bytes / size if size else float("nan")


def summarise(checkpoint: Checkpoint, layer_glob: str | None = None) -> Summary:
    """Health, counts, sizes and engine hints; ``layer_glob`` filters the listed layers."""
    all_layers = checkpoint.layers
    listed = [lay for lay in all_layers if _matches(lay.name, layer_glob)]
    rows = tuple(LayerSummary(lay, _health(lay), packed_health(lay)) for lay in listed)
    weighted = [lay for lay in all_layers if lay.weight is not None or lay.packed is not None]
    quantized = sum(1 for lay in weighted if lay.mode is not Mode.FLOAT)
    return Summary(
        checkpoint=checkpoint,
        layers=rows,
        quantized_layers=quantized,
        float_layers=len(weighted) - quantized,
        fp32_equivalent_bytes=_fp32_bytes(all_layers),
        hints=engine_hints(all_layers),
    )


def _matches(name: str, pattern: str | None) -> bool:
    return pattern is None or fnmatch.fnmatchcase(name, pattern)


def _health(layer: Layer) -> WeightHealth | None:
    return weight_health(layer.weight) if layer.weight is not None else None


def _fp32_bytes(layers: tuple[Layer, ...]) -> int:
    """Bytes the weights and biases would take as float32."""
    total = 0
    for layer in layers:
        if layer.weight is not None:
            total += int(np.prod(layer.weight.shape, dtype=np.int64)) * FLOAT32_BYTES
        if layer.packed is not None:
            total += layer.packed.numel * FLOAT32_BYTES
        if layer.op is OpKind.PARAMETERS:  # loose float parameters (attention sinks...)
            total += sum(int(v.size) for v in layer.extras.values()) * FLOAT32_BYTES
        if layer.bias is not None:
            total += int(layer.bias.size) * FLOAT32_BYTES
    return total


def engine_hints(layers: tuple[Layer, ...]) -> tuple[str, ...]:
    """What the stored quantization says about the engine and qconfig used."""
    quants = [lay.weight.quant for lay in layers
              if lay.weight is not None and lay.weight.is_quantized and lay.weight.quant
              and lay.mode is Mode.STATIC]
    hints: list[str] = []
    if quants and not any(q.dtype.startswith("q") for q in quants):
        # plain int tensors + separate qparams: PT2E or torchao, not a torch.ao qconfig
        ranges = {(q.quant_min, q.quant_max) for q in quants if q.quant_min is not None}
        if ranges == {(-127, 127)}:
            hints.append("weights in -127..127: a symmetric quantizer (XNNPACK's "
                         "get_symmetric_quantization_config)")
        elif ranges == {(-128, 127)}:
            hints.append("weights in -128..127: e.g. the X86Inductor quantizer")
        quants = []
    per_channel = sum(1 for q in quants if q.axis is not None)
    if quants and per_channel == len(quants):
        hints.append("per-channel int8 weights: the fbgemm or x86 default qconfig (the two "
                     "give identical files)")
    elif quants and per_channel == 0:
        hints.append("per-tensor weights: the qnnpack default qconfig, or a per-tensor one")
    elif quants:
        hints.append(f"mixed weight schemes: {per_channel} per-channel, "
                     f"{len(quants) - per_channel} per-tensor layers")
    symmetric = [q for q in quants if q.axis is not None and not np.any(q.zero_point)]
    if symmetric and len(symmetric) == per_channel:
        hints.append("all weight zero points are 0: symmetric weights (torch still reports "
                     "per_channel_affine)")
    modes = {lay.mode for lay in layers}
    if Mode.DYNAMIC in modes:
        hints.append("dynamic layers: activations are quantized per batch at run time, "
                     "so no activation qparams are stored for them")
    return tuple(hints)

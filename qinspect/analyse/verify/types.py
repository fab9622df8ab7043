"""The shared types of ``verify``: options, input kinds, rows, the report (no torch).

Every runner (:mod:`qinspect.analyse.verify.runner`) returns a :class:`VerifyReport` made of
:class:`LayerVerify` rows; the renderers and ``check`` read only these frozen dataclasses.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from qinspect.errors import InputError
from qinspect.model import Mode

if TYPE_CHECKING:
    import numpy as np

Progress = Callable[[str, int, int], None]
"""``progress(what, done, total)``: called as work advances (the CLI draws a bar)."""

OPTION_FLAGS = {"input": "--input", "reference": "--reference", "model": "--model",
                "engine": "--engine", "layer_glob": "--layer", "seed": "--seed",
                "batch": "--batch"}
"""Every option of ``verify``, by field of :class:`Options`, with its command-line flag."""

ACT_DTYPE = "quint8"
QMIN, QMAX = 0, 255
CLIP_MARGIN_LSB = 0.5


@dataclass(frozen=True)
class Options:
    """What the user asked ``verify`` for; ``None`` is "not given" (every runner either
    honours a given option or refuses it with a reason, never ignores it)."""

    input: str | None = None
    reference: str | None = None
    model: str | None = None
    engine: str | None = None
    layer_glob: str | None = None
    seed: int | None = None
    batch: int | None = None

    @classmethod
    def of(cls, **values: object) -> Options:
        """Paths made strings; a ``batch`` that is not a positive integer refused."""
        clean = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in values.items()}
        batch = clean.get("batch")
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise InputError(f"--batch {batch!r}: pass a positive number of samples")
        return cls(**clean)  # type: ignore[arg-type]

    def given(self) -> tuple[str, ...]:
        """The fields the user set."""
        return tuple(k for k in OPTION_FLAGS if getattr(self, k) is not None)


class InputKind(str, Enum):
    """Where a layer's input came from."""

    USER = "user"
    """The user's ``--input``, quantized with the input qparams (QuantStub's)."""
    CHAINED = "chained"
    """The previous layer's integer output: an assumed chain (a state_dict has no graph)."""
    SYNTHETIC = "synthetic"
    """Isolated, synthetic input drawn from the layer's input range."""
    MODEL = "model"
    """The quantization of the float model's real input to this layer (``--model``)."""


@dataclass(frozen=True)
class KernelAgreement:
    """torch's kernel against qinspect's reference on the same input."""

    engine: str
    arithmetic: str
    op: str
    elements: int
    mismatches: int
    max_diff: float
    unit: str
    """``"LSB"`` (integer outputs) or ``"abs"`` (float outputs of dynamic layers)."""
    int16_pairs: bool = False
    """On this CPU the kernel adds byte-product pairs in int16 with saturation (fbgemm
    without AVX512-VNNI, oneDNN capped below VNNI, torchao's u8s8 path there) and the
    reference did the same: a fact about the machine, not the file."""

    @property
    def recipe(self) -> str:
        """``arithmetic`` with the machine's int16 pairs, as JSON reports it."""
        return self.arithmetic + (", int16 pairs" if self.int16_pairs else "")

    @property
    def agree(self) -> bool:
        return self.mismatches == 0

    @property
    def agreement(self) -> float:
        return 1.0 - self.mismatches / self.elements if self.elements else 1.0


@dataclass(frozen=True)
class LayerVerify:
    """One quantized layer, verified (or the reason it could not be)."""

    name: str
    kind: str
    mode: str
    verified: bool
    reason: str | None = None
    input_kind: InputKind | None = None
    input_text: str = ""
    input_shape: tuple[int, ...] = ()
    input_scale: float | None = None
    input_zero_point: int | None = None
    input_clipped: float | None = None
    input_sqnr_db: float | None = None
    output_scale: float | None = None
    output_zero_point: int | None = None
    float_domain: str = ""
    relu: bool = False
    elements: int = 0
    sqnr_db: float | None = None
    max_error_lsb: float | None = None
    mean_error_lsb: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    clipped_low: float | None = None
    clipped_high: float | None = None
    kernel: KernelAgreement | None = None
    notes: tuple[str, ...] = ()

    @property
    def clipped(self) -> float | None:
        if self.clipped_low is None or self.clipped_high is None:
            return None
        return self.clipped_low + self.clipped_high


@dataclass(frozen=True)
class ChainOutput:
    """The last output of an assumed chain (file mode), as the kernels computed it."""

    layer: str
    values: np.ndarray
    """float32: dequantized for static layers (``f32(scale) * (q - zp)``, as DeQuantStub)."""
    q: np.ndarray | None = None
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class EndToEnd:
    """The quantized model's output against the float model's (``--model``)."""

    sqnr_db: float
    max_abs_error: float
    elements: int
    outputs: int
    top1_agreement: float | None = None
    """Language models: fraction of positions whose most likely next token is the same."""
    mean_kl: float | None = None
    """Language models: mean KL(float || quantized) of the next-token distributions, nats."""
    positions: int | None = None
    """Language models: token positions compared."""
    library: str | None = None
    """The producing library's own reload of the quantized model, where it ran."""
    library_sqnr_db: float | None = None
    """Its logits against qinspect's quantized model's (SQNR: how closely they agree)."""
    library_max_abs_diff: float | None = None


@dataclass(frozen=True)
class VerifyReport:
    path: str
    mode: str
    """``"file"`` (the checkpoint alone, no graph), ``"model"`` (``--model``) or ``"graph"``
    (the file's own graph run whole)."""
    engine: str
    engine_reason: str
    input_text: str
    layers: tuple[LayerVerify, ...]
    reference: str | None = None
    model: str | None = None
    seed: int | None = None
    batch: int | None = None
    float_domain: str = ""
    runner: str = ""
    """The runner that produced the report (:data:`qinspect.analyse.verify.runner.RUNNERS`)."""
    scope: str = ""
    """First, in one plain line: what this run could check and what it could not."""
    chain: tuple[str, ...] = ()
    chain_note: str | None = None
    chain_output: ChainOutput | None = None
    end_to_end: EndToEnd | None = None
    notes: tuple[str, ...] = ()

    @property
    def verified(self) -> tuple[LayerVerify, ...]:
        return tuple(r for r in self.layers if r.verified)

    @property
    def ranked(self) -> tuple[LayerVerify, ...]:
        """Verified layers, the one that loses most first (layers on real inputs before
        layers on synthetic ones); then the layers that could not be verified."""
        def key(r: LayerVerify) -> tuple[int, float, float]:
            sqnr = r.sqnr_db if r.sqnr_db is not None and not math.isnan(r.sqnr_db) else -1e9
            return (int(r.input_kind is InputKind.SYNTHETIC), sqnr, -(r.clipped or 0.0))
        done = sorted(self.verified, key=key)
        return tuple(done) + tuple(r for r in self.layers if not r.verified)

    @property
    def worst(self) -> LayerVerify | None:
        """The layer that loses most on real data; rows on synthetic input never make a
        headline (their SQNR and clipping are a stress case of the arithmetic)."""
        ranked = [r for r in self.ranked if r.verified and r.sqnr_db is not None
                  and r.input_kind is not InputKind.SYNTHETIC]
        return ranked[0] if ranked else None

    @property
    def kernel_mismatches(self) -> int:
        return sum(r.kernel.mismatches for r in self.layers if r.kernel is not None)

    def explanation(self) -> str | None:
        """One line on what the worst numbers mean."""
        w = self.worst
        return explain_worst(w) if w is not None else None


def keep_layers(report: VerifyReport, layer_glob: str | None) -> VerifyReport:
    """The report's rows whose name matches ``--layer``; an InputError if none does."""
    if layer_glob is None:
        return report
    kept = tuple(r for r in report.layers if fnmatch.fnmatchcase(r.name, layer_glob))
    if not kept:
        names = ", ".join(r.name for r in report.layers[:8])
        raise InputError(f"--layer {layer_glob!r} matches no quantized layer; layers: "
                         f"{names}")
    return replace(report, layers=kept)



# --- explanation -------------------------------------------------------------------------


def explain_worst(r: LayerVerify) -> str:
    """What the worst layer's numbers mean, in one line."""
    sqnr = r.sqnr_db
    bits = f"~{sqnr / 6.02:.1f} bits" if sqnr is not None and math.isfinite(sqnr) else ""
    head = f"{r.name} loses most: SQNR {fmt_db(sqnr)}" + (f" ({bits} of precision)"
                                                           if bits else "")
    tail = ""
    if r.input_kind is InputKind.SYNTHETIC:
        tail = " (on synthetic input: a stress test of the arithmetic, not evidence from real data)"
    elif r.input_kind is InputKind.CHAINED:
        tail = (" (on an assumed chain: if the real model runs a ReLU or another op before this "
                "layer, its real input differs; --model gives the real one)")
    clipped = r.clipped or 0.0
    if clipped >= 0.001 and r.output_scale is not None:
        lo = (QMIN - (r.output_zero_point or 0)) * r.output_scale
        hi = (QMAX - (r.output_zero_point or 0)) * r.output_scale
        side = "top" if (r.clipped_high or 0) >= (r.clipped_low or 0) else "bottom"
        return (f"{head}; {100 * clipped:.1f} % of its outputs fall outside its output range "
                f"[{lo:.4g}, {hi:.4g}] and clip at the {side}: the range was calibrated too "
                f"narrow for this input (recalibrate on representative data){tail}")
    if r.max_error_lsb is not None and r.max_error_lsb > 1.0:
        if clipped > 0:
            why = (f"the {100 * clipped:.2g} % of outputs beyond its output range clip "
                   "(a few outliers: the range is slightly narrow)")
        elif "dequantized" not in r.float_domain:
            why = ("the weights' quantization error (against the float reference) adds to "
                   "the output rounding")
        else:
            why = "more than output rounding with dequantized weights: look at this layer"
        return f"{head}; errors reach {r.max_error_lsb:.1f} output LSB: {why}{tail}"
    if r.max_error_lsb is not None:
        return (f"{head}; errors stay near output rounding ({r.max_error_lsb:.2f} LSB max, "
                f"0.5 is rounding alone): the output scale (resolution) is what limits it{tail}")
    if r.mode == Mode.WEIGHT_ONLY.value:  # torchao weight-only: the input is not quantized
        why = ("float rounding only: with dequantized weights a weight-only layer has no "
               "quantization error to show (--reference FP32.pt measures the weights')"
               if "dequantized" in r.float_domain else "the weights' quantization error")
        return (f"{head}; its float output differs by up to {r.max_abs_error:.3g} from the "
                f"float domain: {why}{tail}")
    if r.mode == Mode.STATIC.value and r.input_scale is not None:  # a stored input scale
        clip = f", {100 * r.input_clipped:.2g} % of inputs clipped" if r.input_clipped else ""
        return (f"{head}; its float output differs by up to {r.max_abs_error:.3g} from the "
                f"float domain: the input's rounding to its static scale{clip}{tail}")
    return (f"{head}; its float output differs by up to {r.max_abs_error:.3g} from the float "
            f"domain: the rounding of the input by dynamic quantization{tail}")


def fmt_db(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf dB" if x > 0 else "-inf dB"
    if math.isnan(x):
        return "NaN dB"
    return f"{x:.1f} dB"


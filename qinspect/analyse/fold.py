"""BatchNorm folding as eager ``fuse_modules`` does it, and the eps it used.

``fuse_modules`` (eval mode) folds a BatchNorm into the conv or Linear before it
(``torch.nn.utils.fusion.fuse_conv_bn_weights`` / ``fuse_linear_bn_weights``)::

    r      = rsqrt(running_var + eps)                  # float32
    conv:    w' = w * (gamma * r)[c]          b' = ((b - running_mean) * r) * gamma + beta
    linear:  w' = w * (gamma * r)[c]          b' = (b - running_mean) * (gamma * r) + beta

:func:`fold_batchnorm` evaluates these in float32 in torch's order, so the folded
tensors equal torch's bit for bit. A state_dict does not store BatchNorm's ``eps``;
:func:`infer_eps` finds it from the other file: the folded bias is stored in float,
so the right eps reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qinspect.model import Layer, OpKind

DEFAULT_EPS = 1e-5
"""torch's BatchNorm default."""
EPS_CANDIDATES = (1e-5, 1e-3, 1e-4, 1e-6, 1e-2, 1e-1)
"""Tried in this order: torch's default first, then 1e-3 (models ported from
TensorFlow/Keras, e.g. torchvision's EfficientNet and MNASNet), then other powers of 10."""
BIAS_MATCH_ULPS = 4
"""A folded bias 'matches' the stored one within this many float32 ulps per channel."""
ESTIMATE_RTOL = 1e-4
"""An eps estimated from the biases is accepted when it reproduces them this closely."""
MIN_WEIGHT_GAIN_DB = 0.01
"""Without a bias to go by, another eps must improve weight SQNR by this much."""

WeightScore = Callable[[np.ndarray], float]
"""Folded float weight -> its SQNR in dB against the other file's weight."""


@dataclass(frozen=True)
class BatchNorm:
    """The tensors of one BatchNorm module, as float32 arrays of length C."""

    name: str
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.mean.size)


@dataclass(frozen=True)
class EpsChoice:
    """Which eps a fold used and why.

    ``source``: ``"bias"`` (a candidate reproduced the stored folded bias),
    ``"bias-estimate"`` (no usual value did; the biases point to ``eps``),
    ``"weight"`` (no stored bias; the eps with the best weight SQNR),
    ``"default"`` (nothing to go by, or nothing fitted: torch's 1e-5).
    ``matched``: the folded bias equals the stored one to float32 precision
    (or, for ``"weight"``/``"default"``, nothing could be checked: ``False``).
    """

    eps: float
    source: str
    matched: bool
    message: str


def batchnorm_of(layer: Layer) -> BatchNorm | None:
    """The BatchNorm tensors of a loaded layer, or ``None`` if it is not a usable BatchNorm."""
    mean = layer.extras.get("running_mean")
    var = layer.extras.get("running_var")
    if layer.op is not OpKind.BATCH_NORM or mean is None or var is None:
        return None
    n = mean.size
    gamma = layer.weight.values if layer.weight is not None else np.ones(n, np.float32)
    beta = layer.bias if layer.bias is not None else np.zeros(n, np.float32)
    arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in (gamma, beta, mean, var)]
    if any(a.size != n for a in arrays):
        return None
    return BatchNorm(layer.name, *arrays)


def fold_batchnorm(
    weight: np.ndarray, bias: np.ndarray | None, bn: BatchNorm, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``bn`` into a conv (weight rank >= 3) or Linear (rank 2) weight, like torch.

    The output channels are axis 0 (ConvTranspose, whose output channels are axis 1,
    is not folded here). Returns float32 ``(weight, bias)``.
    """
    w = np.asarray(weight, dtype=np.float32)
    b = np.zeros(bn.channels, np.float32) if bias is None else np.asarray(bias, np.float32)
    r = np.float32(1.0) / np.sqrt(bn.var + np.float32(eps))
    shape = (-1,) + (1,) * (w.ndim - 1)
    if w.ndim == 2:
        factor = bn.gamma * r
        return w * factor.reshape(shape), (b - bn.mean) * factor + bn.beta
    return w * (bn.gamma * r).reshape(shape), ((b - bn.mean) * r) * bn.gamma + bn.beta


def foldable(weight_shape: tuple[int, ...], bn: BatchNorm) -> bool:
    """Whether ``bn`` can fold into a weight of this shape (output channels on axis 0)."""
    return len(weight_shape) >= 2 and weight_shape[0] == bn.channels


def infer_eps(
    weight: np.ndarray,
    bias: np.ndarray | None,
    bn: BatchNorm,
    stored_bias: np.ndarray | None,
    weight_sqnr: WeightScore | None = None,
) -> EpsChoice:
    """The eps that folding ``bn`` into ``(weight, bias)`` used, judged by the other file.

    With ``stored_bias`` (the folded bias as the other file stores it, in float), the
    first candidate that reproduces it to float32 precision wins; if none does, the
    biases are solved for eps. Without it, ``weight_sqnr(folded_weight)`` ranks the
    candidates.
    """
    if stored_bias is not None and np.asarray(stored_bias).size == bn.channels:
        target = np.asarray(stored_bias, dtype=np.float32).reshape(-1)
        for eps in EPS_CANDIDATES:
            if _bias_matches(fold_batchnorm(weight, bias, bn, eps)[1], target):
                how = "torch's default" if eps == DEFAULT_EPS else "not torch's default 1e-5"
                return EpsChoice(eps, "bias", True, f"eps {eps:g} ({how}): the folded biases "
                                 "equal the stored ones to float32 precision")
        return _estimate(weight, bias, bn, target, weight_sqnr)
    return _by_weight(weight, bias, bn, weight_sqnr)


def _bias_matches(folded: np.ndarray, target: np.ndarray) -> bool:
    if not (np.all(np.isfinite(folded)) and np.all(np.isfinite(target))):
        return bool(np.array_equal(folded, target, equal_nan=True))
    tol = BIAS_MATCH_ULPS * np.spacing(np.maximum(np.abs(folded), np.abs(target)))
    return bool(np.all(np.abs(folded - target) <= tol))


def _estimate(weight: np.ndarray, bias: np.ndarray | None, bn: BatchNorm, target: np.ndarray,
              weight_sqnr: WeightScore | None) -> EpsChoice:
    """Solve ``target = (b - mean) * gamma / sqrt(var + eps) + beta`` for eps, per channel."""
    b = np.zeros(bn.channels) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    lever = (b - bn.mean.astype(np.float64)) * bn.gamma.astype(np.float64)
    shift = target.astype(np.float64) - bn.beta.astype(np.float64)
    usable = (np.abs(lever) > 1e-6 * max(float(np.max(np.abs(lever), initial=0.0)), 1e-30)) \
        & (np.abs(shift) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_channel = (lever[usable] / shift[usable]) ** 2 - bn.var[usable].astype(np.float64)
    per_channel = per_channel[np.isfinite(per_channel)]
    if per_channel.size:
        eps = float(np.median(per_channel))
        if eps > 0:
            folded = fold_batchnorm(weight, bias, bn, eps)[1].astype(np.float64)
            scale = max(float(np.max(np.abs(target))), 1e-30)
            if float(np.max(np.abs(folded - target))) <= ESTIMATE_RTOL * scale:
                return EpsChoice(eps, "bias-estimate", False, (
                    f"the stored biases point to eps ~ {eps:.3g}, none of the usual values "
                    f"({', '.join(f'{c:g}' for c in EPS_CANDIDATES)}); folded with {eps:.3g}"))
    fallback = _by_weight(weight, bias, bn, weight_sqnr)
    return EpsChoice(fallback.eps, fallback.source, False, (
        "no eps reproduces the stored biases: this BatchNorm may not be the one folded into "
        f"the other file's layer; {fallback.message}"))


def _by_weight(weight: np.ndarray, bias: np.ndarray | None, bn: BatchNorm,
               weight_sqnr: WeightScore | None) -> EpsChoice:
    if weight_sqnr is None:
        return EpsChoice(DEFAULT_EPS, "default", False,
                         f"eps {DEFAULT_EPS:g} assumed (torch's default; nothing to infer it from)")
    scores = [(weight_sqnr(fold_batchnorm(weight, bias, bn, eps)[0]), eps)
              for eps in EPS_CANDIDATES]
    default_score = scores[0][0]
    best_score, best_eps = max(scores, key=lambda se: _finite_or_low(se[0]))
    gain = _finite_or_low(best_score) - _finite_or_low(default_score)
    if best_eps != DEFAULT_EPS and gain >= MIN_WEIGHT_GAIN_DB:
        return EpsChoice(best_eps, "weight", False, (
            f"eps {best_eps:g}: gives the best weight SQNR ({best_score:.1f} dB against "
            f"{default_score:.1f} dB with torch's default 1e-5); no bias to confirm it"))
    return EpsChoice(DEFAULT_EPS, "default", False,
                     f"eps {DEFAULT_EPS:g} assumed (torch's default; the weights do not "
                     "distinguish it from other values and no bias was stored)")


def _finite_or_low(x: float) -> float:
    """NaN ranks below everything; +inf (an exact match) above everything."""
    return -np.inf if np.isnan(x) else x

"""The catalogue of ``qinspect check`` rules, as data: id, name, severity, group, text.

Pure data (no numpy, no torch): the config validates ``ignore`` lists against it, the
reports and docs list it, and :mod:`qinspect.gate.rules` registers one check function
per id (a test asserts that every rule has exactly one). Ids are stable: ``QI0xx``
always on, ``QI1xx`` configurable, ``QI2xx`` need ``--reference``, ``QI3xx`` need
``--input``, ``QI4xx`` need ``--baseline``.

Adding a rule is two local edits: a row in :data:`RULES` below, and a function in
``rules.py`` decorated with ``@layer_rule("QI0xx")`` (called per layer) or
``@file_rule("QI0xx")`` (called once per file).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from qinspect.errors import InputError


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


class Group(str, Enum):
    """What a rule needs: ``always``/``config`` run on the file alone; the others need
    ``--reference``, ``--input`` or ``--baseline``."""

    ALWAYS = "always"
    CONFIG = "config"
    REFERENCE = "reference"
    INPUT = "input"
    BASELINE = "baseline"


@dataclass(frozen=True)
class Rule:
    """One rule: its stable id and name, default severity, group and texts."""

    id: str
    name: str
    severity: Severity
    group: Group
    description: str
    hint: str

    @property
    def label(self) -> str:
        return f"{self.id} {self.name}"


# --- the catalogue ----------------------------------------------------------------------

E, W = Severity.ERROR, Severity.WARNING

RULES: tuple[Rule, ...] = (
    Rule("QI001", "scale-finite", E, Group.ALWAYS,
         "weight and activation scales are finite, > 0 and invertible in float32",
         "a NaN/inf/zero/negative scale makes every dequantized value wrong; re-run "
         "calibration or fix the export that wrote it"),
    Rule("QI002", "zero-point-range", E, Group.ALWAYS,
         "zero points lie inside the dtype's integer range",
         "an out-of-range zero point cannot come from a torch observer: the file was edited "
         "or written by a broken exporter"),
    Rule("QI003", "keys-attributed", W, Group.ALWAYS,
         "every key of the file is attributed to a layer",
         "run `qinspect show` to see the key; set unrecognised_keys = \"error\" to make this "
         "fail the check, or ignore it for that key in an override"),
    Rule("QI004", "calibrated", E, Group.ALWAYS,
         "no static layer keeps torch's initial qparams (scale 1.0, zero point 0) or an "
         "observer that never saw data (min/max still +inf/-inf)",
         "run calibration data through every quantized module before convert (a module not "
         "used in forward() is never calibrated); a FloatFunctional/QFunctional at 1.0/0 "
         "only warns: it may simply be unused"),
    Rule("QI005", "loadable", E, Group.ALWAYS,
         "every recognised layer has each key torch's own module reads when loading "
         "(its _load_from_state_dict): load_state_dict(strict=True) fails without it",
         "the export dropped or renamed keys: save model.state_dict() of the converted "
         "model unchanged; `qinspect show` says what the layer has"),
    # Hugging Face safetensors checkpoints (issue 11); see qinspect/gate/hf_rules.py
    Rule("QI010", "packed-scales", E, Group.ALWAYS,
         "the scales of packed weights (per group, channel, block) are finite and > 0",
         "a module that was never calibrated exports uninitialised scales (compressed-tensors "
         "#832: NaN scales pack to normal-looking 0x88888888 words); re-run calibration"),
    Rule("QI011", "global-scales", E, Group.ALWAYS,
         "NVFP4 global scales (weight and input) are finite and non-zero",
         "an expert that saw no calibration tokens stores 0, which inverts to infinity "
         "(TensorRT-LLM #16447); calibrate every expert or fall back to the layer's max"),
    Rule("QI012", "config-vs-tensors", E, Group.ALWAYS,
         "every Linear the quantization config targets is stored quantized, and no module "
         "the config ignores is",
         "a targeted module stored in float loads with NaN scales (vLLM #52501); fix the "
         "config's ignore list or re-export the module"),
    Rule("QI013", "packed-shapes", E, Group.ALWAYS,
         "packed codes and scales have the shapes the bits, group size and block size imply",
         "a truncated or mis-sized scale tensor (ModelOpt #2038) dequantizes garbage; "
         "re-export the checkpoint"),
    Rule("QI014", "gptq-v1-zero-overflow", E, Group.ALWAYS,
         "no GPTQ v1 zero point carries the -1 overflow signature",
         "an asymmetric zero point 0 stored as -1 overwrote the rest of its int32 word "
         "(AutoGPTQ #293, GPTQModel #2350); re-export with checkpoint_format gptq_v2"),
    Rule("QI015", "g-idx", E, Group.ALWAYS,
         "act-order group indices lie in range, fill each group, and are monotonic unless "
         "act-order is on",
         "an out-of-range g_idx makes kernels read outside the scales (vLLM #47255); "
         "re-export the checkpoint"),
    Rule("QI016", "input-scale-calibrated", E, Group.ALWAYS,
         "static input scales are finite, > 0 and not exactly 1.0 (the uncalibrated value)",
         "run calibration data through the model before export"),
    Rule("QI017", "qkv-input-scales", W, Group.ALWAYS,
         "the q/k/v projections of one attention block have equal static input scales",
         "they quantize the same input and fused kernels use the largest; calibrate them "
         "together (llm-compressor does) or accept the extra clipping headroom"),
    Rule("QI018", "bnb-weight-format", E, Group.ALWAYS,
         "bitsandbytes int8 weights are row-major (weight_format 0)",
         "other layouts are GPU tiles that bitsandbytes >= 0.45 cannot load; re-save on a "
         "current bitsandbytes"),
    Rule("QI100", "quantized", E, Group.CONFIG,
         "layers matched by require_quantized (and not allow_float) are quantized",
         "give the module a qconfig before prepare/convert, or list it in allow_float"),
    Rule("QI101", "per-channel", E, Group.CONFIG,
         "quantized weights are per-channel (require_per_channel)",
         "use a per-channel weight observer (the fbgemm/x86 default qconfig), or override "
         "require_per_channel for layers torch only quantizes per-tensor (ConvTranspose)"),
    Rule("QI102", "weight-dtype", E, Group.CONFIG,
         "quantized weights use one of weight_dtypes",
         "change the weight observer's dtype in the qconfig"),
    Rule("QI103", "activation-dtype", E, Group.CONFIG,
         "output activations use one of activation_dtypes",
         "change the activation observer's dtype in the qconfig"),
    Rule("QI104", "weight-saturation", E, Group.CONFIG,
         "at most max_saturated_fraction of a weight's ints sit at qmin/qmax",
         "the weight range is clipped: use a min/max (not percentile) weight observer, or "
         "per-channel weights"),
    Rule("QI105", "range-used", E, Group.CONFIG,
         "each quantized weight uses at least min_range_used of its integer range",
         "the weight scale is too large for the values (outliers or a stale scale): "
         "recalibrate, or use per-channel weights"),
    Rule("QI200", "weight-sqnr", E, Group.REFERENCE,
         "per-layer weight SQNR against the float reference is at least min_weight_sqnr_db",
         "run `qinspect diff` on the two files to see the layer; check its scale and scheme"),
    Rule("QI201", "weight-sqnr-overall", E, Group.REFERENCE,
         "weight SQNR over the whole model is at least min_overall_weight_sqnr_db",
         "run `qinspect diff` to find the layers that pull it down"),
    Rule("QI300", "output-sqnr", E, Group.INPUT,
         "per-layer output SQNR on the input is at least min_output_sqnr_db (layers verify "
         "fed synthetic inputs are not gated)",
         "run `qinspect verify` on the input to see where the error comes from"),
    Rule("QI301", "output-clipping", E, Group.INPUT,
         "at most max_clipping_fraction of a layer's outputs clip at its output range",
         "the output range is too narrow for this input: calibrate on representative data"),
    Rule("QI302", "kernel-agreement", E, Group.INPUT,
         "torch's quantized kernel and qinspect's reference agree on at least "
         "min_kernel_agreement of the outputs",
         "a disagreement means the engine computes something else than the file says: "
         "report it with `qinspect verify` output"),
    Rule("QI303", "verified", W, Group.INPUT,
         "every quantized layer could be run on the input",
         "the layer's SQNR, clipping and kernel agreement are unknown; see `qinspect verify`"),
    Rule("QI400", "sqnr-regression", E, Group.BASELINE,
         "no layer's SQNR dropped more than max_sqnr_drop_db since the baseline report",
         "compare the two exports with `qinspect diff`; if the drop is intended, regenerate "
         "the baseline with --format json"),
    Rule("QI401", "layer-missing", E, Group.BASELINE,
         "every layer of the baseline report still exists",
         "a renamed or removed module; if intended, regenerate the baseline"),
    Rule("QI402", "still-quantized", E, Group.BASELINE,
         "layers quantized in the baseline are still quantized",
         "the module lost its qconfig; if intended, regenerate the baseline"),
)


def rule_by_ref(ref: str, where: str = "rule") -> Rule:
    """Look a rule up by id (``QI001``) or name (``scale-finite``)."""
    for rule in RULES:
        if ref.upper() == rule.id or ref == rule.name:
            return rule
    known = ", ".join(f"{r.id}/{r.name}" for r in RULES)
    raise InputError(f"{where}: unknown rule {ref!r}; known rules: {known}")

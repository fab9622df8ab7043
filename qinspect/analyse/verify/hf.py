"""``verify`` for Hugging Face quantized LLM checkpoints (compressed-tensors, GPTQ, AWQ,
bitsandbytes, FP8, ModelOpt, MXFP4): every quantized Linear re-run on the float model's real
activations, and the end-to-end cost in logits.

With ``--input TOKENS.npy`` and ``transformers`` installed (``pip install 'qinspect[hf]'``),
the float model is built from ``config.json`` (:mod:`.hfmodel`), with the weights of
``--reference BASE_DIR`` or, without it, the checkpoint's dequantized weights; hooks capture
each Linear's real input. Per quantized Linear, on that input:

1. **float domain**: the float weights and the float input, in float64;
2. **reference** (qinspect, numpy): the producer-exact dequantized weights and the input
   quantized as the scheme does it (:mod:`.hfact`): exact integer accumulation for W8A8 int
   with per-channel int8 weights, float64 otherwise;
3. **kernel**: compressed-tensors' own CPU forward where the checkpoint is compressed-tensors
   and the library is installed (its ``decompress`` of the module's tensors, its dynamic /
   static activation fake-quantization, ``F.linear`` in float32), compared bit for bit with
   the same float32 computation on qinspect's weights and quantized input.

End to end: the float model's logits against the quantized model's (the float model with
each quantized Linear replaced by its quantized behaviour): SQNR, max abs error, top-1
agreement, mean KL divergence of the next-token distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.analyse.verify import hfact
from qinspect.analyse.verify.quiet import quiet_libraries, quiet_transformers
from qinspect.analyse.verify.types import (
    EndToEnd,
    InputKind,
    KernelAgreement,
    LayerVerify,
    Options,
    Progress,
    VerifyReport,
)
from qinspect.errors import InputError, VerifyError
from qinspect.model import Checkpoint, ElementKind, Layer, PerAxis

SYNTHETIC_ROWS = 8
INSTALL = "pip install 'qinspect[hf]'"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


class HfRunner:
    """Hugging Face safetensors checkpoints with packed / float-coded Linear weights."""

    name = "hf"
    needs: Mapping[str, str] = {}
    refuses: Mapping[str, str] = {
        "model": "the float model is built from the checkpoint's config.json with "
                 "transformers (--reference BASE_DIR gives its float weights)",
        "engine": "Hugging Face schemes do not run on torch's quantized engines "
                  "(fbgemm / qnnpack / x86)",
    }

    def accepts(self, ckpt: Checkpoint, options: Options) -> bool:
        return ckpt.hf is not None

    def run(self, ckpt: Checkpoint, options: Options, progress: Progress | None
            ) -> VerifyReport:
        with quiet_libraries():
            return HFRun(ckpt, options, progress).report()


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray
    """int64 ``[batch, seq]``."""
    path: str


def read_tokens(path: str, vocab: int | None, batch: int | None) -> Tokens:
    """Token ids from a .npy file: integers, ``[batch, seq]`` or ``[seq]``, in the vocabulary."""
    from qinspect.inputs import read_input

    arr = read_input(path).first
    vocab_text = f"[0, {vocab})" if vocab else "[0, vocab_size)"
    want = f"integer token ids of shape [batch, seq] (or [seq]) in {vocab_text}"
    if arr.dtype.kind not in "iu":
        raise InputError(f"--input {path}: {arr.dtype} values; expected {want}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"--input {path}: shape {list(arr.shape)}; expected {want}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise InputError(f"--input {path}: ids from {lo} to {hi}; expected {want}")
    ids = arr.astype(np.int64)
    return Tokens(ids[:batch] if batch is not None else ids, path)


class HFRun:
    """One verify run of a Hugging Face checkpoint."""

    def __init__(self, ckpt: Checkpoint, options: Options, progress: Progress | None) -> None:
        from qinspect.analyse.verify import hfmodel
        from qinspect.loaders.hf.hfconfig import read_config

        assert ckpt.hf is not None
        self.ckpt, self.options, self.progress = ckpt, options, progress
        self.root = Path(ckpt.path) if Path(ckpt.path).is_dir() else Path(ckpt.path).parent
        self.config = read_config(self.root)[0] or {}
        self.qconfig: Mapping[str, Any] = ckpt.hf.quantization_config or {}
        self.layers = [lay for lay in ckpt.layers if lay.packed is not None]
        if not self.layers:
            raise VerifyError(f"{ckpt.path}: no quantized layer to verify (every weight is "
                              "float)")
        vocab = self.config.get("vocab_size")
        self.tokens = None if options.input is None else read_tokens(
            options.input, vocab if isinstance(vocab, int) else None, options.batch)
        self.reference = None if options.reference is None else _float_tensors(
            options.reference)
        self.has_transformers = hfmodel.transformers_available()
        self.rng = np.random.default_rng(options.seed if options.seed is not None else 0)
        self.kernels = CTKernels(ckpt, self.root, self.qconfig)

    # --- the float weights -----------------------------------------------------------

    def float_weight(self, layer: Layer, deq: np.ndarray) -> tuple[np.ndarray, str]:
        if self.reference is None:
            return deq, "dequantized weights"
        w = self.reference.get(f"{layer.name}.weight")
        if w is None or tuple(w.shape) != tuple(deq.shape):
            return deq, "dequantized weights (no matching tensor in --reference)"
        return w, f"float weights of {self.options.reference}"

    # --- the report ------------------------------------------------------------------

    def report(self) -> VerifyReport:
        real = self.tokens is not None and self.has_transformers and self.config
        inputs: dict[str, np.ndarray] = {}
        e2e: EndToEnd | None = None
        notes: list[str] = []
        if real:
            inputs, e2e, notes = self.run_model()
        rows = []
        for i, layer in enumerate(self.layers):
            if self.progress is not None:
                self.progress("layers", i, len(self.layers))
            rows.append(self.row(layer, inputs.get(layer.name)))
        if self.progress is not None:
            self.progress("layers", len(self.layers), len(self.layers))
        float_domain = (f"float weights of {self.options.reference} (the SQNR includes "
                        "weight error)" if self.reference is not None else
                        "dequantized weights (no --reference): the SQNR measures activation "
                        "quantization only, not weight error")
        return VerifyReport(
            path=self.ckpt.path, mode="model" if real else "file", engine="numpy",
            engine_reason=("qinspect's reference in numpy (float64; exact int64 accumulation "
                           "for W8A8 int); compressed-tensors' CPU forward as the kernel "
                           "where it applies"),
            input_text=self.input_text(bool(real)), layers=tuple(rows),
            float_domain=float_domain, scope=self.scope(bool(real)), end_to_end=e2e,
            notes=tuple(notes))

    def input_text(self, real: bool) -> str:
        if real and self.tokens is not None:
            b, t = self.tokens.ids.shape
            return (f"{self.tokens.path}: {b} x {t} token ids through the float model "
                    "(each Linear's real input)")
        return f"synthetic Gaussian input, {SYNTHETIC_ROWS} rows per layer (seed " \
               f"{self.options.seed if self.options.seed is not None else 0})"

    def scope(self, real: bool) -> str:
        if real:
            return ("every quantized Linear on its real input from the float model built "
                    "from config.json with transformers, and the logits end to end")
        if self.tokens is not None and not self.has_transformers:
            return ("transformers is not installed: every layer ran on synthetic input, "
                    f"not real activations ({INSTALL} to run the model on --input)")
        if self.tokens is not None:
            return ("config.json has no model_type: every layer ran on synthetic input")
        return ("no --input: every layer ran on synthetic input (pass --input TOKENS.npy, "
                "token ids, for real activations and the end-to-end logits)")

    # --- the model -------------------------------------------------------------------

    def run_model(self) -> tuple[dict[str, np.ndarray], EndToEnd | None, list[str]]:
        with quiet_transformers():
            return self._run_model()

    def _run_model(self) -> tuple[dict[str, np.ndarray], EndToEnd | None, list[str]]:
        from qinspect.analyse.verify import hfmodel

        assert self.tokens is not None
        ids = self.tokens.ids
        model = hfmodel.build(self.config, self.root)
        linears = hfmodel.linear_names(model)
        names = {lay.name for lay in self.layers if lay.name in linears}
        quant_state = self.quantized_state()
        float_state = self.reference if self.reference is not None else quant_state
        hfmodel.load_weights(model, float_state, self.options.reference or self.ckpt.path)
        with hfmodel.captured(model, names) as got:
            f_logits = hfmodel.logits(model, ids)
        inputs = dict(got)
        hfmodel.load_weights(model, quant_state, self.ckpt.path)
        schemes = {lay.name: s for lay in self.layers if lay.name in names
                   and (s := hfact.scheme_for(lay, self.qconfig, lay.name)) is not None}
        with hfmodel.replaced_inputs(model, {n: _qdq(s) for n, s in schemes.items()}):
            q_logits = hfmodel.logits(model, ids)
        e2e = end_to_end(f_logits, q_logits)
        notes: list[str] = []
        try:
            reload = self.library_reload(
                q_logits, lambda: hfmodel.logits(model, ids) if schemes
                else q_logits)
        except Exception as exc:
            reload = None
            notes.append(f"compressed-tensors could not reload this checkpoint through "
                         f"transformers: {type(exc).__name__}: {_first_line(exc)}")
        if reload is not None:
            e2e = replace(e2e, library=reload[0], library_sqnr_db=reload[1],
                          library_max_abs_diff=reload[2])
        skipped = [lay.name for lay in self.layers if lay.name not in names]
        if skipped:
            notes.append(f"{len(skipped)} quantized weights are not nn.Linear modules of the "
                         f"transformers model (e.g. {skipped[0]}): synthetic input for them; "
                         "the end-to-end logits use their dequantized weights")
        return inputs, e2e, notes

    def library_reload(self, q_logits: np.ndarray, weights_only: Callable[[], np.ndarray]
                       ) -> tuple[str, float, float] | None:
        """compressed-tensors' own reload (transformers ``from_pretrained`` with the
        checkpoint's config, decompressed into float32 Linears) on the same tokens,
        against qinspect's quantized model: (what ran, SQNR, max abs difference of the
        logits). On CPU that reload decompresses the weights into plain Linears and
        drops the activation quantization (``input_scale`` is an unexpected key), so
        where its Linears carry no quantization scheme it is compared with qinspect's
        model with quantized weights and float activations (``weights_only()``)."""
        if not self.kernels.ok or self.tokens is None:
            return None
        import torch
        import transformers
        from transformers import CompressedTensorsConfig

        from qinspect.analyse.verify import hfmodel
        from qinspect.quant.metrics import sqnr_db

        model = transformers.AutoModelForCausalLM.from_pretrained(
            self.root, dtype=torch.float32, local_files_only=True, use_safetensors=True,
            trust_remote_code=False, device_map="cpu",
            quantization_config=CompressedTensorsConfig(run_compressed=False)).eval()
        lib = hfmodel.logits(model, self.tokens.ids)
        acts = any(getattr(getattr(m, "quantization_scheme", None), "input_activations", None)
                   is not None for m in model.modules())
        ours = q_logits if acts else weights_only()
        what = "compressed-tensors reload (transformers from_pretrained, run_compressed=False)"
        if not acts and ours is not q_logits:
            what += ", weights only: it does not quantize activations on CPU"
        diff = float(np.abs(lib.astype(np.float64) - ours).max())
        return what, sqnr_db(ours.astype(np.float64), lib.astype(np.float64)), diff

    def quantized_state(self) -> dict[str, np.ndarray]:
        """Every float tensor of the checkpoint plus each quantized weight, dequantized."""
        from qinspect.loaders.hf.container import open_set

        ts = open_set(self.ckpt.path)
        state = {k: ts.floats(k) for k, info in ts.tensors.items()
                 if info.dtype in FLOAT_DTYPES}
        for layer in self.layers:
            assert layer.packed is not None
            deq = layer.packed.source.dequantize()
            key = f"{layer.name}.weight" if deq.ndim == 2 else layer.name
            state[key] = deq if deq.ndim == 2 else np.swapaxes(deq, 1, 2)
        return state

    # --- one row ---------------------------------------------------------------------

    def row(self, layer: Layer, x: np.ndarray | None) -> LayerVerify:
        pw = layer.packed
        assert pw is not None
        if len(pw.shape) != 2:
            return LayerVerify(name=layer.name, kind=layer.kind, mode=layer.mode.value,
                               verified=False, reason="a group of MoE experts (3-D weight): "
                               "its inputs are routed per expert; only the end-to-end logits "
                               "cover it")
        kind = InputKind.MODEL if x is not None else InputKind.SYNTHETIC
        if x is None:
            x = self.rng.standard_normal((SYNTHETIC_ROWS, pw.shape[1])).astype(np.float32)
        deq = pw.source.dequantize().astype(np.float32)
        w_float, how = self.float_weight(layer, deq)
        scheme = hfact.scheme_for(layer, self.qconfig, layer.name)
        bias = None if layer.bias is None else np.asarray(layer.bias, np.float64)
        x64 = x.astype(np.float64)
        float_out = x64 @ w_float.astype(np.float64).T
        notes: list[str] = []
        q = None
        if scheme is None:
            ref = x64 @ deq.astype(np.float64).T
            x_in = x
        else:
            q = hfact.quantize(x, scheme)
            x_in = q.values
            ref = _integer_linear(q, scheme, layer)
            if ref is None:
                ref = q.values.astype(np.float64) @ deq.astype(np.float64).T
                notes.append(f"input quantized ({scheme.describe()}), float64 matmul with "
                             "the dequantized weight")
            else:
                notes.append(f"input quantized ({scheme.describe()}), exact int64 "
                             "accumulation of int8 codes, then x input scale x weight scale")
        if bias is not None:
            float_out, ref = float_out + bias, ref + bias
        kernel, knotes = self.kernels.agreement(layer, x, x_in, deq, scheme, ref)
        notes += knotes
        if self.reference is not None and w_float is not deq:
            notes.append(_weight_lsb(pw, w_float, deq))
        return _metrics_row(layer, kind, self.input_text(kind is InputKind.MODEL),
                            x, q, scheme, how, float_out, ref, kernel, notes, self.tokens)


def _metrics_row(layer: Layer, kind: InputKind, text: str, x: np.ndarray,
                 q: hfact.Quantized | None, scheme: hfact.ActScheme | None, how: str,
                 float_out: np.ndarray, ref: np.ndarray, kernel: KernelAgreement | None,
                 notes: list[str], tokens: Tokens | None) -> LayerVerify:
    from qinspect.quant.metrics import sqnr_db

    err = np.abs(float_out - ref)
    shape: tuple[int, ...] = tuple(x.shape)
    if kind is InputKind.MODEL and tokens is not None:
        shape = (*tokens.ids.shape, x.shape[-1])
    if kernel is None:
        notes.append("no CPU kernel of the producing library runs this scheme here: the "
                     "row compares qinspect's reference with the float domain only")
    return LayerVerify(
        name=layer.name, kind="Linear", mode=layer.mode.value, verified=True, input_kind=kind,
        input_text=text, input_shape=shape,
        input_scale=None if scheme is None or scheme.dynamic else scheme.scale,
        input_zero_point=None if scheme is None or scheme.dynamic else scheme.zero_point,
        input_clipped=None if q is None else q.clipped,
        input_sqnr_db=None if q is None else sqnr_db(x.astype(np.float64),
                                                     q.values.astype(np.float64)),
        float_domain=how + " on the float input", elements=int(float_out.size),
        sqnr_db=sqnr_db(float_out, ref),
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        kernel=kernel, notes=tuple(notes))


def _weight_lsb(pw: Any, w_float: np.ndarray, deq: np.ndarray) -> str:
    """The weight's error against the float weights, in LSB of each value's group scale."""
    scales = np.abs(np.asarray(pw.source.element_scales(), np.float64))
    if pw.quant.element.kind is ElementKind.FLOAT:
        return ("weight error vs the float weights: max "
                f"{float(np.abs(w_float - deq).max()):.3g} (float codes: no uniform LSB)")
    lsb = np.abs(w_float.astype(np.float64) - deq) / np.where(scales > 0, scales, 1.0)
    return (f"weight error vs the float weights: max {float(lsb.max()):.2f} LSB, mean "
            f"{float(lsb.mean()):.2f} LSB of each value's group scale")


def _integer_linear(q: hfact.Quantized, scheme: hfact.ActScheme, layer: Layer
                    ) -> np.ndarray | None:
    """W8A8 int: int8 input codes x int8 per-channel weight codes accumulated in int64, then
    scaled (what an int8 GEMM kernel computes); None where the scheme is not that."""
    pw = layer.packed
    if (pw is None or scheme.element != "int8" or scheme.strategy == "group"
            or pw.quant.element.kind is not ElementKind.INT or pw.quant.element.bits != 8
            or not isinstance(pw.quant.granularity, PerAxis)
            or pw.source.zero_points() is not None or scheme.zero_point != 0
            or (q.outliers is not None and bool(q.outliers.any()))):
        return None
    codes = np.asarray(pw.source.codes(), np.int64)
    sw = np.asarray(pw.source.element_scales(), np.float64)[:, 0].reshape(1, -1)
    acc = np.asarray(q.codes, np.int64) @ codes.T
    sx = np.broadcast_to(np.asarray(q.scales, np.float64).reshape(-1, 1)
                         if np.size(q.scales) > 1 else np.asarray(q.scales, np.float64),
                         (acc.shape[0], 1))
    return acc.astype(np.float64) * sx * sw


def _qdq(scheme: hfact.ActScheme):
    def fn(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1])
        return hfact.quantize(flat, scheme).values.reshape(x.shape)
    return fn


def end_to_end(f: np.ndarray, q: np.ndarray) -> EndToEnd:
    """Logits of the quantized model against the float model's."""
    from qinspect.quant.metrics import sqnr_db

    f64, q64 = f.astype(np.float64), q.astype(np.float64)
    err = np.abs(f64 - q64)
    top1 = float(np.mean(f64.argmax(-1) == q64.argmax(-1)))
    lp = _log_softmax(f64)
    lq = _log_softmax(q64)
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    return EndToEnd(sqnr_db=sqnr_db(f64, q64), max_abs_error=float(err.max()),
                    elements=int(f.size), outputs=1, top1_agreement=top1,
                    mean_kl=max(kl, 0.0), positions=int(np.prod(f.shape[:-1])))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _float_tensors(path: str) -> dict[str, np.ndarray]:
    """Every float tensor of ``--reference`` (a Hugging Face folder or safetensors file)."""
    from qinspect.loaders.hf import is_hf_input
    from qinspect.loaders.hf.container import open_set

    if not is_hf_input(path):
        raise InputError(f"--reference {path}: not a Hugging Face safetensors checkpoint; "
                         "pass the base model's folder")
    ts = open_set(path)
    return {k: ts.floats(k) for k, info in ts.tensors.items() if info.dtype in FLOAT_DTYPES}


# --- compressed-tensors' own CPU forward (the kernel) ---------------------------------------


class CTKernels:
    """compressed-tensors' forward of a quantized Linear on CPU: ``decompress`` of the
    module's stored tensors (``BaseCompressor.get_value_from_registry(format)``, what
    ``decompress_model`` runs), the input fake-quantized by its ``forward.fake_quantize``
    with scales from ``calculate_qparams`` (dynamic) or the stored ``input_scale``, and
    ``F.linear`` in float32."""

    def __init__(self, ckpt: Checkpoint, root: Path, qconfig: Mapping[str, Any]) -> None:
        self.ckpt, self.root, self.qconfig = ckpt, root, qconfig
        self.ok = qconfig.get("quant_method") == "compressed-tensors" and _ct_installed()
        self._ts: Any = None

    def agreement(self, layer: Layer, x: np.ndarray, x_in: np.ndarray, deq: np.ndarray,
                  scheme: hfact.ActScheme | None, ref: np.ndarray
                  ) -> tuple[KernelAgreement | None, list[str]]:
        if not self.ok:
            return None, []
        import torch

        try:
            w_lib, fmt, group = self._decompress(layer)
            x_lib = self._fake_quant(layer, x, group) if scheme is not None else x
        except Exception as exc:
            return None, [f"compressed-tensors could not run this module: "
                          f"{type(exc).__name__}: {_first_line(exc)}"]
        xt = torch.from_numpy(np.ascontiguousarray(x_lib, np.float32))
        bias = None if layer.bias is None else torch.from_numpy(
            np.asarray(layer.bias, np.float32))
        k = torch.nn.functional.linear(xt, torch.from_numpy(w_lib), bias).numpy()
        r = torch.nn.functional.linear(torch.from_numpy(np.ascontiguousarray(x_in, np.float32)),
                                       torch.from_numpy(deq), bias).numpy()
        from qinspect.analyse.verify.rows import agreement

        ka = agreement("compressed-tensors", "CT forward, f32",
                       f"{fmt} decompress" + (" + fake_quantize" if scheme is not None
                                              else "") + " + F.linear", k, r, "abs")
        notes = []
        if scheme is not None:
            d = np.abs(k.astype(np.float64) - ref)
            notes.append(f"compressed-tensors' float32 forward vs qinspect's exact reference: "
                         f"max {float(d.max()):.3g} abs (its decompressed weight is rounded "
                         "to the scale dtype and it accumulates in float32; the reference "
                         "is exact)")
        return ka, notes

    def _group(self, name: str) -> dict[str, Any]:
        group = hfact.ct_group(self.qconfig, name)
        if not group:
            raise VerifyError(f"no config group targets {name}")
        return group

    def _decompress(self, layer: Layer) -> tuple[np.ndarray, str, dict[str, Any]]:
        import torch
        from compressed_tensors.compressors.base import BaseCompressor
        from compressed_tensors.quantization import QuantizationScheme

        group = self._group(layer.name)
        fmt = group.get("format") or self.qconfig.get("format")
        scheme = QuantizationScheme.model_validate(
            {k: v for k, v in group.items() if k != "format"})
        compressor = BaseCompressor.get_value_from_registry(fmt)
        names = tuple(compressor.compression_param_names(scheme))
        if fmt in ("float-quantized", "int-quantized", "naive-quantized") and \
                "weight" not in names:
            names = ("weight", *names)
        local = self._tensors(layer)
        state = {k: local[k] for k in names if k in local}
        out = compressor.decompress(state, scheme)
        return out["weight"].to(torch.float32).numpy(), str(fmt), group

    def _tensors(self, layer: Layer) -> dict[str, Any]:
        from safetensors import safe_open

        from qinspect.loaders.hf.container import open_set

        if self._ts is None:
            self._ts = open_set(self.ckpt.path)
        ts = self._ts
        prefix = layer.name + "."
        out: dict[str, Any] = {}
        for key, info in ts.tensors.items():
            if key.startswith(prefix) and "." not in key[len(prefix):]:
                with safe_open(info.shard, framework="pt") as fh:
                    out[key[len(prefix):]] = fh.get_tensor(key)
        return out

    def _fake_quant(self, layer: Layer, x: np.ndarray, group: dict[str, Any]) -> np.ndarray:
        """The input as compressed-tensors' ``forward_quantize`` fake-quantizes it (the
        module's stored ``input_scale`` / ``input_zero_point`` / ``input_global_scale``;
        dynamic scales per token of a ``[1, rows, in]`` input)."""
        import torch
        from compressed_tensors.quantization import QuantizationArgs, QuantizationStatus
        from compressed_tensors.quantization.lifecycle.forward import forward_quantize

        args = QuantizationArgs.model_validate(group["input_activations"])
        holder = torch.nn.Module()
        holder.quantization_status = QuantizationStatus.COMPRESSED
        for leaf, value in self._tensors(layer).items():
            if leaf.startswith("input_"):  # the model runs in float32: so do its params
                setattr(holder, leaf, value.float() if value.is_floating_point() else value)
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
        with torch.no_grad():
            return forward_quantize(holder, xt, "input", args)[0].numpy()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:3])[:160]


def _ct_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("compressed_tensors") is not None


def _finite(x: float) -> float:
    return x if math.isfinite(x) else float("nan")

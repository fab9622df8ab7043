"""``quantization_config``: find it, check its types, and decide the format.

Dispatch follows transformers (``QuantizationMethod``): ``quant_method`` first, then, for
compressed-tensors, each config group's ``format`` (a top-level ``mixed-precision`` means
the groups decide). compressed-tensors <= 0.6 wrote ``compression_config``; GPTQ/AWQ repos
may carry ``quantize_config.json`` / ``quant_config.json``; ModelOpt writes
``hf_quant_config.json``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.loaders.hf.container import read_json_file
from qinspect.render.text import safe

READ = {"compressed-tensors", "gptq", "awq", "bitsandbytes", "fp8", "modelopt", "mxfp4"}
NAMED = {
    "hqq": "HQQ", "torchao": "torchao (saved through transformers)", "aqlm": "AQLM",
    "vptq": "VPTQ", "quanto": "optimum-quanto", "eetq": "EETQ", "higgs": "HIGGS",
    "fbgemm_fp8": "FBGEMM FP8", "bitnet": "BitNet", "spqr": "SpQR", "quark": "AMD Quark",
    "fp_quant": "FP-Quant", "auto-round": "AutoRound", "marlin": "GPTQ Marlin",
}
MAX_PATTERN = 500
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[+*}][^)]*\)\s*[+*{]")


@dataclass(frozen=True)
class QuantConfig:
    """What the config says, with the file it came from."""

    method: str | None
    raw: dict[str, Any]
    source: str
    model_dtype: str = "bfloat16"
    producer: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


def read_config(root: Path) -> tuple[dict[str, Any] | None, QuantConfig]:
    """``config.json`` (or None) and the quantization config found beside it."""
    config = None
    path = root / "config.json"
    if path.is_file():
        config = read_json_file(path, "config.json")
        if not isinstance(config, dict):
            raise LoadError(f"{safe(path)}: config.json is not a JSON object; fix or "
                            "re-download it")
    dtype = _model_dtype(config)
    qc, source = _find_quant_config(root, config)
    if qc is None:
        return config, QuantConfig(method=None, raw={}, source="", model_dtype=dtype)
    method = qc.get("quant_method")
    if not isinstance(method, str):
        raise LoadError(f"{safe(source)}: quantization_config has no string 'quant_method'; "
                        "fix the config")
    method = method.lower()
    producer = _producer(method, qc)
    return config, QuantConfig(method=method, raw=qc, source=source, model_dtype=dtype,
                               producer=producer)


def _model_dtype(config: dict[str, Any] | None) -> str:
    if not config:
        return "bfloat16"
    value = config.get("torch_dtype", config.get("dtype", "bfloat16"))
    return value if value in ("bfloat16", "float16", "float32") else "bfloat16"


def _find_quant_config(root: Path, config: dict[str, Any] | None
                       ) -> tuple[dict[str, Any] | None, str]:
    if config is not None:
        for holder, where in ((config, "config.json"),
                              (config.get("text_config"), "config.json text_config")):
            if not isinstance(holder, dict):
                continue
            for key in ("quantization_config", "compression_config"):
                value = holder.get(key)
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise LoadError(f"{safe(root / 'config.json')}: '{key}' is not an object; "
                                    "fix the config")
                if key == "compression_config" and "quant_method" not in value:
                    value = {**value, "quant_method": "compressed-tensors"}
                return value, f"{where} {key}"
    for name in ("quantize_config.json", "quant_config.json"):
        path = root / name
        if path.is_file():
            value = read_json_file(path, name)
            if isinstance(value, dict):
                value.setdefault("quant_method", "gptq" if "w_bit" not in value else "awq")
                return value, name
    return None, ""


def _producer(method: str, qc: dict[str, Any]) -> str:
    if method == "compressed-tensors":
        version = qc.get("version")
        return "compressed-tensors" + (f" {version}" if isinstance(version, str) else "")
    if method == "modelopt":
        prod = qc.get("producer")
        if isinstance(prod, dict) and isinstance(prod.get("name"), str):
            return f"{prod['name']} {prod.get('version', '')}".strip()
        return "NVIDIA ModelOpt"
    if method == "gptq":
        meta = qc.get("meta")
        quantizer = meta.get("quantizer") if isinstance(meta, dict) else None
        if isinstance(quantizer, list) and quantizer and isinstance(quantizer[0], str):
            return quantizer[0]
        return "GPTQ (AutoGPTQ / GPTQModel / optimum)"
    return {"awq": "AutoAWQ", "bitsandbytes": "bitsandbytes (transformers)",
            "fp8": "FP8 exporter (transformers FineGrainedFP8 / AutoFP8)",
            "mxfp4": "gpt-oss MXFP4"}.get(method, method)


def refuse_unsupported(cfg: QuantConfig) -> None:
    if cfg.method is None or cfg.method in READ:
        return
    name = NAMED.get(cfg.method, f"'{safe(cfg.method)}'")
    raise UnsupportedFormatError(
        f"{safe(cfg.source)}: quant_method {name} is not read yet (qinspect reads "
        "compressed-tensors, GPTQ, AWQ, bitsandbytes, FP8, ModelOpt and MXFP4 checkpoints); "
        "nothing was guessed")


# --- typed access -------------------------------------------------------------------------


def int_field(cfg: dict[str, Any], key: str, default: int | None, lo: int, hi: int,
              where: str) -> int | None:
    value = cfg.get(key, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise LoadError(f"{safe(where)}: '{safe(key)}' must be an integer in {lo}..{hi} "
                        f"(got {safe(repr(value)[:40])}); fix the config")
    return value


def bool_field(cfg: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise LoadError(f"{safe(where)}: '{safe(key)}' must be true or false (got "
                        f"{safe(repr(value)[:40])}); fix the config")
    return value


def str_list(cfg: dict[str, Any], key: str, where: str) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LoadError(f"{safe(where)}: '{safe(key)}' must be a list of strings; fix the "
                        "config")
    return value


def matches(name: str, pattern: str) -> bool:
    """compressed-tensors ``match_name``: ``re:<pat>`` is ``re.match``; otherwise the exact
    module name. transformers' ``modules_to_not_convert`` match by name component; ``*``
    globs (gpt-oss) are accepted too."""
    if pattern.startswith("re:"):
        pat = pattern[3:]
        if len(pat) > MAX_PATTERN or _NESTED_QUANTIFIER.search(pat):
            return False
        try:
            return re.match(pat, name) is not None
        except re.error:
            return False
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")
    return (name == pattern or name.endswith("." + pattern) or name.startswith(pattern + ".")
            or f".{pattern}." in name)

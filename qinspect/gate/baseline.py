"""``--baseline``: read back the JSON report of an earlier ``qinspect check`` run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from qinspect.errors import InputError
from qinspect.gate.report import CHECK_SCHEMA
from qinspect.gate.rules import Baseline, BaselineLayer


def read_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a ``--format json`` report of an earlier run (schema ``qinspect.check/1``)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: baseline report not found; create one with "
                         "`qinspect check CKPT --format json --output FILE`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not a JSON report ({line}); pass a file written by "
                         "`qinspect check --format json`") from exc
    if not isinstance(doc, dict) or doc.get("schema") != CHECK_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{p}: schema is {found!r}, not {CHECK_SCHEMA!r}; pass a report "
                         "written by `qinspect check --format json`")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InputError(f"{p}: 'layers' is missing or not a list; the report is damaged")
    out = []
    for i, item in enumerate(layers):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("quantized"), bool)):
            raise InputError(f"{p}: layers[{i}] lacks a string 'name' or boolean 'quantized'")
        out.append(BaselineLayer(item["name"], item["quantized"],
                                 _number(item.get("weight_sqnr_db"), p, i),
                                 _number(item.get("output_sqnr_db"), p, i)))
    return Baseline(str(p), str(doc.get("file", "")), tuple(out))


def _number(value: Any, path: Path, index: int) -> float | None:
    if value is None:
        return None
    if value in ("NaN", "Infinity", "-Infinity"):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: layers[{index}] has a non-numeric SQNR {value!r}")
    return float(value)

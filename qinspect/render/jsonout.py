"""JSON helpers: strict JSON (non-finite floats become strings), numpy-aware."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def clean(value: Any) -> Any:
    """Make ``value`` strict-JSON serialisable: NaN/Infinity become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; numpy scalars and arrays become Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        return clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def dumps(value: Any) -> str:
    # ensure_ascii: names from files may hold C1 controls or bidi overrides (U+202E);
    # as \uXXXX escapes they stay intact for parsers and inert on a terminal
    return json.dumps(clean(value), indent=2, allow_nan=False, ensure_ascii=True)

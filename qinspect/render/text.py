"""Safe text for anything that comes from a file, and number formatting with units."""

from __future__ import annotations

import math

from rich.text import Text

BIDI_AND_SEPARATORS = frozenset("\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069")


def safe(value: object) -> str:
    """Escape control characters (ANSI escapes, newlines, bells...) as visible ``\\xNN``.

    Rich markup is neutralised separately by wrapping in :func:`text` (``Text`` never
    parses markup), so ``[red]`` in a key prints as ``[red]``.
    """
    out = []
    for ch in str(value):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or ch in BIDI_AND_SEPARATORS:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def text(value: object, style: str = "") -> Text:
    """A rich Text of untrusted content: control characters escaped, markup not parsed."""
    return Text(safe(value), style=style)


def num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"

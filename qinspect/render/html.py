"""One self-contained HTML page per command (``--html FILE``): tables, charts, explanations.

The page is built from the same JSON documents that ``--json`` prints (``show_json``,
``diff_json``, ``verify_json``, ``check_json``), so it follows the report classes through
their refactors. Python writes the tables and text (every string from a file goes through
:func:`esc`: control characters made visible as on the terminal, then ``html.escape``); the
inlined script draws the charts from the same document, embedded as JSON in a
``<script type="application/json">`` block whose ``<``, ``>``, ``&`` and U+2028/U+2029 are
escaped (see :func:`script_json`), and only ever sets ``textContent``.

Nothing is loaded at view time: Chart.js (MIT, vendored in ``html_assets/``), the page's
script and CSS are inline, and a Content-Security-Policy ``default-src 'none'`` with the
scripts allowed by their SHA-256 hashes keeps it that way (an injected inline script would
not run either). Errors raised in the page (or blocked loads) are written into
``#qi-errors``, so a test reading the DOM sees them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from qinspect.render.atomic import write_atomic
from qinspect.render.jsonout import clean
from qinspect.render.text import safe

ASSETS = "html_assets"
CHART_JS = "chart.umd.min.js"

# Runs first: anything that goes wrong later (an exception, a blocked load, a console
# error) is written into #qi-errors, which is what the tests read from the dumped DOM.
_GUARD_JS = """(function(){
var log=function(msg){var el=document.getElementById('qi-errors');
if(!el){(window.__qiEarly=window.__qiEarly||[]).push(msg);return;}
el.textContent+=msg+'\\n';el.hidden=false;};
window.__qiLog=log;
window.addEventListener('error',function(e){log('error: '+(e.message||e.type));});
window.addEventListener('unhandledrejection',function(e){log('rejection: '+e.reason);});
document.addEventListener('securitypolicyviolation',function(e){
log('blocked: '+e.violatedDirective+' '+e.blockedURI);});
var ce=console.error;console.error=function(){
log('console: '+Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};
})();"""


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown (escaped when rendered) and an optional sort key."""

    text: str
    sort: float | str | None = None
    cls: str = ""
    href: str | None = None
    badge: str = ""


def esc(value: object) -> str:
    """Untrusted text for HTML: control/bidi characters made visible (as on the terminal),
    then ``& < > " '`` escaped."""
    return html.escape(safe(value), quote=True)


def script_json(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: strict JSON (no
    NaN), non-ASCII as ``\\uXXXX`` (so U+2028/U+2029 too), and ``< > &`` as escapes, so no
    string can close the element or open a comment."""
    text = json.dumps(clean(value), allow_nan=False, ensure_ascii=True, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@cache
def _asset(name: str) -> str:
    # One name per joinpath: Python 3.10's Traversable.joinpath takes a single child.
    return resources.files("qinspect.render").joinpath(ASSETS).joinpath(name).read_text("utf-8")


def _sha256(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def page(title: str, command: str, body: Sequence[str], data: dict[str, Any]) -> str:
    """The whole document: ``body`` is already-escaped HTML; ``data`` is embedded for the
    charts (``command`` picks the drawing code: show, diff, verify or check)."""
    scripts = [_GUARD_JS, _asset(CHART_JS), _asset("page.js")]
    for source in scripts:
        assert "</script" not in source.lower(), "an inlined script would close its element"
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           "script-src " + " ".join(_sha256(s) for s in scripts))
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{_asset('page.css')}</style>\n"
            f"<script>{scripts[0]}</script>\n</head>\n")
    return "".join([
        head,
        f'<body data-command="{esc(command)}">\n',
        '<pre id="qi-errors" hidden></pre>\n',
        '<div id="qi-status" data-done="0" data-charts="0"></div>\n',
        f"<header><h1>{esc(title)}</h1></header>\n<main>\n",
        *body,
        "</main>\n<footer>Written by qinspect. Charts: Chart.js (MIT licence), inlined; "
        "this page loads nothing from the network.</footer>\n",
        f'<script type="application/json" id="qi-data">{script_json(data)}</script>\n',
        f"<script>{scripts[1]}</script>\n<script>{scripts[2]}</script>\n",
        "</body></html>\n",
    ])


# --- building blocks (all return escaped HTML) ------------------------------------------


def section(title: str, *parts: str, id: str | None = None) -> str:
    anchor = f' id="{esc(id)}"' if id else ""
    return f"<section{anchor}><h2>{esc(title)}</h2>\n" + "".join(parts) + "</section>\n"


def para(text: str, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<p{klass}>{esc(text)}</p>\n"


def bullets(items: Iterable[str], cls: str = "") -> str:
    rows = "".join(f"<li>{esc(item)}</li>" for item in items)
    if not rows:
        return ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<ul{klass}>{rows}</ul>\n"


def facts(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column definition list: label, value."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="facts">{items}</dl>\n'


def chart(chart_id: str, title: str, height: int = 320, note: str = "") -> str:
    """A canvas the page script fills (``chart_id`` names the drawing function's target)."""
    extra = f'<p class="note">{esc(note)}</p>' if note else ""
    return (f'<figure class="chart"><figcaption>{esc(title)}</figcaption>{extra}'
            f'<div class="canvas-box" style="height:{int(height)}px">'
            f'<canvas id="{esc(chart_id)}" role="img" aria-label="{esc(title)}"></canvas>'
            f"</div></figure>\n")


def bar_height(bars: int) -> int:
    """Height in pixels of a horizontal bar chart with one bar per layer."""
    return max(160, 60 + 16 * bars)


def table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[Cell]],
          filter_label: str | None = "filter by layer name",
          row_attrs: Sequence[str] | None = None) -> str:
    """A sortable table (click a header); with ``filter_label`` a box filters the rows by
    their first column. ``row_attrs`` are extra (already safe) attributes per row."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        attrs = row_attrs[i] if row_attrs is not None else ""
        body.append(f"<tr{attrs}>" + "".join(_cell(c) for c in row) + "</tr>")
    box = ""
    if filter_label:
        box = (f'<input type="search" class="filter" data-table="{esc(table_id)}" '
               f'placeholder="{esc(filter_label)}" aria-label="{esc(filter_label)}">\n')
    return (f'{box}<div class="table-box"><table id="{esc(table_id)}" class="sortable">'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table></div>\n")


def _cell(c: Cell) -> str:
    attrs = ""
    if c.sort is not None:
        attrs += f' data-v="{esc(c.sort)}"'
    if c.cls:
        attrs += f' class="{esc(c.cls)}"'
    content = esc(c.text)
    if c.href is not None:
        content = f'<a href="{esc(c.href)}">{content}</a>'
    if c.badge:
        content += f' <span class="badge">{esc(c.badge)}</span>'
    return f"<td{attrs}>{content}</td>"


def number(value: Any) -> float | None:
    """A JSON number (or its ``"NaN"``/``"Infinity"`` string) as a float; None if absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return {"NaN": float("nan"), "Infinity": float("inf"),
                "-Infinity": float("-inf")}.get(value)
    return float(value)


def sort_key(value: Any) -> float | str:
    """Sort key for a numeric cell: missing values sort last, infinities at their ends."""
    x = number(value)
    if x is None or x != x:
        return ""
    if x == float("inf"):
        return 1e308
    if x == float("-inf"):
        return -1e308
    return x


def db(value: Any) -> str:
    x = number(value)
    if x is None:
        return "-"
    if x != x:
        return "NaN"
    if x == float("inf"):
        return "inf dB (exact)"
    if x == float("-inf"):
        return "-inf dB"
    return f"{x:.1f} dB"


def pct(value: Any) -> str:
    x = number(value)
    return "-" if x is None else ("NaN" if x != x else f"{100 * x:.2f} %")


def lsb(value: Any) -> str:
    x = number(value)
    return "-" if x is None else ("NaN" if x != x else f"{x:.2f} LSB")


def layer_picker(names: Sequence[str]) -> str:
    """The drop-down that opens one layer's section (the page script wires it)."""
    options = "".join(f'<option value="{i}">{esc(n)}</option>' for i, n in enumerate(names))
    return f'<label class="pick">layer <select id="layer-pick">{options}</select></label>\n'


def layer_section(index: int, *parts: str) -> str:
    """One layer's section; ``#L-<index>`` links open it (one is shown at a time)."""
    return (f'<article class="layer" id="{anchor(index)}" data-layer="{int(index)}">'
            + "".join(parts) + "</article>\n")


def anchor(index: int) -> str:
    """The id of a layer's section (``#L-3``); indices, never names, so ids are safe."""
    return f"L-{int(index)}"


def write_page(path: str | os.PathLike[str], text: str,
               inputs: Iterable[str | os.PathLike[str] | None]) -> Path:
    """Write a page atomically (never over one of the command's ``inputs``)."""
    return write_atomic(path, text, inputs=[p for p in inputs if p is not None],
                        option="--html")

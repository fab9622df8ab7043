"""``--html FILE``: each command's page, rendered in headless Chromium (Debian's package).

The checkpoints come from torch's eager flow (prepare / calibrate / convert) on a model
whose modules are named ``<script>alert(1)</script>`` and ``<img src=x onerror=alert(2)>``:
torch accepts any module name without a dot, so a real file can carry them. Each page is
opened with the network blocked (CSP ``default-src 'none'`` in the page, and Chromium's
resolver mapping every host to nothing); the page's own guard writes every JavaScript
error, console error and blocked load into ``#qi-errors``, which the dumped DOM shows.
A screenshot of each page is written under the test's temporary folder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn
from torch_models import engine

from qinspect.render.html import esc, script_json
from qinspect.render.text import safe

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
HOSTILE = (SCRIPT, IMG)
OWN_SCRIPTS = 4  # error guard, JSON data, Chart.js, page script
ROOT = Path(__file__).resolve().parents[2]


# --- Chromium -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed and could not be: `make browser` (run by "
                    ".ci/run) installs Debian's package when root with apt-get; see its "
                    "output for why it failed")
    return path


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            "--hide-scrollbars", "--virtual-time-budget=10000",
            "--enable-logging=stderr", "--v=0"]  # the page's console messages on stderr


def _chromium(binary: str, tmp: Path, page: Path, *mode: str,
              fragment: str = "") -> tuple[str, list[str]]:
    """Chromium's stdout, and the page's console messages (errors, warnings, logs)."""
    profile = tmp / f"chromium-profile-{uuid.uuid4().hex}"
    profile.mkdir()
    try:
        url = page.resolve().as_uri() + fragment
        done = subprocess.run([binary, *_flags(profile), *mode, url],
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


class Dom(HTMLParser):
    """The dumped DOM: tags with attributes, visible text, script count."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._open: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "script" not in self._open and "style" not in self._open:
            self.text.append(data)

    def by_id(self, ident: str) -> dict[str, str | None]:
        return next(attrs for tag, attrs in self.tags if attrs.get("id") == ident)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    def errors(self, markup: str) -> str:
        start = markup.index('id="qi-errors"')
        return markup[markup.index(">", start) + 1: markup.index("</pre>", start)]


def render(binary: str, tmp: Path, page: Path) -> tuple[Dom, str, list[str]]:
    """Open the page: its DOM after the scripts ran, and its console messages; write
    ``<page>.png`` beside it."""
    markup, console = _chromium(binary, tmp, page, "--dump-dom")
    shot = page.with_suffix(".png")
    _chromium(binary, tmp, page, "--window-size=1280,1600", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    return Dom(markup), markup, console


def assert_page_ok(page: tuple[Dom, str, list[str]], names: list[str],
                   min_charts: int) -> None:
    dom, markup, console = page
    assert console == [], console
    assert dom.errors(markup) == "", dom.errors(markup)
    status = dom.by_id("qi-status")
    assert status["data-done"] == "1"
    assert int(status["data-charts"] or 0) >= min_charts
    assert dom.count("canvas") >= min_charts
    text = "".join(dom.text)
    missing = [n for n in names if safe(n) not in text]
    assert not missing, f"layer names not on the page: {missing}"
    # hostile names are text: no element came out of them, and only the page's scripts exist
    assert dom.count("script") == OWN_SCRIPTS
    assert dom.count("img") == 0
    for name in HOSTILE:
        assert name in text


# --- checkpoints from torch's eager flow, with hostile module names --------------------


class Hostile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.add_module(SCRIPT, nn.Linear(20, 16))
        self.relu = nn.ReLU()
        self.add_module(IMG, nn.Linear(16, 6))
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(getattr(self, SCRIPT)(self.quant(x)))
        return self.dequant(getattr(self, IMG)(h))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = Hostile().eval()
    torch.save(model.state_dict(), out / "float.pt")
    model.qconfig = tq.get_default_qconfig("x86")
    with engine("x86"):
        prepared = tq.prepare(model)
        for _ in range(3):
            prepared(torch.randn(8, 20))
        torch.save(tq.convert(prepared).state_dict(), out / "int8.pt")
    np.save(out / "sample.npy", np.random.default_rng(0).standard_normal((8, 20))
            .astype(np.float32))
    return {"float": out / "float.pt", "int8": out / "int8.pt", "input": out / "sample.npy"}


def _names(cli, *args: str) -> tuple[dict, list[str]]:
    r = cli(*args, "--json")
    assert r.code in (0, 1), r.err
    doc = json.loads(r.out)
    return doc, [lay["name"] for lay in doc["layers"]]


def test_show_page(cli, files, chromium, tmp_path):
    page = tmp_path / "show.html"
    plain = cli("show", files["int8"])
    r = cli("show", files["int8"], "--html", page)
    assert r.code == 0 and r.out == plain.out  # the terminal output is unchanged
    doc, names = _names(cli, "show", files["int8"])
    assert set(HOSTILE) <= set(names)
    shown = render(chromium, tmp_path, page)
    # the model-wide range chart plus the first layer's scale plot and int histogram
    assert_page_ok(shown, names, min_charts=3)
    dom = shown[0]
    ids = {attrs.get("id") for _, attrs in dom.tags}
    assert {"chart-range", "chart-scales-1", "chart-hist-1"} <= ids
    assert "Content-Security-Policy" in page.read_text()


def test_diff_page(cli, files, chromium, tmp_path):
    page = tmp_path / "diff.html"
    r = cli("diff", files["float"], files["int8"], "--html", page)
    assert r.code == 0, r.err
    _, names = _names(cli, "diff", files["float"], files["int8"])
    shown = render(chromium, tmp_path, page)
    # SQNR, LSB error and clipping across layers, and the worst layer's SQNR per channel
    assert_page_ok(shown, names, min_charts=4)
    dom = shown[0]
    assert any((a.get("id") or "").startswith("chart-channels-") for _, a in dom.tags)


def test_verify_page_marks_synthetic_rows(cli, files, chromium, tmp_path):
    page = tmp_path / "verify.html"
    r = cli("verify", files["int8"], "--html", page)
    assert r.code == 0, r.err
    doc, names = _names(cli, "verify", files["int8"])
    synthetic = [lay for lay in doc["layers"] if (lay["input"] or {}).get("source") == "synthetic"]
    assert synthetic
    shown = render(chromium, tmp_path, page)
    assert_page_ok(shown, names, min_charts=2)
    dom = shown[0]
    marked = [attrs for tag, attrs in dom.tags if tag == "tr"
              and "synthetic" in (attrs.get("class") or "")]
    assert len(marked) == len(synthetic)


def test_check_page_lists_failures_first_with_links(cli, files, chromium, tmp_path):
    page = tmp_path / "check.html"
    args = ("check", files["int8"], "--reference", files["float"], "--input", files["input"],
            "--set", "min_weight_sqnr_db=80", "--set", "unrecognised_keys=warning")
    r = cli(*args, "--html", page)
    assert r.code == 1, r.err  # 80 dB is more than int8 weights can reach
    doc, names = _names(cli, *args)
    failing = {f["layer"] for f in doc["findings"] if f["severity"] == "error"}
    assert set(HOSTILE) <= failing
    shown = render(chromium, tmp_path, page)
    assert_page_ok(shown, names, min_charts=3)
    dom, markup, _ = shown
    # every finding links to its layer's section, errors before warnings
    rows = markup[markup.index('id="findings"'):markup.index('id="charts"')]
    severities = re.findall(r'class="(?:bad|warn)">(error|warning)<', rows)
    assert "error" in severities
    assert severities == sorted(severities, key=("error", "warning").index)
    links = [a["href"] for t, a in dom.tags if t == "a" and (a.get("href") or "")
             .startswith("#L-")]
    index = {n: i for i, n in enumerate(names)}
    assert {f"#L-{index[n]}" for n in failing} <= set(links)
    for target in set(links):
        assert dom.by_id(target[1:])
    # following a finding's link opens that layer's section (and only that one)
    target = f"L-{index[IMG]}"
    opened = Dom(_chromium(chromium, tmp_path, page, "--dump-dom", fragment="#" + target)[0])
    shown = [a["id"] for t, a in opened.tags if t == "article" and "hidden" not in a]
    assert shown == [target]


# --- no network, no injected script: the guard would see it -----------------------------


def test_the_guard_reports_a_load_and_an_injected_script(cli, files, chromium, tmp_path):
    """The no-request check can fail: a page with an external image and an inline script
    that no hash allows reports both in #qi-errors, and the script does not run."""
    page = tmp_path / "show.html"
    assert cli("show", files["int8"], "--html", page).code == 0
    text = page.read_text()
    tampered = tmp_path / "tampered.html"
    tampered.write_text(text.replace(
        "<main>", '<main><img src="http://192.0.2.1/x.png">'
                  "<script>document.title='ran';</script>", 1))
    dom, markup, console = render(chromium, tmp_path, tampered)
    errors = dom.errors(markup)
    assert "blocked: img-src" in errors and "blocked: script-src" in errors
    assert any("Content Security Policy" in line for line in console), console
    assert "<title>ran</title>" not in markup


def test_page_markup_loads_nothing_and_escapes(files, tmp_path):
    from qinspect import load, summarise
    from qinspect.render.html_show import show_html

    markup = show_html(summarise(load(files["int8"])))
    dom = Dom(markup)
    for tag, attrs in dom.tags:
        for key in ("src", "href", "action", "data", "poster"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, key, value)
    assert dom.count("link") == 0 and dom.count("iframe") == 0
    assert "default-src 'none'" in markup and "unsafe-inline" not in markup.split(
        "script-src")[1].split('"')[0]
    assert esc(SCRIPT) in markup and SCRIPT not in markup.replace(script_json(SCRIPT), "")


def test_script_json_cannot_close_its_element():
    value = {"k": "</script><!-- \u2028\u2029 & ' \"", "n": float("nan")}
    out = script_json(value)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in out
    assert json.loads(out) == {"k": value["k"], "n": "NaN"}


def test_esc_makes_controls_visible_and_markup_text():
    assert esc("a\x1b[31m<b>&\u202e") == "a\\x1b[31m&lt;b&gt;&amp;\\u202e"


def test_html_over_an_input_is_refused(cli, files):
    r = cli("show", files["int8"], "--html", files["int8"])
    assert r.code == 2
    assert "--html" in r.err and len(r.err.strip().splitlines()) == 1


def test_check_html_needs_one_checkpoint(cli, files, tmp_path):
    r = cli("check", files["int8"], files["int8"], "--html", tmp_path / "x.html")
    assert r.code == 2 and "one checkpoint" in r.err
    assert not (tmp_path / "x.html").exists()


# --- size of a ResNet-18 page -------------------------------------------------------------


def test_resnet18_show_page_is_under_5_mb(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from make_inputs import make_resnet
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from qinspect import load, summarise
    from qinspect.render.html_show import show_html

    with engine("x86"):
        _, int8, _ = make_resnet(tmp_path)
    summary = summarise(load(int8))
    assert summary.quantized_layers >= 21  # 20 convs + fc, as torchvision's resnet18
    markup = show_html(summary)
    assert len(markup.encode()) < 5 * 1024 * 1024

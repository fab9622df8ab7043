"""Size and render time of ``--html`` pages: a 300-layer model and a ResNet-18-shaped one.

    .venv/bin/python benchmarks/html_page.py [--out DIR]

Builds both with torch's eager flow (prepare / calibrate / convert), writes each command's
page with the CLI, then opens it in headless Chromium and reports: page size, the time the
page's own script took to draw (``data-ms`` of ``#qi-status``, measured in the page with
``performance.now()``), and the wall time of Chromium loading it and dumping the DOM
(browser start-up included; a blank page's wall time is printed as the baseline).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.ao.quantization as tq
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=30000"]


class Deep(nn.Module):
    """``layers`` quantized Linear(64, 64) + ReLU in a row."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.body = nn.Sequential(*[m for _ in range(layers)
                                    for m in (nn.Linear(64, 64), nn.ReLU())])
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.body(self.quant(x)))


def make_deep(out: Path, layers: int = 300) -> tuple[Path, Path, Path]:
    torch.manual_seed(0)
    torch.backends.quantized.engine = "x86"
    model = Deep(layers).eval()
    torch.save(model.state_dict(), out / "deep_fp32.pt")
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(16, 64))
    torch.save(tq.convert(prepared).state_dict(), out / "deep_int8.pt")
    np.save(out / "deep_input.npy", np.random.default_rng(0).standard_normal((16, 64))
            .astype(np.float32))
    return out / "deep_fp32.pt", out / "deep_int8.pt", out / "deep_input.npy"


def open_page(chromium: str, page: Path, work: Path) -> tuple[float, str]:
    profile = Path(tempfile.mkdtemp(dir=work, prefix="profile-"))
    start = time.perf_counter()
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    shutil.rmtree(profile, ignore_errors=True)
    return wall, done.stdout


def report(chromium: str, label: str, page: Path, work: Path) -> None:
    wall, dom = open_page(chromium, page, work)
    status = re.search(r'id="qi-status"[^>]*', dom)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', status.group(0) if status else ""))
    errors = re.search(r'id="qi-errors"[^>]*>([^<]*)<', dom)
    print(f"{label:28s} {page.stat().st_size / 1e6:7.2f} MB   script {attrs.get('ms', '?'):>5} ms"
          f"   Chromium load+dump {wall:5.2f} s   charts {attrs.get('charts', '?'):>3}"
          f"   errors: {(errors.group(1).strip() if errors else '?') or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed: `make browser`")
    work = args.out or Path(tempfile.mkdtemp(prefix="qinspect-html-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from make_inputs import make_resnet

    from qinspect.cli import main as cli

    def run(*argv: object) -> None:
        try:
            cli([str(a) for a in argv] + ["--quiet"])
        except SystemExit as exc:
            assert exc.code in (0, 1, None), exc.code

    blank = work / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    wall, _ = open_page(chromium, blank, work)
    print(f"{'blank page (baseline)':28s} {'':>7}      {'':>12}        Chromium load+dump "
          f"{wall:5.2f} s")
    fp32, int8, sample = make_deep(work)
    rfp32, rint8, rsample = make_resnet(work)
    import contextlib
    import io

    for name, (a, b, x) in {"300 layers": (fp32, int8, sample),
                            "ResNet-18": (rfp32, rint8, rsample)}.items():
        pages = {
            "show": ("show", b),
            "diff": ("diff", a, b),
            "verify": ("verify", b, "--input", x, "--reference", a),
            "check": ("check", b, "--reference", a, "--input", x),
        }
        for command, argv in pages.items():
            page = work / f"{name.replace(' ', '_')}_{command}.html"
            with contextlib.redirect_stdout(io.StringIO()):
                run(*argv, "--html", page)
            report(chromium, f"{name}: {command}", page, work)
    print(f"pages in {work}")


if __name__ == "__main__":
    main()

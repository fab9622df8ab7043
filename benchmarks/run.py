"""Benchmarks: median wall time and peak RSS of qinspect commands against baselines
measured in the same run, on the same machine.

    .venv/bin/python benchmarks/run.py            # generates inputs if missing, ~5 min
    .venv/bin/python benchmarks/run.py --repeat 5 --only show
    make bench                                     # the same, --repeat 3

Every case runs as a fresh subprocess (so ``import torch`` is included, as a user pays
it); peak RSS is the child's ``ru_maxrss`` from ``os.wait4``. File pages touched through
mmap count in RSS, so a pass over a 1 GB checkpoint shows about 1 GB whatever the code.
Cases that print ``INPROC <seconds>`` also report that in-process time (the work after
imports and loading): the quantized ResNet's forward pass and ``qinspect.verify()``.
Results go to ``benchmarks/out/results.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESNET = ("resnet_int8.pt", "resnet_fp32.pt", "resnet_input.npy")
OUT = HERE / "out"
PY = sys.executable
QINSPECT = [PY, "-m", "qinspect"]

MMAP_PASS = """
import sys, torch, numpy as np
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
for v in sd.values():
    if isinstance(v, tuple) and isinstance(v[0], torch.Tensor) and v[0].is_quantized:
        w = v[0]
        a = torch.empty(0, dtype=torch.int8).set_(
            w.untyped_storage(), w.storage_offset(), w.size(), w.stride()).numpy()
        a.min(axis=1); a.max(axis=1)
"""

NAIVE_PASS = """
import sys, torch, numpy as np
sd = torch.load(sys.argv[1], weights_only=True)
for v in sd.values():
    if isinstance(v, tuple) and isinstance(v[0], torch.Tensor) and v[0].is_quantized:
        a = v[0].int_repr().numpy()
        a.min(); a.max(); np.bincount((a.astype(np.int64) + 128).ravel(), minlength=256)
"""

QFORWARD = """
import sys, time, statistics
import numpy as np, torch
import torch.ao.quantization as tq
sys.path.insert(0, sys.argv[1])
from resnet import ResNet18Shaped, fuse
torch.backends.quantized.engine = "x86"
built = time.perf_counter()
model = fuse(ResNet18Shaped().eval())
model.qconfig = tq.get_default_qconfig("x86")
qmodel = tq.convert(tq.prepare(model))
qmodel.load_state_dict(torch.load(sys.argv[2], weights_only=True))
x = torch.from_numpy(np.load(sys.argv[3]))
loaded = time.perf_counter()
times = []
with torch.no_grad():
    for _ in range(6):
        start = time.perf_counter()
        qmodel(x)
        times.append(time.perf_counter() - start)
print("INPROC", statistics.median(times[1:]), "FIRST", times[0],
      "BUILD", loaded - built + times[0])
"""

VERIFY_INPROC = """
import sys, time, warnings
import torch, qinspect
warnings.filterwarnings("ignore")
start = time.perf_counter()
qinspect.verify(sys.argv[1], input=sys.argv[2], reference=sys.argv[3], model=sys.argv[4])
print("INPROC", time.perf_counter() - start)
"""

DIFF_PASS = """
import sys, torch, numpy as np
for path in sys.argv[1:]:
    sd = torch.load(path, mmap=True, weights_only=True)
    for v in sd.values():
        t = v[0] if isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor) else v
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_quantized:
            t = torch.empty(0, dtype=torch.int8).set_(
                t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
        np.max(t.detach().numpy())
"""

COMPARE_WEIGHTS = """
import sys, torch
from torch.ao.ns._numeric_suite import compare_weights
from torch.ao.ns.fx.utils import compute_sqnr
float_sd = torch.load(sys.argv[1], weights_only=True)
q_sd = torch.load(sys.argv[2], weights_only=True)
result = compare_weights(float_sd, q_sd)
for key, pair in result.items():
    print(key, float(compute_sqnr(pair["float"], pair["quantized"].dequantize())))
"""

READ_FILES = """
import sys
for path in sys.argv[1:]:
    with open(path, 'rb', buffering=0) as fh:
        while fh.read(1 << 24):
            pass
"""


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    kind: str  # "qinspect" or "baseline"


@dataclass(frozen=True)
class Result:
    name: str
    kind: str
    median_s: float
    runs_s: list[float]
    peak_rss_mb: float
    exit_code: int
    inproc_s: float | None = None
    first_s: float | None = None
    build_s: float | None = None


def measure(case: Case, repeat: int) -> Result:
    times, rss, code = [], 0.0, 0
    inproc: dict[str, list[float]] = {"INPROC": [], "FIRST": [], "BUILD": []}
    for _ in range(repeat):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errf:
            start = time.perf_counter()
            proc = subprocess.Popen(case.argv, stdout=out, stderr=errf, cwd=HERE)
            _, status, usage = os.wait4(proc.pid, 0)
            times.append(time.perf_counter() - start)
            rss = max(rss, usage.ru_maxrss / 1024)
            code = os.waitstatus_to_exitcode(status)
            out.seek(0)
            errf.seek(0)
            if code not in (0, 1):
                err = errf.read().decode(errors="replace")
                raise SystemExit(f"{case.name} failed with exit {code}: {err.strip()[:500]}")
            words = out.read()[-4096:].decode(errors="replace").split()
            for key, values in inproc.items():
                if key in words:
                    values.append(float(words[words.index(key) + 1]))
    med = {k: statistics.median(v) if v else None for k, v in inproc.items()}
    return Result(case.name, case.kind, statistics.median(times), times, rss, code,
                  med["INPROC"], med["FIRST"], med["BUILD"])


def cases(int8: Path, fp32: Path, qat: Path) -> list[Case]:
    rn_int8, rn_fp32, rn_input = (str(OUT / n) for n in RESNET)
    pair = [str(OUT / "fp32_pair.pt"), str(OUT / "int8_pair.pt")]
    model = f"{HERE / 'resnet.py'}:ResNet18Shaped"
    return [
        Case("import torch", [PY, "-c", "import torch"], "baseline"),
        Case("import torch + mmap load of the diff pair + one numpy pass",
             [PY, "-c", DIFF_PASS, *pair], "baseline"),
        Case("Numeric Suite compare_weights ResNet-18 (import torch + load both)",
             [PY, "-c", COMPARE_WEIGHTS, rn_fp32, rn_int8], "baseline"),
        Case("qinspect diff fp32_pair int8_pair", [*QINSPECT, "diff", *pair], "qinspect"),
        Case("qinspect diff resnet fp32 int8", [*QINSPECT, "diff", rn_fp32, rn_int8],
             "qinspect"),
        Case("torch.load(mmap=True) + one numpy pass", [PY, "-c", MMAP_PASS, str(int8)],
             "baseline"),
        Case("naive torch.load + int_repr() stats", [PY, "-c", NAIVE_PASS, str(int8)],
             "baseline"),
        Case("read both diff files once", [PY, "-c", READ_FILES, str(fp32), str(int8)],
             "baseline"),
        Case("qinspect --help", [*QINSPECT, "--help"], "qinspect"),
        Case("qinspect show int8_1g", [*QINSPECT, "show", str(int8)], "qinspect"),
        Case("qinspect show --json int8_1g", [*QINSPECT, "show", "--json", str(int8)],
             "qinspect"),
        Case("qinspect show qat_1g", [*QINSPECT, "show", str(qat)], "qinspect"),
        Case("qinspect diff fp32_1g int8_1g", [*QINSPECT, "diff", str(fp32), str(int8)],
             "qinspect"),
        Case("qinspect check int8_1g", [*QINSPECT, "check", str(int8)], "qinspect"),
        Case("quantized ResNet-18 forward (build + load + run)",
             [PY, "-c", QFORWARD, str(HERE), rn_int8, rn_input], "baseline"),
        Case("qinspect verify resnet (file mode)",
             [*QINSPECT, "verify", rn_int8, "--input", rn_input], "qinspect"),
        Case("qinspect verify resnet --model",
             [*QINSPECT, "verify", rn_int8, "--input", rn_input, "--reference", rn_fp32,
              "--model", model], "qinspect"),
        Case("qinspect.verify() resnet --model (in-process)",
             [PY, "-c", VERIFY_INPROC, rn_int8, rn_input, rn_fp32, model], "qinspect"),
    ]


ISSUE12 = ("import torch", "import torch + mmap load of the diff pair + one numpy pass",
           "Numeric Suite compare_weights ResNet-18 (import torch + load both)",
           "qinspect show int8_1g", "qinspect check int8_1g",
           "qinspect diff fp32_pair int8_pair", "qinspect diff resnet fp32 int8")


def issue12(results: dict[str, Result], file_mb: float) -> list[tuple[str, float, float, str]]:
    """(target, measured, bound, verdict) for each target of issue 12."""
    out = []
    torch_s = results["import torch"].median_s
    for name in ("qinspect show int8_1g", "qinspect check int8_1g"):
        if name in results:
            value = results[name].median_s / torch_s
            out.append((f"{name} / import torch alone", value, 1.0,
                        "ok" if value < 1.0 else "MISSED"))
    if "qinspect show int8_1g" in results:
        rss = results["qinspect show int8_1g"].peak_rss_mb - file_mb
        out.append(("show int8_1g peak RSS - file size (MB)", rss, 300.0,
                    "ok" if rss <= 300 else "MISSED"))
    base = results.get("import torch + mmap load of the diff pair + one numpy pass")
    if base and "qinspect diff fp32_pair int8_pair" in results:
        value = results["qinspect diff fp32_pair int8_pair"].median_s / base.median_s
        out.append(("diff 1.07 GB fp32 / 0.27 GB int8 pair / (import torch + mmap load + one "
                    "numpy pass)", value, 2.0, "ok" if value <= 2.0 else "MISSED"))
    base = results.get("Numeric Suite compare_weights ResNet-18 (import torch + load both)")
    if base and "qinspect diff resnet fp32 int8" in results:
        value = results["qinspect diff resnet fp32 int8"].median_s / base.median_s
        out.append(("diff ResNet-18 / Numeric Suite compare_weights script", value, 1.0,
                    "ok" if value < 1.0 else "MISSED"))
    return out


def ratios(results: dict[str, Result], file_mb: float) -> list[tuple[str, float, float, str]]:
    """(target, measured, bound, verdict) for each target of issue 7."""
    out = []
    mmap = results["torch.load(mmap=True) + one numpy pass"].median_s
    for name in ("qinspect show int8_1g", "qinspect show --json int8_1g"):
        value = results[name].median_s / mmap
        out.append((f"{name} / (import torch + mmap load + one pass)", value, 1.5,
                    "ok" if value <= 1.5 else "MISSED"))
    rss = results["qinspect show int8_1g"].peak_rss_mb
    out.append(("show peak RSS - file size (MB)", rss - file_mb, 300.0,
                "ok" if rss - file_mb <= 300 else "MISSED"))
    read = results["read both diff files once"].median_s
    value = results["qinspect diff fp32_1g int8_1g"].median_s / read
    out.append(("qinspect diff 1 GB pair / reading both files once", value, 2.0,
                "ok" if value <= 2.0 else "MISSED"))
    help_imports = results["qinspect --help"].median_s / results["import torch"].median_s
    out.append(("qinspect --help / import torch", help_imports, 1.0,
                "ok" if help_imports < 1.0 else "MISSED"))
    value = results["qinspect check int8_1g"].median_s / mmap
    out.append(("qinspect check int8_1g / (import torch + mmap load + one pass)", value, 1.5,
                "ok" if value <= 1.5 else "MISSED"))
    fwd = results["quantized ResNet-18 forward (build + load + run)"]
    for name in ("qinspect verify resnet --model", "qinspect verify resnet (file mode)"):
        value = results[name].median_s / fwd.median_s
        out.append((f"{name} / quantized forward, whole processes", value, 15.0,
                    "ok" if value <= 15 else "MISSED"))
    inproc = results["qinspect.verify() resnet --model (in-process)"].inproc_s
    if inproc is not None and fwd.inproc_s:
        value = inproc / fwd.inproc_s
        out.append(("qinspect.verify() --model / one warm quantized forward, in-process",
                    value, 15.0, "ok" if value <= 15 else "MISSED"))
        value = inproc / (fwd.build_s or fwd.inproc_s)
        out.append(("qinspect.verify() --model / (build quantized model + load + first "
                    "forward), in-process", value, 15.0, "ok" if value <= 15 else "MISSED"))
    return out


def machine() -> dict[str, str]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": str(os.cpu_count()), "processor": platform.processor() or "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="run only cases whose name contains this (any case)")
    parser.add_argument("--issue12", action="store_true",
                        help="run only the cases of issue 12's targets")
    args = parser.parse_args()
    int8, fp32, qat = OUT / "int8_1g.pt", OUT / "fp32_1g.pt", OUT / "qat_1g.pt"
    make = [PY, str(HERE / "make_inputs.py"), "--out", str(OUT)]
    groups = {"linear": (int8, fp32), "pair": (OUT / "fp32_pair.pt", OUT / "int8_pair.pt"),
              "qat": (qat,), "resnet": tuple(OUT / n for n in RESNET)}
    only = (args.only or "").lower()
    todo = [c for c in cases(int8, fp32, qat) if only in c.name.lower()
            and (not args.issue12 or c.name in ISSUE12)]
    needed = {g for g, paths in groups.items()
              if any(str(p) in c.argv for c in todo for p in paths)}
    for group in sorted(needed):
        if not all(p.exists() for p in groups[group]):
            subprocess.run([*make, "--only", group], check=True)
    load_before = os.getloadavg()
    results = {}
    for case in todo:
        results[case.name] = measure(case, args.repeat)
        r = results[case.name]
        print(f"  {r.name:<55} {r.median_s:7.2f} s  {r.peak_rss_mb:7.0f} MB", file=sys.stderr)
    report = {"machine": machine(), "results": [asdict(r) for r in results.values()]}
    print("| case | median wall (s) | peak RSS (MB) | in-process (s) |\n|---|---:|---:|---:|")
    for r in results.values():
        extra = "" if r.inproc_s is None else f"{r.inproc_s:.3f}"
        if r.first_s is not None:
            extra += f" (first call {r.first_s:.3f}, with build + load {r.build_s:.3f})"
        print(f"| {r.name} | {r.median_s:.2f} | {r.peak_rss_mb:.0f} | {extra} |")
    file_mb = int8.stat().st_size / 2**20 if int8.exists() else 0.0
    rows12 = issue12(results, file_mb)
    if rows12:
        report["issue12"] = [dict(zip(("target", "measured", "bound", "verdict"), row,
                                      strict=True)) for row in rows12]
        print("\n| issue 12 target | measured | bound | verdict |\n|---|---:|---:|---|")
        for target, value, bound, verdict in rows12:
            print(f"| {target} | {value:.2f} | {bound:g} | {verdict} |")
    if not args.only and not args.issue12:
        rows = ratios(results, file_mb)
        report["targets"] = [dict(zip(("target", "measured", "bound", "verdict"), row,
                                      strict=True)) for row in rows]
        print("\n| target | measured | bound | verdict |\n|---|---:|---:|---|")
        for target, value, bound, verdict in rows:
            print(f"| {target} | {value:.2f} | {bound:g} | {verdict} |")
    report["load_average"] = os.getloadavg()
    print(f"\nmachine: {report['machine']}; load average before/after: "
          f"{load_before[0]:.2f} / {report['load_average'][0]:.2f}")
    (OUT / "results.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

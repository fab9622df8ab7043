"""Run qinspect commands on hostile files, many per process, each measured on its own.

Started by :mod:`runner` as ``python _worker.py AS_HEADROOM_BYTES``. It imports torch and
qinspect once, caps its address space (so a runaway allocation fails instead of taking
the machine down), then reads one JSON job per line on stdin and answers one JSON line:
exit code, stderr, the head of stdout, control characters found in the output, seconds,
and the growth of peak RSS during the job (``/proc/self/clear_refs`` resets the peak).

Job output is captured at the Python level (``sys.stdout``/``sys.stderr``) and at the
file-descriptor level (C++ warnings write to fd 2), so nothing reaches the protocol pipe,
which is a private duplicate of the original stdout.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import sys
import tempfile
import time
import traceback

# characters that must never reach a terminal from a file: C0 controls except \t and \n,
# DEL, C1 controls (\x9b is a one-byte CSI) and bidi overrides/isolates
FORBIDDEN = {chr(c) for c in range(0x20) if chr(c) not in "\t\n"} | {chr(0x7F)}
FORBIDDEN |= {chr(c) for c in range(0x80, 0xA0)}
FORBIDDEN |= set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


READER = None
DEFAULT_MMAP_MIN = 1 << 30


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def main() -> None:
    headroom = int(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 1)
    os.dup2(capture.fileno(), 2)

    import torch

    torch.set_num_threads(1)
    from qinspect.cli import main as cli_main
    from qinspect.loaders import reader

    global READER, DEFAULT_MMAP_MIN
    READER, DEFAULT_MMAP_MIN = reader, reader.MMAP_MIN_BYTES

    vm = _status("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.RLIM_INFINITY))
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        proto.write(json.dumps(_run(cli_main, job, capture)) + "\n")


class _Stderr(io.StringIO):
    """Captures stderr and, when the CLI's last line of defence reports an internal error,
    the traceback of the exception it is handling (to name the file that raised it)."""

    trace: str | None = None

    def write(self, text: str) -> int:
        if "internal error (" in text and self.trace is None:
            self.trace = traceback.format_exc()
        return super().write(text)


def _origin(trace: str | None) -> str | None:
    """``qinspect/x/y.py:N`` of the innermost qinspect frame of a traceback."""
    if not trace:
        return None
    frames = [line.strip() for line in trace.splitlines()
              if line.strip().startswith('File "') and "/qinspect/" in line]
    if not frames:
        return None
    path, _, rest = frames[-1][len('File "'):].partition('", line ')
    return f"qinspect/{path.rsplit('/qinspect/', 1)[1]}:{rest.split(',')[0]}"


def _run(cli_main, job: dict, capture) -> dict:
    capture.seek(0)
    capture.truncate()
    _reset_peak()
    rss_before = _status("VmRSS")
    out, err = io.StringIO(), _Stderr()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    escaped = None
    # half of the jobs read zip archives through a memory map (the path qinspect takes
    # for files of MMAP_MIN_BYTES and more), the others into memory (the default)
    READER.MMAP_MIN_BYTES = 0 if job.get("mmap") else DEFAULT_MMAP_MIN
    start = time.perf_counter()
    try:
        cli_main(job["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:  # reported: main() must never let one escape
        code = -1
        escaped = traceback.format_exc()
    seconds = time.perf_counter() - start
    sys.stdout, sys.stderr = old
    peak = _status("VmHWM") - rss_before
    sys.stdout.flush()
    capture.seek(0)
    fd_text = capture.read().decode("utf-8", "replace")
    out_text, err_text = out.getvalue(), err.getvalue() + fd_text
    # free this job's objects (and with them its memory maps) now; survivors are
    # long-lived module state, frozen so the next collection skips them (a full
    # collection over torch's objects costs ~0.1 s)
    gc.collect()
    gc.freeze()
    return {
        "id": job["id"],
        "code": code,
        "err": err_text[:4000],
        "out_head": out_text[:2000],
        "out_len": len(out_text),
        "bad_chars": sorted({f"U+{ord(c):04X}" for c in out_text + err_text
                             if c in FORBIDDEN}),
        "missing": [n for n in job.get("needles", []) if n not in out_text + err_text],
        "traceback": "Traceback (most recent call last)" in out_text + err_text,
        "seconds": seconds,
        "peak_kb": max(peak, 0),
        "escaped": escaped,
        "origin": _origin(err.trace or escaped),
    }


if __name__ == "__main__":
    main()

"""`show` on a multi-hundred-MB checkpoint stays within a peak-RSS bound (not a time bound).

Int values are numpy views of the storage records and `show` imports no torch, so peak
RSS is the file's bytes plus what the interpreter with numpy costs plus a little; copies
of the weights (int_repr, int64 widening) would add hundreds of MB and fail this test, and
so would `import torch` (about 220-270 MB on its own). The baseline is measured in the same
run, because what an import costs in RSS varies between machines and file systems.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.ao.nn.quantized as nnq

LAYERS, OUT, IN = 10, 4096, 8192  # about 335 MB of int8 weights
HEADROOM_MB = 100  # beyond the file and `import numpy, rich`


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(LAYERS):
        ints = torch.randint(-128, 128, (OUT, IN), generator=g, dtype=torch.int8)
        scales = torch.rand(OUT, generator=g, dtype=torch.float64) * 1e-3 + 1e-4
        qw = torch._make_per_channel_quantized_tensor(
            ints, scales, torch.zeros(OUT, dtype=torch.long), 0)
        mod = nnq.Linear(IN, OUT)
        mod.set_weight_bias(qw, torch.zeros(OUT))
        sd.update({f"layers.{i}.{k}": v for k, v in mod.state_dict().items()})
        del ints, qw, mod
    path = tmp_path_factory.mktemp("big") / "big_int8.pt"
    torch.save(sd, path)
    return path


# Linux records the old address space's peak RSS into a process's ru_maxrss at exec, and
# subprocess forks (vfork) from this test process, which holds the generated weights. A
# small launcher process starts the command instead, so only the command's own peak counts.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(proc.stderr.read().decode(errors="replace"))
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def _peak_rss_mb(argv: list[str]) -> tuple[float, int, str]:
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], capture_output=True,
                          text=True, check=True)
    maxrss_kb, code = done.stdout.split()
    return int(maxrss_kb) / 1024, int(code), done.stderr


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_show_peak_rss_is_file_plus_numpy_plus_headroom(big_checkpoint, extra):
    file_mb = big_checkpoint.stat().st_size / 2**20
    assert file_mb > 300
    base_mb, code, err = _peak_rss_mb([sys.executable, "-c", "import numpy, rich"])
    assert code == 0, err
    rss, code, err = _peak_rss_mb([sys.executable, "-m", "qinspect", "show",
                                   str(big_checkpoint), *extra])
    assert code == 0, err
    bound = file_mb + base_mb + HEADROOM_MB
    assert rss <= bound, (f"peak RSS {rss:.0f} MB for a {file_mb:.0f} MB file "
                          f"(python with numpy and rich alone: {base_mb:.0f} MB)")

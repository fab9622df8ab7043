"""Pin torch's CPU kernels to one code path, so the samples are the same on any x86-64 CPU.

torch picks its float kernels by the CPU it runs on: ATen's vectorised kernels
(DEFAULT/AVX2/AVX512), MKL's sgemm (Linear forward/backward) and oneDNN's convolutions
each sum in another order on another instruction set, so QAT steps, BatchNorm statistics
and calibration ranges differ in their last bits between, say, an AVX2 and an AVX-512
machine. The three variables below make each library take the same path on every x86-64
CPU that has AVX2 (every x86 CI machine of the last decade):

========================  ===========  =================================================
ATEN_CPU_CAPABILITY       avx2         ATen's AVX2 kernels, also on AVX-512 machines
                                       (``default`` would also change the draws of
                                       torch.randn / normal_, seen in lstm_sample.npy)
MKL_CBWR                  COMPATIBLE   MKL's conditional numerical reproducibility mode
ONEDNN_MAX_CPU_ISA        SSE41        oneDNN's convolutions capped at SSE4.1 kernels
========================  ===========  =================================================

Measured with torch 2.13.0 CPU on an AVX2 machine (sample_checkpoints/README.md):
each variable on its own changes sample files, and with all three set two runs are
identical. torch reads them when it starts, so :func:`pin` must run before
``import torch``; :func:`check` refuses to make samples in a process that was not pinned
(or whose CPU has no AVX2).
"""

from __future__ import annotations

import os
import sys

__all__ = ["PINNED_ENV", "pin", "check"]

PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}


def pin() -> None:
    """Set :data:`PINNED_ENV` in this process (and its children); call before importing torch.

    If torch is already imported it is too late to change its kernels: then this only
    checks that the process was started pinned (see :func:`check`).
    """
    if "torch" in sys.modules:
        check()
        return
    os.environ.update(PINNED_ENV)


def check() -> None:
    """Raise RuntimeError unless torch in this process runs the pinned kernels."""
    import torch

    wrong = {k: os.environ.get(k) for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    capability = torch.backends.cpu.get_cpu_capability()
    if wrong or capability != "AVX2":
        setting = " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
        raise RuntimeError(
            f"sample flows need torch's CPU kernels pinned (ATen capability is {capability}, "
            f"environment has {wrong or 'the variables'}): import sample_checkpoints/"
            f"reproducible.py and call pin() before importing torch, or run with {setting}"
        )

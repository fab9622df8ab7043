"""Fixtures for the Hugging Face sample tests: one regeneration of every sample per run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def regenerated_hf(tmp_path_factory) -> Path:
    """Every HF sample made again by make_hf_samples.py into a temporary folder (a subprocess:
    the producers patch torch and transformers globals that the rest of the suite should not
    inherit)."""
    out = tmp_path_factory.mktemp("hf_regen")
    subprocess.run([sys.executable, str(ROOT / "sample_checkpoints" / "make_hf_samples.py"),
                    "--out", str(out)], check=True, capture_output=True, timeout=900)
    return out

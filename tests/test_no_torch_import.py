"""``show``, ``check`` (without ``--input``) and ``diff`` read every format without importing
torch (issue 12): the file is read by qinspect's own pickle reader into numpy views, so
no byte of it reaches torch's unpickler, and no run pays ``import torch``.

Checked the way a user would see it: ``python -X importtime -m qinspect ...`` in a fresh
process lists every module imported; torch must not be among them."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
FILES = {
    "eager": "mlp_int8_fbgemm.pt",
    "eager per-channel conv": "convnet_int8.pt",
    "dynamic LSTM (ScriptObject state)": "lstm_dynamic_int8.pt",
    "4-bit embeddings": "embbag_4bit.pt",
    "TorchScript": "eager_mlp_int8_ts.pt",
    "pickled FX GraphModule": "fx_mlp_int8_graphmodule.pt",
    "torchao": "torchao_int8wo.pt",
    ".pt2": "pt2e_mlp_xnnpack.pt2",
}


def _imported(argv: list[str], cwd: Path) -> tuple[int, set[str], str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "qinspect", *argv],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    return done.returncode, modules, done.stderr


def _safetensors(path: Path) -> Path:
    """A small safetensors file (header length, JSON header, raw little-endian data)."""
    data = struct.pack("<4f", 1.0, -2.0, 0.5, 0.25)
    header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2, 2],
                                       "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("kind", list(FILES))
@pytest.mark.parametrize("command", ["show", "check", "diff"])
def test_reading_a_file_imports_no_torch(tmp_path, kind, command):
    path = str(SAMPLES / FILES[kind])
    argv = {"show": ["show", path], "check": ["check", path],
            "diff": ["diff", str(SAMPLES / "mlp_fp32.pt"), path]}[command]
    code, modules, err = _imported(argv, tmp_path)
    assert code in (0, 1), err[-2000:]
    assert "qinspect.loaders" in modules, "importtime listed no qinspect module"
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, (
        f"{command} {kind} imported torch")


def test_safetensors_imports_no_torch(tmp_path):
    path = _safetensors(tmp_path / "m.safetensors")
    for argv in (["show", str(path)], ["check", str(path)]):
        code, modules, err = _imported(argv, tmp_path)
        assert code in (0, 1, 2), err[-2000:]
        assert "torch" not in modules, f"{argv[0]} on safetensors imported torch"

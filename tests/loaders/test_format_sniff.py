"""Format detection from the bytes, foreign formats named, every sample shown."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qinspect.loaders.sniff import sniff

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"
SCHEMA = ROOT / "qinspect" / "schemas" / "show-1.json"
FORMAT_SAMPLES = {
    "fx_mlp_int8_state_dict.pt": "FX graph mode state_dict",
    "fx_mlp_int8_ts.pt": "TorchScript archive (FX GraphModule)",
    "fx_mlp_int8_graphmodule.pt": "FX GraphModule pickle",
    "eager_mlp_int8_ts.pt": "TorchScript archive (EagerFormatNet)",
    "pt2e_mlp_xnnpack.pt2": "torch.export archive (.pt2) PT2E-quantized",
    "pt2e_mlp_x86.pt2": "torch.export archive (.pt2) PT2E-quantized",
    "torchao_int8wo.pt": "torchao quantize_ state_dict",
    "torchao_int8dyn.pt": "torchao quantize_ state_dict",
    "torchao_int4wo_cpu.pt": "torchao quantize_ state_dict",
}


@pytest.mark.parametrize("name", sorted(FORMAT_SAMPLES))
def test_every_format_sample_shows(cli, name):
    import jsonschema

    path = SAMPLES / name
    human = cli("show", path, "--explain")
    assert human.code == 0, human.err
    assert FORMAT_SAMPLES[name] in " ".join(human.out.split())
    doc = json.loads(cli("show", path, "--json", "--explain").out)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["format"].startswith(FORMAT_SAMPLES[name])
    assert not doc["unrecognised"]


def test_samples_stay_small():
    total = sum((SAMPLES / n).stat().st_size for n in FORMAT_SAMPLES)
    assert total < 2 * 2**20


@pytest.mark.parametrize("head, found", [
    (b"GGUF\x03\x00\x00\x00" + bytes(64), "GGUF"),
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5"),
    (b"\x00\x00\x00\x00TFL3" + bytes(64), "TensorFlow Lite"),
    (bytes(range(200, 256)) * 2, "first bytes c8 c9 ca"),
])
def test_foreign_files_exit_2_and_say_what_they_are(cli, tmp_path, head, found):
    p = tmp_path / "model.bin"
    p.write_bytes(head)
    result = cli("show", p)
    assert result.code == 2
    assert found in result.err and len(result.err.strip().splitlines()) == 1


def test_npz_is_named(cli, tmp_path):
    p = tmp_path / "weights.npz"
    np.savez(p, a=np.zeros(3))
    result = cli("show", p)
    assert result.code == 2 and "NumPy .npz" in result.err and "a.npy" in result.err


def test_zip_kinds_are_told_apart(tmp_path):
    ts = tmp_path / "ts.pt"
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("m/constants.pkl", b"")
        zf.writestr("m/code/__torch__/m.py", b"")
    assert sniff(ts).kind == "torchscript"
    pt2 = tmp_path / "m.pt2"
    with zipfile.ZipFile(pt2, "w") as zf:
        zf.writestr("m/archive_format", b"pt2")
    assert sniff(pt2).kind == "torch.export"
    assert sniff(SAMPLES / "torchao_int8wo.pt").kind == "torchao"
    assert sniff(SAMPLES / "fx_mlp_int8_graphmodule.pt").kind == "fx-graphmodule-pickle"
    assert sniff(SAMPLES / "fx_mlp_int8_state_dict.pt").kind == "torch.save"

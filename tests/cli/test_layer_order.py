"""Every list of layers in module order, numbers in names as numbers (issue 19).

Files with 12 numbered layers, so that textual order (``layers.10`` before ``layers.2``)
and module order differ."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torch_models as tm

from qinspect.names import module_key, natural_key

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
N = 12


def test_natural_key_orders_numbers_as_numbers():
    names = ["layers.10.fc", "layers.2.fc", "layers.1.fc", "lstm.weight_ih_l10",
             "lstm.weight_ih_l9", "fc"]
    assert sorted(names, key=natural_key) == [
        "fc", "layers.1.fc", "layers.2.fc", "layers.10.fc", "lstm.weight_ih_l9",
        "lstm.weight_ih_l10"]


def test_module_key_follows_a_decoder_forward_order():
    block = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
             "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    names = ["lm_head", *(f"model.layers.{i}.{b}" for i in (10, 2) for b in block)]
    assert sorted(names, key=module_key) == [
        *(f"model.layers.{i}.{b}" for i in (2, 10) for b in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
        "lm_head"]


def test_diff_sort_name_is_natural(cli, tmp_path):
    gen = torch.Generator().manual_seed(0)
    a = {f"layers.{i}.{p}": torch.randn(4, 4 if p == "weight" else 1, generator=gen).squeeze()
         for i in range(N) for p in ("weight", "bias")}
    b = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
    r = cli("diff", tm.save(a, tmp_path / "a.pt"), tm.save(b, tmp_path / "b.pt"),
            "--sort", "name", "--json")
    assert r.code == 0, r.err
    names = [lay["name"] for lay in json.loads(r.out)["layers"]]
    assert names == [f"layers.{i}" for i in range(N)]


def _read(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.fixture(scope="module")
def llama12(tmp_path_factory) -> Path:
    """The GPTQ sample's one decoder block stored 12 times (``model.layers.0`` .. ``11``),
    its safetensors header sorted by name as writers store it."""
    src = SAMPLES / "hf" / "gptq_8bit"
    out = tmp_path_factory.mktemp("llama12")
    for f in src.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_hidden_layers"] = N
    (out / "config.json").write_text(json.dumps(cfg))
    header, data = _read(src / "model.safetensors")
    header.pop("__metadata__", None)
    tensors = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        copies = [key.replace("layers.0.", f"layers.{i}.") for i in range(N)] \
            if "layers.0." in key else [key]
        for name in copies:
            tensors[name] = (info, data[start:end])
    new_header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        info, blob = tensors[name]
        new_header[name] = {"dtype": info["dtype"], "shape": info["shape"],
                            "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(new_header).encode()
    raw += b" " * (-len(raw) % 8)
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return out


def _llama_order() -> list[str]:
    block = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    return [f"model.layers.{i}.{b}" for i in range(N) for b in block]


def test_hf_show_lists_layers_in_forward_order(cli, llama12):
    r = cli("show", llama12, "--json")
    assert r.code == 0, r.err
    names = [lay["name"] for lay in json.loads(r.out)["layers"]
             if lay["name"].startswith("model.layers.") and lay["name"].endswith("proj")]
    assert names == _llama_order()
    human = cli("show", llama12)
    rows = [line.split()[0] for line in human.out.splitlines()
            if line.split() and line.split()[0].endswith("proj")]
    assert rows == [n.removeprefix("model.layers.") for n in _llama_order()]


def test_hf_verify_and_check_follow_the_same_order(cli, llama12):
    r = cli("verify", llama12, "--json")
    assert r.code == 0, r.err
    assert [lay["name"] for lay in json.loads(r.out)["layers"]] == _llama_order()
    r = cli("check", llama12, "--json")
    assert r.code == 0, r.err
    checks = json.loads(r.out)["checks"]
    per_layer = [c["layer"] for c in checks if c["rule"] == "QI005"]
    assert per_layer == _llama_order()

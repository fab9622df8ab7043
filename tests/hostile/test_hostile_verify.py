"""verify on files and inputs that show and check already flag: every bad qparam, shape or
graph reference is the file's or the input's error (exit 2, one line naming the layer,
node or key), never an "internal error" from torch deep inside a run.

The files are real flows' outputs (eager PTQ scripted and saved, a PT2E program), with one
thing broken the way a damaged or hostile file breaks it: a NaN QuantStub scale saved by
torch itself, a graph node reading a name nothing defines or whose producer was deleted,
a per-channel weight recorded with rank 0, a NaN activation scale in the program JSON,
and an input array of rank 32.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import runner
from conftest import SAMPLES

PT2 = SAMPLES / "pt2e_mlp_x86.pt2"
INPUT = SAMPLES / "format_net_input.npy"


def _one_line_exit_2(pool, name: str, argv: list[str], needle: str) -> None:
    outcome = pool.run_one(name, [str(a) for a in argv])
    problems = runner.judge(outcome, (2,))
    assert not problems, (problems, outcome.err)
    line = outcome.err.strip()
    assert "\n" not in line and "internal error" not in line, line
    assert needle in line, line


def _rewrite_pt2(tmp: Path, name: str, edit) -> Path:
    """A copy of the sample .pt2 with its program JSON (and weights config) edited."""
    out = tmp / f"{name}.pt2"
    with zipfile.ZipFile(PT2) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith((".json",)) and "constants" not in info.filename:
                doc = json.loads(data)
                doc = edit(info.filename, doc)
                data = json.dumps(doc).encode()
            dst.writestr(info, data)
    return out


def _nodes(doc: dict) -> list[dict]:
    return doc["graph_module"]["graph"]["nodes"]


def _conv_reads(filename: str, doc: dict, name: str) -> dict:
    if filename.endswith("models/model.json"):
        conv = next(n for n in _nodes(doc) if n["target"].endswith("conv2d.default"))
        conv["inputs"][0]["arg"] = {"as_tensor": {"name": name}}
    return doc


def _delete_producer(filename: str, doc: dict) -> dict:
    if filename.endswith("models/model.json"):
        nodes = _nodes(doc)
        conv = next(n for n in nodes if n["target"].endswith("conv2d.default"))
        read = conv["inputs"][0]["arg"]["as_tensor"]["name"]
        doc["graph_module"]["graph"]["nodes"] = [
            n for n in nodes if not any(o.get("as_tensor", {}).get("name") == read
                                        for o in n["outputs"])]
    return doc


def _nan_activation_scale(filename: str, doc: dict) -> dict:
    if filename.endswith("models/model.json"):
        q = next(n for n in _nodes(doc) if "quantize_per_tensor" in n["target"])
        q["inputs"][1]["arg"] = {"as_float": float("nan")}
    return doc


def _rank0_scales(filename: str, doc: dict) -> dict:
    """The per-channel weight's scales recorded as a 0-d tensor (its data unchanged)."""
    if filename.endswith("model_weights_config.json") or filename.endswith("model.json"):
        text = json.dumps(doc)
        doc = json.loads(text)
        _zero_rank(doc, "scale_0")
    return doc


def _zero_rank(node, needle: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if needle in str(key) and isinstance(value, dict):
                meta = value.get("tensor_meta", value)
                if isinstance(meta, dict) and "sizes" in meta:
                    meta["sizes"], meta["strides"] = [], []
            _zero_rank(value, needle)
    elif isinstance(node, list):
        for value in node:
            _zero_rank(value, needle)


@pytest.mark.parametrize("case,edit,needle", [
    ("missing-name", lambda f, d: _conv_reads(f, d, "no_such_tensor"), "no_such_tensor"),
    ("deleted-node", _delete_producer, "dequantize_per_tensor"),
    ("nan-activation-scale", _nan_activation_scale, ""),
    ("rank0-channel-scales", _rank0_scales, ""),
])
def test_damaged_pt2_graph_is_the_files_error(pool, tmp_path, case, edit, needle):
    path = _rewrite_pt2(tmp_path, case, edit)
    _one_line_exit_2(pool, case, ["verify", path, "--input", INPUT, "--quiet"], needle)


def test_nan_quantstub_scale_in_torchscript_is_the_files_error(pool, tmp_path):
    import torch

    sys.path.insert(0, str(SAMPLES))
    import make_format_samples as mfs

    made = mfs.eager_flow()
    with torch.no_grad():
        made.quantized.quant.scale.fill_(float("nan"))
    path = tmp_path / "nan_scale_ts.pt"
    torch.jit.save(torch.jit.script(made.quantized), path)
    _one_line_exit_2(pool, "ts-nan-scale", ["verify", path, "--input", INPUT, "--quiet"],
                     "quant")


@pytest.mark.parametrize("target", ["eager_mlp_int8_ts.pt", "fx_mlp_int8_graphmodule.pt",
                                    "pt2e_mlp_x86.pt2", "mlp_int8_fbgemm.pt"])
def test_input_of_rank_32_is_the_inputs_error(pool, tmp_path, target):
    deep = tmp_path / "rank32.npy"
    np.save(deep, np.zeros((1,) * 32, np.float32))
    _one_line_exit_2(pool, f"rank32-{target}",
                     ["verify", SAMPLES / target, "--input", deep, "--quiet"], "dimensions")


@pytest.mark.parametrize("target", ["eager_mlp_int8_ts.pt", "pt2e_mlp_x86.pt2"])
def test_input_of_the_wrong_shape_names_the_input(pool, tmp_path, target):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((2, 64), np.float32))
    _one_line_exit_2(pool, f"shape-{target}",
                     ["verify", SAMPLES / target, "--input", flat, "--quiet"], "--input")

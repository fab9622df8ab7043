"""`qinspect verify` on the command line: output, JSON schema, inputs and user errors."""

from __future__ import annotations

import json
import os
from importlib import resources

import jsonschema
import numpy as np
import pytest
import torch

from qinspect.inputs import read_input


class Evil:
    """Unpickling this would run a shell command: weights-only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _schema() -> dict:
    return json.loads(resources.files("qinspect").joinpath("schemas/verify-2.json").read_text())


def _one_line_error(r, *needles: str) -> str:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("qinspect: error: ") and "Traceback" not in r.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [
    ["mlp_int8_fbgemm.pt", "--input", "sample.npy"],
    ["mlp_int8_qnnpack.pt", "--input", "sample.npy", "--reference", "mlp_fp32.pt"],
    ["convnet_int8.pt"],
    ["lstm_dynamic_int8.pt", "--input", "lstm_sample.npy"],
    ["dynlinear_fp16.pt"],
    ["convnet_int8.pt", "--input", "conv_sample.npy", "--reference", "convnet_fp32.pt",
     "--model", "models.py:SmallConvNet"],
])
def test_json_validates_against_the_schema(cli, samples, args):
    full = [str(samples / a) if a.endswith((".pt", ".npy")) else a for a in args]
    full = [f"{samples / a}" if a.startswith("models.py") else a for a in full]
    r = cli("verify", *full, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    jsonschema.validate(doc, _schema())
    assert doc["schema"] == "qinspect.verify/2"
    assert doc["kernel_mismatches"] == 0
    if "--model" in args:
        assert doc["mode"] == "model" and doc["end_to_end"]["sqnr_db"] > 20
    if "dynlinear_fp16.pt" in args[0]:
        assert all(not lay["verified"] and "float16" in lay["reason"] for lay in doc["layers"])


def test_human_output_has_units_and_names_the_worst_layer(cli, samples):
    r = cli("verify", samples / "convnet_int8.pt", "--input", samples / "conv_sample.npy",
            "--reference", samples / "convnet_fp32.pt", "--model",
            f"{samples / 'models.py'}:SmallConvNet")
    assert r.code == 0, r.err
    out = " ".join(r.out.split())
    for needle in (" dB", " LSB", " %", "bit-exact", "(worst)", "worst ", "loses most",
                   "end-to-end quantized model vs float model: SQNR", "model's real input",
                   "imported and run"):
        assert needle in out, needle
    assert r.err == ""


def test_layer_glob_and_engine_override(cli, samples):
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy",
            "--layer", "fc*", "--engine", "fbgemm", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [lay["name"] for lay in doc["layers"]] == ["fc1", "fc2"]
    assert doc["engine"] == "fbgemm" and doc["engine_reason"] == "chosen with --engine"
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--layer", "nothing*")
    _one_line_error(r, "matches no quantized layer")


def test_help_says_model_runs_user_code(cli):
    r = cli("verify", "--help")
    assert r.code == 0
    assert "imports and runs FILE's code" in " ".join(r.out.split())


# --- bad inputs: exit 2, one line ------------------------------------------------------------


def test_shape_mismatch_says_what_was_expected(cli, samples, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 100), np.float32))
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", tmp_path / "x.npy")
    _one_line_error(r, "(4, 100)", "'fc1'", "expects (N, 784)")
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 28, 28), np.float32))
    r = cli("verify", samples / "convnet_int8.pt", "--input", tmp_path / "c.npy")
    _one_line_error(r, "(2, 3, 28, 28)", "'features.0'", "expects (N, 1, H, W)")
    np.save(tmp_path / "s.npy", np.zeros((5, 2, 7), np.float32))
    r = cli("verify", samples / "lstm_dynamic_int8.pt", "--input", tmp_path / "s.npy")
    _one_line_error(r, "(5, 2, 7)", "(seq, batch, 16)")


@pytest.mark.parametrize("make,needle", [
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "pickle"),
    (lambda p: p.write_text("1 2 3\n"), "not a .npy, .npz or torch.save file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: np.save(p, np.full((4, 784), np.nan, np.float32)), "NaN"),
    (lambda p: np.save(p, np.zeros((4, 784), np.complex64)), "complex"),
    (lambda p: np.save(p, np.zeros((0, 784), np.float32)), "empty"),
    (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\x10\x00{'descr'"), ".npy"),
    (lambda p: torch.save({"x": torch.zeros(2), "evil": Evil()}, p), "refused"),
    (lambda p: torch.save("just a string", p), "not a tensor"),
])
def test_bad_input_files_exit_2(cli, samples, tmp_path, make, needle):
    path = tmp_path / "bad.npy"
    make(path)
    if not path.exists():  # np.save appends .npy only when missing; keep one name
        path = tmp_path / "bad.npy.npy"
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", path)
    _one_line_error(r, needle)


def test_missing_input_and_bad_batch(cli, samples, tmp_path):
    _one_line_error(cli("verify", samples / "mlp_int8_fbgemm.pt", "--input",
                        tmp_path / "nope.npy"), "no such input file")
    _one_line_error(cli("verify", samples / "mlp_int8_fbgemm.pt", "--input",
                        samples / "sample.npy", "--batch", "0"), "--batch 0")


@pytest.mark.parametrize("extra,needle", [
    (["--model", "models.py:MnistMLP"], "--model needs --reference"),
    (["--reference", "mlp_fp32.pt", "--model", "models.py:Nope"], "no attribute 'Nope'"),
    (["--reference", "mlp_fp32.pt", "--model", "nope.py:MnistMLP"], "no such Python file"),
    (["--reference", "mlp_fp32.pt", "--model", "models.py"], "FILE.py:NAME"),
    (["--reference", "convnet_fp32.pt", "--model", "models.py:MnistMLP"], "right model class"),
])
def test_model_option_errors_exit_2(cli, samples, extra, needle):
    full = [str(samples / a) if a.endswith(".pt") else
            (str(samples / a) if a.startswith(("models.py", "nope.py")) else a) for a in extra]
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy", *full)
    _one_line_error(r, needle)


def test_model_that_needs_arguments_or_fails_to_import(cli, samples, tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\nclass NeedsArgs(torch.nn.Module):\n    def __init__(self, n):\n"
        "        super().__init__()\n")
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy",
            "--reference", samples / "mlp_fp32.pt", "--model", f"{tmp_path / 'm.py'}:NeedsArgs")
    _one_line_error(r, "NeedsArgs() failed", "no arguments")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    r = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy",
            "--reference", samples / "mlp_fp32.pt", "--model", f"{tmp_path / 'broken.py'}:X")
    _one_line_error(r, "importing", "RuntimeError: boom")


def test_not_a_converted_checkpoint(cli, samples):
    _one_line_error(cli("verify", samples / "mlp_qat_prepared.pt"), "convert")
    _one_line_error(cli("verify", samples / "mlp_fp32.pt"), "no quantized layer")


# --- input formats -------------------------------------------------------------------------


def test_input_formats_npz_pt_and_batch(tmp_path):
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    b = np.ones((2, 2), np.int64)
    np.savez(tmp_path / "two.npz", first=a, second=b)
    got = read_input(tmp_path / "two.npz")
    assert got.format == "npz" and got.names == ("first", "second")
    assert got.first.dtype == np.float32 and np.array_equal(got.first, a)
    assert got.arrays[1].dtype == np.int64
    assert got.limited(2).first.shape == (2, 4)
    torch.save(torch.ones(3, 4, dtype=torch.float16), tmp_path / "t.pt")
    t = read_input(tmp_path / "t.pt")
    assert t.format == "pt" and t.first.dtype == np.float32 and t.first.shape == (3, 4)
    torch.save({"x": torch.zeros(2, 3), "y": torch.ones(1)}, tmp_path / "d.pth")
    d = read_input(tmp_path / "d.pth")
    assert d.names == ("x", "y") and d.arrays[1].shape == (1,)
    np.save(tmp_path / "renamed.bin", a.astype(np.float32))
    assert read_input(tmp_path / "renamed.bin.npy").format == "npy"


def test_pt_input_runs_like_npy(cli, samples, tmp_path):
    x = np.load(samples / "sample.npy")
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    a = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", tmp_path / "x.pt", "--json")
    b = cli("verify", samples / "mlp_int8_fbgemm.pt", "--input", samples / "sample.npy",
            "--json")
    la = [(lay["name"], lay["sqnr_db"]) for lay in json.loads(a.out)["layers"]]
    lb = [(lay["name"], lay["sqnr_db"]) for lay in json.loads(b.out)["layers"]]
    assert la == lb


def test_model_as_package_module_class(cli, samples):
    """`models` is importable here (conftest puts sample_checkpoints on sys.path)."""
    r = cli("verify", samples / "mlp_fused_int8.pt", "--input", samples / "sample.npy",
            "--reference", samples / "mlp_fused_fp32.pt", "--model", "models:MnistMLPFused",
            "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["mode"] == "model" and doc["model"] == "models:MnistMLPFused"
    assert all(lay["input"]["source"] == "model" for lay in doc["layers"])

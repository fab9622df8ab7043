"""`qinspect show`: human output, --explain, --json (validated against the schema)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import jsonschema
import numpy as np
import pytest
import torch
import torch_models as tm


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    _, _, q = tm.mlp_qat("fbgemm")
    path = tmp_path_factory.mktemp("mlp") / "mlp_int8.pt"
    torch.save(q.state_dict(), path)
    return q, path


def _schema() -> dict:
    return json.loads(resources.files("qinspect").joinpath("schemas/show-1.json").read_text())


def test_show_lists_every_layer_with_roles(cli, mlp):
    _, path = mlp
    r = cli("show", path)
    assert r.code == 0, r.err
    for needle in ("quant", "fc1", "fc2", "Linear", "static", "per-channel (axis 0)",
                   "Every key of the file is attributed"):
        assert needle in r.out
    assert r.err == ""


def test_explain_answers_the_forum_question_with_the_files_numbers(cli, mlp):
    q, path = mlp
    r = cli("show", path, "--explain")
    assert r.code == 0
    text = " ".join(r.out.split())
    scale, zp = q.fc1.scale, q.fc1.zero_point
    lo, hi = (0 - zp) * scale, (255 - zp) * scale
    q_minus_zp = f"(q - {zp})" if zp > 0 else (f"(q + {-zp})" if zp < 0 else "q")
    assert (f"fc1.scale = {scale:.4g} and fc1.zero_point = {zp} are fc1's output-activation "
            f"qparams: an output byte q means {q_minus_zp} x {scale:.4g}, so fc1 can output "
            f"values in [{lo:.4g}, {hi:.4g}]") in text
    qs, qz = float(q.quant.scale), int(q.quant.zero_point)
    assert f"the input is quantized with scale {qs:.4g} and zero point {qz}" in text
    assert "QuantStub 'quant'" in text


def test_json_matches_schema_and_torch(cli, mlp):
    q, path = mlp
    r = cli("show", path, "--json", "--explain")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    jsonschema.validate(doc, _schema())
    assert doc["schema"] == "qinspect.show/1"
    layers = {lay["name"]: lay for lay in doc["layers"]}
    fc1 = layers["fc1"]
    w = q.fc1.weight()
    assert fc1["weight"]["dtype"] == "qint8"
    assert fc1["weight"]["qscheme"] == "per_channel_affine"
    assert fc1["weight"]["axis"] == 0
    np.testing.assert_array_equal(fc1["weight"]["scales"], w.q_per_channel_scales().numpy())
    np.testing.assert_array_equal(fc1["weight"]["zero_points"],
                                  w.q_per_channel_zero_points().numpy())
    assert fc1["weight"]["scale_min"] == float(w.q_per_channel_scales().min())
    assert fc1["output"]["scale"] == q.fc1.scale
    assert fc1["output"]["zero_point"] == q.fc1.zero_point
    assert fc1["input"]["scale"] == float(q.quant.scale)
    assert fc1["input"]["source"] == "quant_stub" and fc1["input"]["inferred"] is True
    assert layers["fc2"]["input"]["source_layer"] == "fc1"
    assert doc["unrecognised"] == []


def test_json_for_every_kind_validates(cli, tmp_path):
    builds = {
        "zoo": tm.conv_zoo()[2].state_dict(),
        "dyn": tm.dynamic(torch.qint8)[1].state_dict(),
        "fp16": tm.dynamic(torch.float16)[1].state_dict(),
        "emb4": tm.embeddings(True)[1].state_dict(),
        "qat": tm.mlp_qat()[1].state_dict(),
        "ptq": tm.ptq_prepared().state_dict(),
    }
    schema = _schema()
    for name, sd in builds.items():
        path = tm.save(sd, tmp_path / f"{name}.pt")
        r = cli("show", path, "--json")
        assert r.code == 0, (name, r.err)
        jsonschema.validate(json.loads(r.out), schema)
        assert cli("show", path, "--explain").code == 0


def test_layer_filter(cli, mlp):
    _, path = mlp
    doc = json.loads(cli("show", path, "--json", "--layer", "fc*").out)
    assert [lay["name"] for lay in doc["layers"]] == ["fc1", "fc2"]


def test_hostile_names_are_escaped(cli, tmp_path):
    evil = "\x1b[2J[red]boom[/red]\x07"
    sd = {f"{evil}.weight": torch.randn(3, 4), f"{evil}.bias": torch.randn(3),
          "x.\x1b]0;title\x07": torch.zeros(1)}
    path = tm.save(sd, tmp_path / "evil.pt")
    r = cli("show", path, "--explain")
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "\\x1b[2J[red]boom[/red]\\x07" in r.out  # markup printed literally, escapes visible


def test_help_does_not_import_torch():
    code = ("import sys\nfrom qinspect.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['show', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'numpy' not in sys.modules, 'numpy was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "show" in done.stdout


def test_python_dash_m_works(mlp):
    _, path = mlp
    done = subprocess.run([sys.executable, "-m", "qinspect", "show", str(path), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layers"][1]["name"] == "fc1"

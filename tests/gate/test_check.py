"""`qinspect check`: each rule broken by a checkpoint made with a real torch flow (then
edited where no flow produces the fault), and the failing rule id + layer asserted in
every output format (human, json validated against the schema, junit parsed as XML,
github annotations)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import torch_models as tm

import qinspect
from qinspect.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:must run observer:UserWarning")
SCHEMA = json.loads(resources.files("qinspect").joinpath("schemas/check-1.json").read_text())
SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@pytest.fixture(autouse=True)
def _no_config(tmp_path, monkeypatch):
    """Run from an empty folder so the repository's pyproject.toml is not the config."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def mlp_sd():
    """A QAT-trained, converted MLP (fbgemm, per-channel weights): passes every rule."""
    return tm.mlp_qat("fbgemm")[2].state_dict()


def _save(sd, tmp_path, name="model.pt") -> str:
    return tm.save(sd, tmp_path / name)


def _with_packed_weight(sd, layer, scales=None, zero_points=None, int_values=None):
    """Rebuild ``layer``'s packed per-channel weight with other qparams or ints."""
    sd = dict(sd)
    w, b = sd[f"{layer}._packed_params._packed_params"]
    s = w.q_per_channel_scales() if scales is None else scales
    z = w.q_per_channel_zero_points() if zero_points is None else zero_points
    q = w.int_repr() if int_values is None else int_values
    sd[f"{layer}._packed_params._packed_params"] = (
        torch._make_per_channel_quantized_tensor(q, s, z, w.q_per_channel_axis()), b)
    return sd


def _requantize(sd, layer, factor):
    """Quantize ``layer``'s weight again with every scale multiplied by ``factor``."""
    w, _ = sd[f"{layer}._packed_params._packed_params"]
    scales = w.q_per_channel_scales() * factor
    q = torch.quantize_per_channel(w.dequantize(), scales, w.q_per_channel_zero_points(),
                                   w.q_per_channel_axis(), torch.qint8)
    return _with_packed_weight(sd, layer, scales=scales, int_values=q.int_repr())


def _errors(doc) -> set[tuple[str, str]]:
    return {(f["rule"], f["layer"]) for f in doc["findings"] if f["severity"] == "error"}


def assert_fails_in_every_format(cli, path, rule: str, layer: str, *args: str) -> dict:
    """Exit 1 and (rule, layer) named in human, json, junit and github output.

    ``layer="(file)"`` stands for a finding about the whole file (JSON layer "")."""
    json_layer = "" if layer == "(file)" else layer
    gh_layer = "file" if layer == "(file)" else layer
    human = cli("check", path, *args)
    assert human.code == 1, human.out + human.err
    assert rule in human.out and layer in human.out and "FAILED" in human.out

    r = cli("check", path, *args, "--format", "json")
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    jsonschema.validate(doc, SCHEMA)
    assert (rule, json_layer) in _errors(doc), doc["findings"]
    assert doc["passed"] is False and doc["exit_code"] == 1

    r = cli("check", path, *args, "--format", "junit")
    assert r.code == 1
    root = ET.fromstring(r.out)
    failed = [(tc.get("classname"), tc.get("name")) for tc in root.iter("testcase")
              if tc.find("failure") is not None]
    assert any(f".{rule}." in cls and name.endswith(f": {layer}") for cls, name in failed), failed

    r = cli("check", path, *args, "--format", "github")
    assert r.code == 1
    errors = [line for line in r.out.splitlines() if line.startswith("::error ")]
    assert any(f"{rule} " in line and f"({gh_layer})" in line for line in errors), r.out
    return doc


# --- the samples and clean flows pass ---------------------------------------------------


def test_samples_pass_the_default_rules():
    paths = sorted(SAMPLES.glob("*.pt*"))  # .pt, .pth, .pt2
    assert len(paths) >= 10
    for path in paths:
        result = qinspect.check(path, config=None)
        assert result, (path.name, [f.message for f in result.errors])
        assert result.exit_code == 0
        assert result.cases, path.name


def test_clean_flow_passes_with_every_format(cli, tmp_path, mlp_sd):
    path = _save(mlp_sd, tmp_path)
    r = cli("check", path)
    assert r.code == 0, r.out + r.err
    assert "PASSED" in r.out and "built-in defaults" in r.out
    doc = json.loads(cli("check", path, "--format", "json").out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["passed"] is True and doc["findings"] == []
    assert {c["rule"] for c in doc["checks"]} == {"QI001", "QI002", "QI003", "QI004", "QI005"}
    assert cli("check", path, "--format", "github").out.startswith("::notice ")


def test_dynamic_placeholders_are_not_uncalibrated(tmp_path):
    _, q = tm.dynamic(torch.qint8)
    sd = q.state_dict()
    assert float(sd["fc.scale"]) == 1.0 and int(sd["fc.zero_point"]) == 0  # placeholders
    result = qinspect.check(_save(sd, tmp_path), config=None)
    assert result, [f.message for f in result.errors]
    # the same 1.0/0 on a static layer is a finding: the rule does look at those values
    static = tm.mlp_ptq(spare=True)[2].state_dict()
    assert not qinspect.check(_save(static, tmp_path, "static.pt"), config=None)


# --- always-on rules --------------------------------------------------------------------


def test_uncalibrated_module_from_a_real_flow(cli, tmp_path):
    """A module forward() never uses keeps torch's 1.0 / 0 after PTQ convert."""
    sd = tm.mlp_ptq(spare=True)[2].state_dict()
    doc = assert_fails_in_every_format(cli, _save(sd, tmp_path), "QI004", "spare")
    assert _errors(doc) == {("QI004", "spare")}
    finding = next(f for f in doc["findings"] if f["rule"] == "QI004")
    assert "scale = 1.0 and zero point = 0" in finding["message"]
    assert finding["key"] == "spare.scale"


def test_ptq_prepared_without_calibration(cli, tmp_path):
    prepared = tm.mlp_ptq(calibrate=False)[1]
    doc = assert_fails_in_every_format(cli, _save(prepared.state_dict(), tmp_path),
                                       "QI004", "fc1")
    assert {("QI004", "quant"), ("QI004", "fc1"), ("QI004", "fc2")} <= _errors(doc)
    assert "never saw data" in json.dumps(doc)


def test_qat_prepared_never_trained(tmp_path):
    model = tm.MLP().train()
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    prepared = torch.ao.quantization.prepare_qat(model)
    result = qinspect.check(_save(prepared.state_dict(), tmp_path), config=None)
    layers = {f.layer for f in result.errors if f.rule.id == "QI004"}
    assert layers == {"quant", "fc1", "fc2"}
    # the trained QAT sample passes the same rule
    assert qinspect.check(SAMPLES / "mlp_qat_prepared.pt", config=None)


def test_nan_weight_scale(cli, tmp_path, mlp_sd):
    w, _ = mlp_sd["fc1._packed_params._packed_params"]
    scales = w.q_per_channel_scales().clone()
    scales[3] = float("nan")
    path = _save(_with_packed_weight(mlp_sd, "fc1", scales=scales), tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI001", "fc1")
    assert _errors(doc) == {("QI001", "fc1")}
    finding = doc["findings"][0]
    assert "NaN at channel 3 (1 of 16 channels)" in finding["message"]
    assert finding["value"] == "NaN"


def test_zero_output_scale(cli, tmp_path, mlp_sd):
    sd = dict(mlp_sd, **{"fc2.scale": torch.tensor(0.0)})
    doc = assert_fails_in_every_format(cli, _save(sd, tmp_path), "QI001", "fc2")
    assert _errors(doc) == {("QI001", "fc2")}
    assert "output scale is 0 (fc2.scale)" in doc["findings"][0]["message"]


def test_negative_and_subnormal_weight_scales(tmp_path, mlp_sd):
    w, _ = mlp_sd["fc2._packed_params._packed_params"]
    scales = w.q_per_channel_scales().clone()
    scales[0], scales[2] = -0.5, 1e-40
    result = qinspect.check(_save(_with_packed_weight(mlp_sd, "fc2", scales=scales), tmp_path),
                            config=None)
    (finding,) = result.errors
    assert finding.rule.id == "QI001" and finding.layer == "fc2"
    assert "-0.5 (negative) at channel 0" in finding.message
    assert "subnormal" in finding.message and "(2 of 6 channels)" in finding.message


def test_output_zero_point_out_of_range(cli, tmp_path, mlp_sd):
    sd = dict(mlp_sd, **{"fc1.zero_point": torch.tensor(300)})
    doc = assert_fails_in_every_format(cli, _save(sd, tmp_path), "QI002", "fc1")
    assert _errors(doc) == {("QI002", "fc1")}
    assert "300" in doc["findings"][0]["message"] and "[0, 255]" in doc["findings"][0]["message"]


def test_weight_zero_point_out_of_range(tmp_path, mlp_sd):
    w, _ = mlp_sd["fc1._packed_params._packed_params"]
    zps = w.q_per_channel_zero_points().clone()
    zps[5] = -200
    result = qinspect.check(_save(_with_packed_weight(mlp_sd, "fc1", zero_points=zps), tmp_path),
                            config=None)
    assert {(f.rule.id, f.layer) for f in result.errors} == {("QI002", "fc1")}
    assert "-200 (outside qint8 [-128, 127]) at channel 5" in result.errors[0].message


def test_unrecognised_key_warns_and_can_fail(cli, tmp_path, mlp_sd):
    sd = dict(mlp_sd, **{"fc1.mystery": torch.zeros(3)})
    path = _save(sd, tmp_path)
    r = cli("check", path, "--format", "json")
    assert r.code == 0
    doc = json.loads(r.out)
    assert [(f["rule"], f["severity"], f["layer"]) for f in doc["findings"]] == [
        ("QI003", "warning", "fc1.mystery")]
    doc = assert_fails_in_every_format(cli, path, "QI003", "fc1.mystery",
                                       "--set", "unrecognised_keys=error")
    assert _errors(doc) == {("QI003", "fc1.mystery")}


# --- configurable rules -----------------------------------------------------------------


def test_float_layer_where_quantized_is_required(cli, tmp_path):
    sd = tm.mlp_ptq(float_modules=("fc2",))[2].state_dict()
    path = _save(sd, tmp_path)
    assert cli("check", path).code == 0  # off by default
    doc = assert_fails_in_every_format(cli, path, "QI100", "fc2",
                                       "--set", 'require_quantized=["*"]')
    assert _errors(doc) == {("QI100", "fc2")}
    r = cli("check", path, "--set", 'require_quantized=["*"]', "--set", "allow_float=fc2")
    assert r.code == 0, r.out
    r = cli("check", path, "--set", 'require_quantized=["fc1"]')
    assert r.code == 0, r.out


def test_per_tensor_where_per_channel_is_required(cli, tmp_path):
    sd = tm.mlp_qat("qnnpack")[2].state_dict()
    path = _save(sd, tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI101", "fc1",
                                       "--set", "require_per_channel=true")
    assert _errors(doc) == {("QI101", "fc1"), ("QI101", "fc2")}
    assert "per_tensor_affine" in doc["findings"][0]["message"]
    (tmp_path / "qinspect.toml").write_text(
        '[check]\nrequire_per_channel = true\n[check.overrides."fc2"]\n'
        "require_per_channel = false\n")
    doc = json.loads(cli("check", path, "--format", "json").out)
    assert _errors(doc) == {("QI101", "fc1")}


def test_weight_dtype(cli, tmp_path):
    sd = tm.dynamic(torch.float16)[1].state_dict()
    doc = assert_fails_in_every_format(cli, _save(sd, tmp_path), "QI102", "fc",
                                       "--set", 'weight_dtypes=["qint8"]')
    assert _errors(doc) == {("QI102", "fc")}
    assert "float16" in doc["findings"][0]["message"]
    assert cli("check", _save(sd, tmp_path), "--set", "weight_dtypes=[\"float16\"]").code == 0


def test_activation_dtype(cli, tmp_path, mlp_sd):
    path = _save(mlp_sd, tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI103", "fc1",
                                       "--set", 'activation_dtypes=["qint8"]')
    assert _errors(doc) == {("QI103", "quant"), ("QI103", "fc1"), ("QI103", "fc2")}
    assert "quint8 assumed" in doc["findings"][0]["message"]
    assert cli("check", path, "--set", 'activation_dtypes=["quint8"]').code == 0


def test_saturated_weights(cli, tmp_path, mlp_sd):
    clean = _save(mlp_sd, tmp_path, "clean.pt")
    assert cli("check", clean, "--set", "max_saturated_fraction=0.01").code == 0
    path = _save(_requantize(mlp_sd, "fc1", 1 / 8), tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI104", "fc1",
                                       "--set", "max_saturated_fraction=0.01")
    assert _errors(doc) == {("QI104", "fc1")}
    assert doc["findings"][0]["value"] > 0.01 and doc["findings"][0]["limit"] == 0.01


def test_low_range_use(cli, tmp_path, mlp_sd):
    clean = _save(mlp_sd, tmp_path, "clean.pt")
    assert cli("check", clean, "--set", "min_range_used=0.5").code == 0
    path = _save(_requantize(mlp_sd, "fc2", 8.0), tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI105", "fc2", "--set", "min_range_used=0.5")
    assert _errors(doc) == {("QI105", "fc2")}
    assert doc["findings"][0]["value"] < 0.2


def test_ignore_in_an_override_skips_the_check(cli, tmp_path):
    path = _save(tm.mlp_ptq(spare=True)[2].state_dict(), tmp_path)
    (tmp_path / "qinspect.toml").write_text('[check.overrides."spare"]\nignore = ["calibrated"]\n')
    r = cli("check", path, "--format", "junit")
    assert r.code == 0, r.out
    skipped = [tc.get("name") for tc in ET.fromstring(r.out).iter("testcase")
               if tc.find("skipped") is not None]
    assert skipped == ["QI004 calibrated: spare"]


# --- --reference (weight SQNR from qinspect diff) -------------------------------------


@pytest.fixture(scope="module")
def ptq_pair(tmp_path_factory):
    """(float state_dict path, converted state_dict) of one PTQ flow."""
    model, _, converted = tm.mlp_ptq()
    folder = tmp_path_factory.mktemp("ref")
    return tm.save(model.state_dict(), folder / "fp32.pt"), converted.state_dict()


def test_samples_pass_with_their_float_reference():
    pairs = {"mlp_int8_fbgemm.pt": "mlp_fp32.pt", "mlp_int8_qnnpack.pt": "mlp_fp32.pt",
             "mlp_fused_int8.pt": "mlp_fused_fp32.pt", "convnet_int8.pt": "convnet_fp32.pt",
             "dynlinear_int8.pt": "dynlinear_fp32.pt", "dynlinear_fp16.pt": "dynlinear_fp32.pt",
             "embbag_4bit.pt": "embbag_fp32.pt", "lstm_dynamic_int8.pt": "lstm_fp32.pt"}
    for quantized, reference in pairs.items():
        result = qinspect.check(SAMPLES / quantized, reference=SAMPLES / reference, config=None)
        assert result, (quantized, [f.message for f in result.errors])
        measured = [c for c in result.cases if c.rule.id == "QI200"]
        assert measured and all(c.status.value == "passed" for c in measured), quantized


def test_weight_sqnr_under_threshold(cli, tmp_path, ptq_pair):
    fp32, sd = ptq_pair
    good = _save(sd, tmp_path, "good.pt")
    assert cli("check", good, "--reference", fp32).code == 0
    stale = _save(_requantize(sd, "fc1", 64.0), tmp_path)  # a 64x too large weight scale
    doc = assert_fails_in_every_format(cli, stale, "QI200", "fc1", "--reference", fp32)
    assert _errors(doc) == {("QI200", "fc1"), ("QI201", "")}  # fc1 holds most weights
    finding = doc["findings"][0]
    assert finding["value"] < 20 and finding["limit"] == 20
    fc1 = next(lay for lay in doc["layers"] if lay["name"] == "fc1")
    assert fc1["weight_sqnr_db"] == finding["value"]
    # a configured threshold applies instead of the default
    doc = json.loads(cli("check", good, "--reference", fp32, "--format", "json", "--set",
                         "min_weight_sqnr_db=60").out)
    assert _errors(doc) == {("QI200", "fc1"), ("QI200", "fc2")}


def test_overall_weight_sqnr_under_threshold(cli, tmp_path, ptq_pair):
    fp32, sd = ptq_pair
    path = _save(sd, tmp_path)
    doc = assert_fails_in_every_format(cli, path, "QI201", "(file)", "--reference", fp32,
                                       "--set", "min_overall_weight_sqnr_db=60")
    assert _errors(doc) == {("QI201", "")}
    assert doc["overall"]["weight_sqnr_db"] == doc["findings"][0]["value"] < 60


def test_nan_scale_fails_weight_sqnr_too(tmp_path, ptq_pair):
    fp32, sd = ptq_pair
    w, _ = sd["fc2._packed_params._packed_params"]
    scales = w.q_per_channel_scales().clone()
    scales[0] = float("nan")
    result = qinspect.check(_save(_with_packed_weight(sd, "fc2", scales=scales), tmp_path),
                            reference=fp32, config=None)
    assert {(f.rule.id, f.layer) for f in result.errors} >= {("QI001", "fc2"), ("QI200", "fc2")}


def test_reference_missing_a_layer_fails_that_layer(tmp_path, ptq_pair):
    fp32, sd = ptq_pair
    ref = {k: v for k, v in torch.load(fp32).items() if not k.startswith("fc2.")}
    result = qinspect.check(_save(sd, tmp_path), reference=_save(ref, tmp_path, "ref.pt"),
                            config=None)
    (finding,) = result.errors
    assert (finding.rule.id, finding.layer) == ("QI200", "fc2")
    assert "not measurable" in finding.message


def test_unrelated_reference_is_a_usage_error(cli, tmp_path, ptq_pair):
    _, sd = ptq_pair
    other = tm.save({"conv.weight": torch.randn(2, 2, 1, 1)}, tmp_path / "other.pt")
    r = cli("check", _save(sd, tmp_path), "--reference", other)
    assert r.code == 2 and "shares no quantized weight" in r.err


# --- --input (output SQNR, clipping, kernel agreement from qinspect verify) ------------


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """(clean, narrow, fp32, input): the same PTQ MLP calibrated on randn and on
    randn * 0.1, whose activation ranges are then far too narrow for the randn input."""
    folder = tmp_path_factory.mktemp("input")
    model, _, clean = tm.mlp_ptq()
    _, _, narrow = tm.mlp_ptq(calibration_std=0.1)
    sample = folder / "sample.npy"
    np.save(sample, torch.randn(16, 20, generator=torch.Generator().manual_seed(1)).numpy())
    return (tm.save(clean.state_dict(), folder / "clean.pt"),
            tm.save(narrow.state_dict(), folder / "narrow.pt"),
            tm.save(model.state_dict(), folder / "fp32.pt"), str(sample))


def test_samples_pass_with_their_inputs():
    runs = {"mlp_int8_fbgemm.pt": "sample.npy", "mlp_int8_qnnpack.pt": "sample.npy",
            "mlp_fused_int8.pt": "sample.npy", "convnet_int8.pt": "conv_sample.npy",
            "lstm_dynamic_int8.pt": "lstm_sample.npy"}
    for quantized, sample in runs.items():
        result = qinspect.check(SAMPLES / quantized, input=SAMPLES / sample, config=None)
        assert result, (quantized, [f.message for f in result.errors])
        rules = {c.rule.id for c in result.cases}
        expected = {"QI300", "QI302", "QI303"} | (  # dynamic layers output float: no clipping
            set() if "dynamic" in quantized else {"QI301"})
        assert expected <= rules, quantized


def test_output_clipping_over_threshold(cli, narrow):
    clean, narrow_path, fp32, sample = narrow
    assert cli("check", clean, "--input", sample).code == 0
    doc = assert_fails_in_every_format(cli, narrow_path, "QI301", "quant", "--input", sample)
    assert ("QI301", "quant") in _errors(doc)
    assert {rule for rule, _ in _errors(doc)} <= {"QI300", "QI301"}
    clip = next(f for f in doc["findings"] if f["rule"] == "QI301")
    assert clip["value"] > 0.25 and clip["limit"] == 0.25 and "clip" in clip["message"]
    quant = next(lay for lay in doc["layers"] if lay["name"] == "quant")
    assert quant["clipping_fraction"] == clip["value"] and quant["verify_input"] == "user"
    # a configured limit: every layer of the narrow model clips more than 5 %, the clean
    # model's layers do not
    strict = ("--input", sample, "--set", "max_clipping_fraction=0.05")
    assert cli("check", clean, *strict).code == 0
    doc = json.loads(cli("check", narrow_path, *strict, "--format", "json").out)
    assert {("QI301", "quant"), ("QI301", "fc1"), ("QI301", "fc2")} <= _errors(doc)


def test_output_sqnr_under_threshold(cli, narrow):
    clean, narrow_path, fp32, sample = narrow
    doc = assert_fails_in_every_format(cli, narrow_path, "QI300", "quant", "--input", sample,
                                       "--reference", fp32)
    finding = next(f for f in doc["findings"] if f["rule"] == "QI300")
    assert finding["value"] < 10 and finding["limit"] == 10
    strict = ("--input", sample, "--reference", fp32, "--set", "min_output_sqnr_db=60")
    doc = json.loads(cli("check", clean, *strict, "--format", "json").out)
    assert ("QI300", "fc1") in _errors(doc)


def test_baseline_output_sqnr_regression(cli, tmp_path, narrow):
    clean, narrow_path, _, sample = narrow
    report = tmp_path / "report.json"
    cli("check", clean, "--input", sample, "--format", "json", "--output", report)
    r = cli("check", narrow_path, "--input", sample, "--baseline", report, "--format", "json",
            "--set", "max_clipping_fraction=1", "--set", "min_output_sqnr_db=0")
    doc = json.loads(r.out)
    assert r.code == 1 and ("QI400", "quant") in _errors(doc)
    assert "output SQNR dropped" in json.dumps(doc["findings"])


def test_kernel_agreement_and_unverified_layers(narrow):
    """A file cannot make torch's kernel disagree with verify's reference on a consistent
    platform, so these two rules are exercised on measurements handed to the engine."""
    from qinspect.gate.engine import Measurements, run_check
    from qinspect.gate.rules import LayerMetrics

    clean = qinspect.load(narrow[0])
    measured = Measurements(
        {"fc1": LayerMetrics(output_sqnr_db=40.0, clipping_fraction=0.0,
                             kernel_agreement=0.99, verify_input="user")},
        not_verified={"fc2": "not covered by verify yet"})
    result = run_check(clean, measured=measured, input="x.npy")
    assert {(f.rule.id, f.layer, f.severity.value) for f in result.findings} == {
        ("QI302", "fc1", "error"), ("QI303", "fc2", "warning")}
    assert "99.00% of outputs" in result.errors[0].message


# --- baseline ---------------------------------------------------------------------------


def test_json_report_round_trips_as_baseline(cli, tmp_path, mlp_sd):
    path = _save(mlp_sd, tmp_path)
    report = tmp_path / "report.json"
    r = cli("check", path, "--format", "json", "--output", report)
    assert r.code == 0
    assert "PASSED" in r.out  # the human summary still goes to the terminal
    jsonschema.validate(json.loads(report.read_text()), SCHEMA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "report.json"]
    r = cli("check", path, "--baseline", report, "--format", "json")
    assert r.code == 0, r.out
    doc = json.loads(r.out)
    assert doc["baseline"] == str(report)
    assert {c["rule"] for c in doc["checks"]} >= {"QI401", "QI402"}


def test_baseline_layer_disappeared(cli, tmp_path, mlp_sd):
    report = tmp_path / "report.json"
    assert cli("check", _save(mlp_sd, tmp_path, "old.pt"), "--format", "json",
               "--output", report).code == 0
    renamed = {k.replace("fc2.", "head.", 1): v for k, v in mlp_sd.items()}
    doc = assert_fails_in_every_format(cli, _save(renamed, tmp_path), "QI401", "fc2",
                                       "--baseline", str(report))
    assert _errors(doc) == {("QI401", "fc2")}


def test_baseline_layer_no_longer_quantized(cli, tmp_path):
    report = tmp_path / "report.json"
    cli("check", _save(tm.mlp_ptq()[2].state_dict(), tmp_path, "old.pt"), "--format", "json",
        "--output", report)
    new = _save(tm.mlp_ptq(float_modules=("fc2",))[2].state_dict(), tmp_path)
    doc = assert_fails_in_every_format(cli, new, "QI402", "fc2", "--baseline", str(report))
    assert _errors(doc) == {("QI402", "fc2")}


def test_baseline_sqnr_regression(cli, tmp_path, ptq_pair):
    fp32, sd = ptq_pair
    report = tmp_path / "report.json"
    r = cli("check", _save(sd, tmp_path, "old.pt"), "--reference", fp32, "--format", "json",
            "--output", report)
    assert r.code == 0
    old = {lay["name"]: lay["weight_sqnr_db"] for lay in json.loads(report.read_text())["layers"]}
    assert old["fc2"] > 30
    worse = _save(_requantize(sd, "fc2", 1.5), tmp_path)  # still above the 20 dB floor
    doc = assert_fails_in_every_format(cli, worse, "QI400", "fc2", "--reference", fp32,
                                       "--baseline", str(report))
    assert _errors(doc) == {("QI400", "fc2")}
    finding = doc["findings"][0]
    assert finding["value"] > 1 and finding["limit"] == 1.0 and "dropped" in finding["message"]
    assert cli("check", worse, "--reference", fp32, "--baseline", report,
               "--set", "max_sqnr_drop_db=20").code == 0
    # the baseline has SQNRs: a run without --reference cannot compare, and says so
    doc = json.loads(cli("check", worse, "--baseline", report, "--format", "json").out)
    assert ("QI400", "fc1") in _errors(doc) and "pass --reference" in doc["findings"][0]["message"]


def test_baseline_that_is_not_a_report(cli, tmp_path, mlp_sd):
    path = _save(mlp_sd, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "qinspect.show/1"}))
    r = cli("check", path, "--baseline", bad)
    assert r.code == 2 and "qinspect.check/1" in r.err and len(r.err.splitlines()) == 1


# --- formats ----------------------------------------------------------------------------


def test_junit_structure(cli, tmp_path):
    path = _save(tm.mlp_ptq(spare=True)[2].state_dict(), tmp_path)
    r = cli("check", path, "--format", "junit")
    root = ET.fromstring(r.out)
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == int(root.get("tests"))
    failures = [tc for tc in cases if tc.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) == 1
    names = [tc.get("name") for tc in cases]
    assert len(names) == len(set(names))  # one test case per rule per layer
    assert {"QI001 scale-finite: fc1", "QI004 calibrated: spare"} <= set(names)
    failure = failures[0].find("failure")
    assert failure.get("type") == "QI004" and "hint:" in failure.text


def test_hostile_names_are_escaped_per_format(cli, tmp_path, mlp_sd):
    evil = "x%y,z:\n::error::pwned\r\x1b[31m<b>&"
    sd = dict(mlp_sd, **{evil: torch.zeros(1)})
    path = _save(sd, tmp_path)
    args = ("--set", "unrecognised_keys=error")
    human = cli("check", path, *args)
    assert human.code == 1 and "\x1b" not in human.out and "\\x1b[31m" in human.out
    gh = cli("check", path, *args, "--format", "github").out
    lines = gh.splitlines()
    assert all(line.startswith("::") for line in lines)  # nothing injected a line
    assert len(lines) == 1 and "\x1b" not in gh
    title = lines[0].split("::")[1]  # properties: ':' and ',' escaped too
    assert "(x%25y%2Cz%3A\\x0a%3A%3Aerror%3A%3Apwned\\x0d\\x1b[31m<b>&)" in title
    root = ET.fromstring(cli("check", path, *args, "--format", "junit").out)
    names = [tc.get("name") for tc in root.iter("testcase")]
    assert any("\\x0a::error::pwned\\x0d\\x1b[31m<b>&" in n for n in names)
    doc = json.loads(cli("check", path, *args, "--format", "json").out)
    assert doc["findings"][0]["layer"] == evil  # exact in JSON


def test_several_checkpoints_for_pre_commit(cli, tmp_path, mlp_sd):
    good = _save(mlp_sd, tmp_path, "good.pt")
    bad = _save(dict(mlp_sd, **{"fc2.scale": torch.tensor(float("inf"))}), tmp_path, "bad.pt")
    r = cli("check", good, bad, "--format", "github")
    assert r.code == 1
    assert "::notice file=" in r.out and "::error file=" in r.out and "bad.pt" in r.out
    assert cli("check", good, good).code == 0
    r = cli("check", good, bad, "--format", "json")
    assert r.code == 1
    doc = json.loads(r.out)
    assert [(f["file"], f["exit_code"]) for f in doc["files"]] == [(good, 0), (bad, 1)]
    r = cli("check", good, bad, "--reference", good)
    assert r.code == 2 and "run once per file" in r.err


def test_output_in_a_missing_folder_is_a_usage_error(cli, tmp_path, mlp_sd):
    r = cli("check", _save(mlp_sd, tmp_path), "--output", tmp_path / "no" / "r.json")
    assert r.code == 2 and r.err.startswith("qinspect: error: ") and "cannot write" in r.err


def test_missing_checkpoint_exits_2(cli, tmp_path):
    r = cli("check", tmp_path / "nope.pt")
    assert r.code == 2 and "no such file" in r.err


# --- Python API -------------------------------------------------------------------------


def test_python_api(tmp_path, mlp_sd):
    path = _save(mlp_sd, tmp_path)
    result = qinspect.check(path)
    assert result and result.passed and result.exit_code == 0
    assert not qinspect.check(path, activation_dtypes=["qint8"])
    assert qinspect.check(qinspect.load(path), config={"min_range_used": 0.5})
    assert not qinspect.check(path, settings=["min_range_used=1.0"])
    with pytest.raises(InputError, match="min_range_use'"):
        qinspect.check(path, min_range_use=0.5)


def test_check_help_does_not_import_torch():
    code = ("import sys\nfrom qinspect.cli import main\n"
            "try:\n    main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--baseline" in done.stdout


def test_pre_commit_hooks_run_check_on_checkpoints():
    """No YAML parser in the test environment: the fields pre-commit needs, read as text."""
    import re

    text = (SAMPLES.parent / ".pre-commit-hooks.yaml").read_text()
    hooks = text.split("\n- id: ")[1:]
    assert [h.splitlines()[0] for h in hooks] == ["qinspect-check", "qinspect-check-system"]
    for hook in hooks:
        fields = dict(re.findall(r"^  (\w+): (.*)$", hook, re.M))
        assert fields["entry"] == "qinspect check"
        pattern = re.compile(fields["files"])
        assert pattern.search("models/a.pt") and pattern.search("b.pth")
        assert pattern.search("c.pt2") and not pattern.search("train.py")


def test_json_flag_is_format_json_like_every_command(cli, samples):
    flag = cli("check", samples / "mlp_int8_fbgemm.pt", "--json")
    fmt = cli("check", samples / "mlp_int8_fbgemm.pt", "--format", "json")
    assert flag.code == fmt.code == 0
    assert json.loads(flag.out)["schema"] == "qinspect.check/1"
    assert json.loads(flag.out)["counts"] == json.loads(fmt.out)["counts"]
    both = cli("check", samples / "mlp_int8_fbgemm.pt", "--json", "--format", "junit")
    assert both.code == 2 and "two formats" in both.err

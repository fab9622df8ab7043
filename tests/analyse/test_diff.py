"""`qinspect diff`: every number checked against torch computing on the same tensors."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import torch_models as tm
from torch.nn.utils.fusion import fuse_conv_bn_weights

import qinspect

QRANGE = {torch.qint8: (-128, 127), torch.quint8: (0, 255), torch.quint4x2: (0, 15)}
CELL = re.compile(r"^(.*)\._all_weight_values\.(\d+)\.param$")


# --- independent torch computations ---------------------------------------------------


def torch_weights(path: str | Path, rnn_directions: int = 1) -> dict[str, torch.Tensor]:
    """Layer name -> weight tensor (float or quantized) straight from torch.

    Only for files these tests (or make_samples) wrote: dynamic RNN cells need
    ``weights_only=False`` to be rebuilt by torch, which qinspect itself never does.
    Packed RNN cell ``i`` is named as torch names layer ``i // D``, direction ``i % D``
    (``D`` = ``rnn_directions``, which the test knows from its model).
    """
    sd = torch.load(path, weights_only=False)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        cell = CELL.match(key)
        if cell:
            packed = value.__getstate__()[0][4]
            for gate, p in zip(("ih", "hh"), packed, strict=True):
                layer, rev = divmod(int(cell.group(2)), rnn_directions)
                name = f"{cell.group(1)}.weight_{gate}_l{layer}" + ("_reverse" if rev else "")
                out[name] = torch.ops.quantized.linear_unpack(p)[0]
        elif key.endswith("._packed_params._packed_params"):
            out[key.removesuffix("._packed_params._packed_params")] = value[0]
        elif key.endswith("._packed_params._packed_weight"):
            out[key.removesuffix("._packed_params._packed_weight")] = value
        elif re.search(r"weight_(ih|hh)_l\d+(_reverse)?$", key):
            out[key] = value
        elif key.endswith(".weight") and isinstance(value, torch.Tensor):
            out[key.removesuffix(".weight")] = value
    return out


def torch_metrics(ref: torch.Tensor, cand: torch.Tensor) -> dict[str, float]:
    """SQNR, errors, LSB error, clipping and cosine, computed by torch in float64."""
    w = (ref.dequantize() if ref.is_quantized else ref.detach()).double()
    dq = (cand.dequantize() if cand.is_quantized else cand.detach()).double()
    err = w - dq
    out = {
        "sqnr_db": (20 * torch.log10(w.norm() / err.norm())).item(),
        "max_abs_error": err.abs().max().item(),
        "mean_abs_error": err.abs().mean().item(),
        "cosine_similarity": torch.nn.functional.cosine_similarity(
            w.flatten(), dq.flatten(), dim=0).item(),
    }
    if cand.is_quantized:
        if cand.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            s = torch.tensor(cand.q_scale(), dtype=torch.float64)
            z = torch.tensor(float(cand.q_zero_point()), dtype=torch.float64)
        else:
            view = [1] * cand.dim()
            view[cand.q_per_channel_axis()] = -1
            s = cand.q_per_channel_scales().double().view(view)
            z = cand.q_per_channel_zero_points().double().view(view)
        qmin, qmax = QRANGE[cand.dtype]
        out["max_error_lsb"] = (err.abs() / s).max().item()
        # clipped: more than half a step (+ a thousandth of a step for float32 scales)
        # beyond the channel's range
        margin = 0.5 + 1e-3
        outside = (w < (qmin - z - margin) * s) | (w > (qmax - z + margin) * s)
        out["clipped_fraction"] = outside.double().mean().item()
    return out


def assert_matches_torch(layer: dict, expected: dict[str, float], out: str | None = None) -> None:
    w = layer["weight"]
    assert w["max_abs_error"] == pytest.approx(expected["max_abs_error"], rel=1e-12, abs=0)
    assert w["sqnr_db"] == pytest.approx(expected["sqnr_db"], rel=1e-9)
    assert w["mean_abs_error"] == pytest.approx(expected["mean_abs_error"], rel=1e-9)
    assert w["cosine_similarity"] == pytest.approx(expected["cosine_similarity"], rel=1e-12)
    if "max_error_lsb" in expected:
        assert w["max_error_lsb"] == pytest.approx(expected["max_error_lsb"], rel=1e-9)
        assert w["clipped_fraction"] == pytest.approx(expected["clipped_fraction"], abs=1e-12)
    if out is not None:  # the human table prints the same numbers
        assert f"{expected['sqnr_db']:.1f} dB" in out
        assert f"max {expected['max_abs_error']:.3g}" in out


def _schema() -> dict:
    return json.loads(resources.files("qinspect").joinpath("schemas/diff-1.json").read_text())


def run_json(cli, *args) -> dict:
    r = cli("diff", *args, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    jsonschema.validate(doc, _schema())
    return doc


def layers(doc: dict) -> dict[str, dict]:
    return {lay["name"]: lay for lay in doc["layers"]}


# --- bundled samples: the pairs of the issue ------------------------------------------

SAMPLE_PAIRS = [
    ("mlp_fp32.pt", "mlp_int8_fbgemm.pt"),
    ("mlp_qat_prepared.pt", "mlp_int8_fbgemm.pt"),
    ("convnet_fp32.pt", "convnet_int8.pt"),
    ("mlp_int8_qnnpack.pt", "mlp_int8_fbgemm.pt"),
    ("lstm_fp32.pt", "lstm_dynamic_int8.pt"),
    ("embbag_fp32.pt", "embbag_4bit.pt"),
]


@pytest.mark.parametrize(("a", "b"), SAMPLE_PAIRS)
def test_sample_pairs_pair_every_layer_and_match_torch(cli, samples, a, b):
    pa, pb = samples / a, samples / b
    doc = run_json(cli, pa, pb)
    human = cli("diff", pa, pb).out
    assert doc["only_a"] == [] and doc["summary"]["unmatched_keys_a"] == []
    assert all(not o["keys"] or "weight" not in " ".join(o["keys"]) for o in doc["only_b"])
    weighted = [lay for lay in doc["layers"] if lay["weight"] is not None]
    assert len(weighted) == len(torch_weights(pb))  # every quantized weight has its pair
    ta, tb = torch_weights(pa), torch_weights(pb)
    float_sd = torch.load(pa, weights_only=False)
    for lay in weighted:
        ref, cand = ta[lay["name"]], tb[lay["name_b"]]
        if lay["fold"] is not None:
            bn = lay["fold"]["batchnorm"]
            ref, _ = fuse_conv_bn_weights(
                ref, float_sd.get(f"{lay['name']}.bias"), float_sd[f"{bn}.running_mean"],
                float_sd[f"{bn}.running_var"], lay["fold"]["eps"], float_sd[f"{bn}.weight"],
                float_sd[f"{bn}.bias"])
        assert_matches_torch(lay, torch_metrics(ref, cand), human)


def test_sample_convnet_folds_batchnorm_and_is_normal_only_when_folded(cli, samples):
    pa, pb = samples / "convnet_fp32.pt", samples / "convnet_int8.pt"
    doc = run_json(cli, pa, pb)
    rows = layers(doc)
    assert doc["summary"]["folded"] == 2
    for name, bn in (("features.0", "features.1"), ("conv2", "bn2")):
        fold = rows[name]["fold"]
        assert fold["batchnorm"] == bn and fold["eps"] == 1e-5 and fold["eps_matched"]
        weight = rows[name]["weight"]
        assert weight["sqnr_db"] > 25 and weight["max_error_lsb"] < 0.5 + 1e-3
        assert fold["unfolded_sqnr_db"] < 25
        assert rows[name]["bias"]["max_abs_error"] == 0.0  # folded bias reproduced exactly
    assert any("normal range" in line for line in doc["interpretation"])
    human = cli("diff", pa, pb).out
    assert "BatchNorm features.1 folded" in " ".join(human.split())

    unfolded = run_json(cli, pa, pb, "--no-fold")
    rows = layers(unfolded)
    assert rows["features.0"]["weight"]["sqnr_db"] < 25
    assert rows["features.0"]["fold"] is None
    assert {o["name"] for o in unfolded["only_a"]} == {"features.1", "bn2"}
    assert any("below ~25 dB" in line for line in unfolded["interpretation"])


def test_sample_lstm_pairs_float_weights_with_dynamic_cells(cli, samples):
    doc = run_json(cli, samples / "lstm_fp32.pt", samples / "lstm_dynamic_int8.pt")
    rows = layers(doc)
    assert rows["lstm.weight_hh_l1"]["name_b"] == "lstm.weight_hh_l1"
    assert rows["lstm.weight_ih_l0"]["paired_by"] == "same module path"
    assert rows["fc"]["name_b"] == "fc"


def test_sample_qat_vs_converted_reports_why_it_is_not_bit_exact(cli, samples):
    doc = run_json(cli, samples / "mlp_qat_prepared.pt", samples / "mlp_int8_fbgemm.pt")
    # the samples use the default QAT qconfig with observers on at convert (see README)
    assert doc["summary"]["bit_exact"] is False
    fc1 = layers(doc)["fc1"]["qat"]
    assert fc1["int_mismatches_own_qparams"] == 0
    assert fc1["weight_qparams_equal"] is False
    assert any("observer was still enabled" in c for c in fc1["causes"])
    assert layers(doc)["quant"]["qat"]["bit_exact"] is True


def test_sample_frozen_qat_vs_converted_is_bit_exact(cli, samples):
    """The sample made with the exact recipe (version-0 QAT qconfig, observers disabled
    before convert) converts to exactly what training simulated."""
    doc = run_json(cli, samples / "mlp_qat_frozen_prepared.pt",
                   samples / "mlp_qat_frozen_int8.pt")
    assert doc["summary"]["bit_exact"] is True
    for name in ("quant", "fc1", "fc2"):
        assert layers(doc)[name]["qat"]["bit_exact"] is True
    assert layers(doc)["fc1"]["qat"]["int_mismatches"] == 0
    sd = torch.load(samples / "mlp_qat_frozen_prepared.pt", weights_only=True)
    q = torch.load(samples / "mlp_qat_frozen_int8.pt", weights_only=True)
    w = q["fc1._packed_params._packed_params"][0]
    fq = torch.quantize_per_channel(sd["fc1.weight"], sd["fc1.weight_fake_quant.scale"].double(),
                                    sd["fc1.weight_fake_quant.zero_point"].long(), 0, torch.qint8)
    assert torch.equal(fq.int_repr(), w.int_repr())  # torch agrees: bit-exact


# --- fp32 vs int8 on torch flows ------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_ptq_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ptq")
    model, _, q = tm.mlp_ptq("x86")
    _, _, qnn = tm.mlp_ptq("qnnpack")
    return (model, q, qnn, tm.save(model.state_dict(), d / "fp32.pt"),
            tm.save(q.state_dict(), d / "int8.pt"), tm.save(qnn.state_dict(), d / "qnn.pt"))


def test_fp32_vs_int8_matches_torch_per_layer(cli, mlp_ptq_files):
    model, q, _, fp32, int8, _ = mlp_ptq_files
    doc = run_json(cli, fp32, int8)
    out = cli("diff", fp32, int8).out
    rows = layers(doc)
    for name in ("fc1", "fc2"):
        expected = torch_metrics(getattr(model, name).weight, getattr(q, name).weight())
        assert_matches_torch(rows[name], expected, out)
        assert rows[name]["comparison"] == "float-vs-quantized"
        assert rows[name]["weight"]["max_error_lsb"] <= 0.5 + 1e-3  # PTQ: no clipping
        bias = (getattr(model, name).bias - getattr(q, name).bias()).abs().max().item()
        assert rows[name]["bias"]["max_abs_error"] == bias
        assert rows[name]["only_b"] == ["packed dtype", "output qparams"]
    assert [o["name"] for o in doc["only_b"]] == ["quant"]
    assert doc["summary"]["unmatched_keys_b"] == ["quant.scale", "quant.zero_point"]
    w = [(getattr(model, n).weight.double(), getattr(q, n).weight().dequantize().double())
         for n in ("fc1", "fc2")]
    overall = 10 * math.log10(sum((a**2).sum().item() for a, _ in w)
                              / sum(((a - b)**2).sum().item() for a, b in w))
    assert doc["summary"]["weight_sqnr_db"] == pytest.approx(overall, rel=1e-9)
    assert doc["summary"]["file_size_a"] == Path(fp32).stat().st_size
    assert doc["summary"]["layers_quantized"] == 2


def test_int8_vs_int8_reports_changed_scales_and_ints(cli, mlp_ptq_files, tmp_path):
    _, q, qnn, _, int8, qnn_path = mlp_ptq_files
    doc = run_json(cli, qnn_path, int8)
    fc1 = layers(doc)["fc1"]
    assert fc1["comparison"] == "quantized-vs-quantized"
    assert fc1["quant_change"]["scheme_a"] == "per_tensor_affine"
    assert fc1["quant_change"]["scheme_b"] == "per_channel_affine (axis 0)"
    assert fc1["quant_change"]["scales_changed"] is None
    assert_matches_torch(fc1, torch_metrics(qnn.fc1.weight(), q.fc1.weight()))

    # a second export of the same layout: 3 channel scales moved by 2 %
    w = q.fc1.weight()
    scales = w.q_per_channel_scales().clone()
    scales[[0, 5, 9]] *= 1.02
    requant = torch.quantize_per_channel(w.dequantize(), scales, w.q_per_channel_zero_points(),
                                         0, torch.qint8)
    sd = q.state_dict()
    sd["fc1._packed_params._packed_params"] = (requant, q.fc1.bias())
    other = tm.save(sd, tmp_path / "int8_b.pt")
    fc1 = layers(run_json(cli, int8, other))["fc1"]
    change = fc1["quant_change"]
    assert change["scales_changed"] == 3 and change["zero_points_changed"] == 0
    assert change["max_scale_change"] == pytest.approx(0.02, rel=1e-6)
    ints = (requant.int_repr() != w.int_repr()).double().mean().item()
    assert change["int_changed_fraction"] == ints
    assert_matches_torch(fc1, torch_metrics(w, requant))


def test_convbn_with_another_eps_is_folded_with_that_eps(cli, tmp_path):
    model, q = tm.convnet_bn(bn2_eps=1e-3)
    fp32 = tm.save(model.state_dict(), tmp_path / "fp32.pt")
    int8 = tm.save(q.state_dict(), tmp_path / "int8.pt")
    doc = run_json(cli, fp32, int8)
    rows = layers(doc)
    assert rows["features.0.0"]["fold"]["batchnorm"] == "features.0.1"
    assert rows["features.0.0"]["fold"]["eps"] == 1e-5
    conv2 = rows["conv2"]
    assert conv2["fold"]["eps"] == 1e-3 and conv2["fold"]["eps_source"] == "bias"
    assert "not torch's default" in conv2["fold"]["eps_message"]
    bn = model.bn2
    folded, _ = fuse_conv_bn_weights(model.conv2.weight, None, bn.running_mean, bn.running_var,
                                     1e-3, bn.weight, bn.bias)
    assert_matches_torch(conv2, torch_metrics(folded, q.conv2.weight()))
    assert conv2["weight"]["sqnr_db"] > 25
    assert doc["only_a"] == []


def test_qat_vs_converted_is_bit_exact_and_one_changed_int_is_caught(cli, tmp_path):
    prepared, q = tm.mlp_qat_exact()
    prep = tm.save(prepared.state_dict(), tmp_path / "qat.pt")
    conv = tm.save(q.state_dict(), tmp_path / "int8.pt")
    doc = run_json(cli, prep, conv)
    assert doc["summary"]["bit_exact"] is True
    for name in ("fc1", "fc2", "quant"):
        assert layers(doc)[name]["qat"]["bit_exact"] is True
    assert layers(doc)["fc1"]["qat"]["int_mismatches"] == 0
    assert "bit-exact" in cli("diff", prep, conv).out

    w = q.fc1.weight()
    ints = w.int_repr().clone()
    ints[3, 7] = ints[3, 7] + 1 if ints[3, 7] < 127 else ints[3, 7] - 1
    bad = torch._make_per_channel_quantized_tensor(
        ints, w.q_per_channel_scales(), w.q_per_channel_zero_points(), 0)
    sd = q.state_dict()
    sd["fc1._packed_params._packed_params"] = (bad, q.fc1.bias())
    broken = tm.save(sd, tmp_path / "int8_broken.pt")
    doc = run_json(cli, prep, broken)
    assert doc["summary"]["bit_exact"] is False
    fc1 = layers(doc)["fc1"]["qat"]
    assert fc1["int_mismatches"] == 1 and fc1["int_mismatches_own_qparams"] == 1
    assert fc1["weight_qparams_equal"] is True
    assert any("1 of 320 int values differ" in line for line in doc["interpretation"])
    assert "NOT bit-exact" in cli("diff", prep, broken).out

    sd = q.state_dict()
    sd["fc2.scale"] = torch.tensor(float(q.fc2.scale) * 1.5)
    moved = tm.save(sd, tmp_path / "int8_moved.pt")
    fc2 = layers(run_json(cli, prep, moved))["fc2"]["qat"]
    assert fc2["output_qparams_equal"] is False and fc2["bit_exact"] is False


def test_default_fused_fake_quant_differs_by_127_over_127_5(cli, tmp_path):
    prepared, q = tm.mlp_qat_exact(fused_fake_quant=True)
    doc = run_json(cli, tm.save(prepared.state_dict(), tmp_path / "qat.pt"),
                   tm.save(q.state_dict(), tmp_path / "int8.pt"))
    fc1 = layers(doc)["fc1"]["qat"]
    assert fc1["bit_exact"] is False and fc1["weight_qparams_equal"] is False
    ratio = (q.fc1.weight().q_per_channel_scales()
             / prepared.fc1.weight_fake_quant.scale.double())
    assert fc1["scale_ratio_min"] == pytest.approx(ratio.min().item(), rel=1e-6)
    assert fc1["scale_ratio_min"] == pytest.approx(127 / 127.5, rel=1e-6)
    assert fc1["scale_ratio_max"] == pytest.approx(ratio.max().item(), rel=1e-6)
    assert any("127/127.5 or 128/127.5" in c for c in fc1["causes"])
    assert not any("observer was still enabled" in c for c in fc1["causes"])


def test_bidirectional_lstm_cells_pair_with_their_direction(cli, tmp_path):
    model, q = tm.bilstm_dynamic()
    fp32 = tm.save(model.state_dict(), tmp_path / "fp32.pt")
    int8 = tm.save(q.state_dict(), tmp_path / "int8.pt")
    doc = run_json(cli, fp32, int8)
    rows = layers(doc)
    for float_name in ("lstm.weight_ih_l0", "lstm.weight_hh_l0_reverse", "lstm.weight_ih_l1",
                       "lstm.weight_hh_l1_reverse"):
        assert rows[float_name]["name_b"] == float_name
    assert len(rows) == 8 and doc["only_a"] == [] and doc["only_b"] == []
    assert q.lstm.bidirectional
    tb = torch_weights(int8, rnn_directions=2)
    packed = torch.load(int8, weights_only=False)
    for name, row in rows.items():
        attr = name.removeprefix("lstm.")
        assert_matches_torch(row, torch_metrics(getattr(model.lstm, attr), tb[row["name_b"]]))
        m = re.fullmatch(r"lstm\.weight_(ih|hh)_l(\d)(_reverse)?", row["name_b"])
        gate, cell = m.group(1), 2 * int(m.group(2)) + bool(m.group(3))
        p = packed[f"lstm._all_weight_values.{cell}.param"].__getstate__()[0][4]
        torch_bias = torch.ops.quantized.linear_unpack(p[0 if gate == "ih" else 1])[1]
        float_bias = getattr(model.lstm, attr.replace("weight", "bias"))
        assert row["bias"]["max_abs_error"] == (float_bias - torch_bias).abs().max().item()


def test_rnn_cells_a_file_cannot_name_pair_by_cell_index(cli, tmp_path):
    """A 1-layer bidirectional LSTM with input size = hidden size packs 2 cells that a
    dynamic file cannot tell from 2 layers of one direction: qinspect names them l0, l1,
    and diff still pairs the float ``_reverse`` weights with cell 1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("lstm", torch.nn.LSTM(5, 5, bidirectional=True))
    q = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.LSTM}, torch.qint8)
    fp32 = tm.save(model.state_dict(), tmp_path / "fp32.pt")
    int8 = tm.save(q.state_dict(), tmp_path / "int8.pt")
    rows = layers(run_json(cli, fp32, int8))
    tb = torch_weights(int8)  # one direction: cell 1 named l1, as qinspect names it
    for gate in ("ih", "hh"):
        row = rows[f"lstm.weight_{gate}_l0_reverse"]
        assert row["name_b"] == f"lstm.weight_{gate}_l1"
        assert "same packed RNN cell" in row["paired_by"]
        assert_matches_torch(row, torch_metrics(getattr(model.lstm, f"weight_{gate}_l0_reverse"),
                                                tb[f"lstm.weight_{gate}_l1"]))
        assert rows[f"lstm.weight_{gate}_l0"]["name_b"] == f"lstm.weight_{gate}_l0"


# --- general differ, unrelated and broken inputs --------------------------------------


def _float_mlp(hidden: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc1.weight": torch.randn(hidden, 20, generator=g), "fc1.bias": torch.randn(hidden),
            "fc2.weight": torch.randn(6, hidden, generator=g), "fc2.bias": torch.zeros(6)}


def test_fp32_vs_fp32_is_a_plain_tensor_diff(cli, tmp_path):
    a = _float_mlp()
    b = {k: v.clone() for k, v in a.items()}
    same = run_json(cli, tm.save(a, tmp_path / "a.pt"), tm.save(b, tmp_path / "b.pt"))
    assert same["summary"]["weight_sqnr_db"] == "Infinity"
    assert any("identical" in line for line in same["interpretation"])
    b["fc2.weight"][1, 2] += 0.25
    doc = run_json(cli, tmp_path / "a.pt", tm.save(b, tmp_path / "b2.pt"))
    fc2 = layers(doc)["fc2"]
    assert fc2["comparison"] == "float-vs-float"
    assert_matches_torch(fc2, torch_metrics(a["fc2.weight"], b["fc2.weight"]))
    assert fc2["weight"]["max_error_lsb"] is None
    assert doc["layers"][0]["name"] == "fc2"  # worst first
    assert "1 of 2 paired weight(s) or biases differ" in doc["interpretation"]


def test_shape_mismatch_is_reported_per_layer(cli, tmp_path):
    a = tm.save(_float_mlp(16), tmp_path / "a.pt")
    b = tm.save(_float_mlp(12), tmp_path / "b.pt")
    r = cli("diff", a, b)
    assert r.code == 0 and r.err == ""
    doc = run_json(cli, a, b)
    rows = layers(doc)
    assert rows["fc1"]["comparison"] == "shape-mismatch" and rows["fc1"]["weight"] is None
    assert "16x20 in A, 12x20 in B" in rows["fc1"]["problem"]
    assert doc["summary"]["shape_mismatches"] == 2
    assert doc["layers"][0]["comparison"] == "shape-mismatch"
    assert "weight shapes differ: 16x20 in A, 12x20 in B" in " ".join(r.out.split())


def test_unrelated_checkpoints_give_a_clear_report(cli, tmp_path):
    a = tm.save(_float_mlp(), tmp_path / "mlp.pt")
    model, _ = tm.bilstm_dynamic()
    b = tm.save(model.state_dict(), tmp_path / "lstm.pt")
    r = cli("diff", a, b)
    assert r.code == 0 and r.err == ""
    assert "look like different models" in " ".join(r.out.split())
    doc = run_json(cli, a, b)
    assert doc["layers"] == [] and doc["summary"]["weight_sqnr_db"] is None
    assert len(doc["summary"]["unmatched_keys_a"]) == 4
    assert len(doc["summary"]["unmatched_keys_b"]) == 16


def test_nan_weights_are_reported_not_raised(cli, tmp_path):
    a = _float_mlp()
    b = {k: v.clone() for k, v in a.items()}
    b["fc1.weight"][0, 0] = float("nan")
    r = cli("diff", tm.save(a, tmp_path / "a.pt"), tm.save(b, tmp_path / "b.pt"))
    assert r.code == 0, r.err
    assert "NaN dB" in r.out
    doc = run_json(cli, tmp_path / "a.pt", tmp_path / "b.pt")
    assert layers(doc)["fc1"]["weight"]["sqnr_db"] == "NaN"


def test_sort_and_layer_filter(cli, mlp_ptq_files):
    _, _, _, fp32, int8, _ = mlp_ptq_files
    by_name = run_json(cli, fp32, int8, "--sort", "name")
    assert [lay["name"] for lay in by_name["layers"]] == ["fc1", "fc2"]
    by_sqnr = run_json(cli, fp32, int8)
    sqnrs = [lay["weight"]["sqnr_db"] for lay in by_sqnr["layers"]]
    assert sqnrs == sorted(sqnrs)
    by_error = run_json(cli, fp32, int8, "--sort", "error")
    lsbs = [lay["weight"]["max_error_lsb"] for lay in by_error["layers"]]
    assert lsbs == sorted(lsbs, reverse=True)
    only = run_json(cli, fp32, int8, "--layer", "fc2")
    assert [lay["name"] for lay in only["layers"]] == ["fc2"] and only["only_b"] == []
    assert only["options"]["layer"] == "fc2"


def test_errors_are_one_line_exit_2(cli, tmp_path, mlp_ptq_files):
    r = cli("diff", tmp_path / "missing.pt", mlp_ptq_files[3])
    assert r.code == 2 and r.err.count("\n") == 1 and "qinspect: error:" in r.err
    with pytest.raises(qinspect.InputError, match="unknown sort"):
        qinspect.diff(mlp_ptq_files[3], mlp_ptq_files[4], sort="worst")


def test_public_api_takes_paths_or_checkpoints(mlp_ptq_files):
    _, _, _, fp32, int8, _ = mlp_ptq_files
    from_paths = qinspect.diff(fp32, int8)
    from_ckpts = qinspect.diff(qinspect.load(fp32), qinspect.load(int8))
    assert from_paths.summary.weight_sqnr_db == from_ckpts.summary.weight_sqnr_db
    assert "diff" in qinspect.__all__
    row = from_paths.layers[0]
    assert np.isfinite(row.weight.sqnr_db) and row.qat is None


def test_qat_fused_convbn_folds_the_child_batchnorm_and_is_bit_exact(cli, tmp_path):
    prepared, q = tm.convbn_qat_exact()
    doc = run_json(cli, tm.save(prepared.state_dict(), tmp_path / "qat.pt"),
                   tm.save(q.state_dict(), tmp_path / "int8.pt"))
    rows = layers(doc)
    assert rows["features.0.0"]["fold"]["batchnorm"] == "features.0.0.bn"
    assert rows["conv2"]["fold"]["batchnorm"] == "conv2.bn"
    assert doc["summary"]["bit_exact"] is True and doc["only_a"] == []
    conv = prepared.features[0][0]
    folded, _ = fuse_conv_bn_weights(conv.weight, conv.bias, conv.bn.running_mean,
                                     conv.bn.running_var, conv.bn.eps, conv.bn.weight,
                                     conv.bn.bias)
    assert_matches_torch(rows["features.0.0"], torch_metrics(folded, q.features[0][0].weight()))


def test_bad_scales_and_hostile_names_are_reported_safely(cli, tmp_path):
    name = "fc\x1b[31m[bold]x[/bold]"
    # a quantized weight stored as a plain tensor is a conv's (a Linear's is packed)
    w = torch.randn(4, 5, 1, 1, generator=torch.Generator().manual_seed(0))
    ints = torch.quantize_per_channel(w, torch.full((4,), 0.02, dtype=torch.double),
                                      torch.zeros(4, dtype=torch.long), 0, torch.qint8)
    scales = torch.tensor([0.02, 0.0, 0.02, 0.02], dtype=torch.double)
    bad = torch._make_per_channel_quantized_tensor(ints.int_repr(), scales,
                                                   torch.zeros(4, dtype=torch.long), 0)
    a = tm.save({f"{name}.weight": w}, tmp_path / "a.pt")
    b = tm.save({f"{name}.weight": bad, f"{name}.scale": torch.tensor(1.0),
                 f"{name}.zero_point": torch.tensor(0)}, tmp_path / "b.pt")
    r = cli("diff", a, b)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "fc\\x1b[31m[bold]x[/bold]" in r.out
    assert "some scales are zero" in " ".join(r.out.split())
    row = run_json(cli, a, b)["layers"][0]
    assert row["name"] == name and row["weight"]["max_error_lsb"] is None
    assert row["weight"]["clipped_fraction"] is None


def test_layers_with_weights_on_one_side_are_called_out(cli, tmp_path):
    a = _float_mlp()
    b = {**a, "head.weight": torch.ones(2, 6), "head.bias": torch.zeros(2)}
    doc = run_json(cli, tm.save(a, tmp_path / "a.pt"), tm.save(b, tmp_path / "b.pt"))
    assert [o["name"] for o in doc["only_b"]] == ["head"]
    assert doc["summary"]["unmatched_keys_b"] == ["head.weight", "head.bias"]
    assert any(line.startswith("weights only in B: head") for line in doc["interpretation"])


def _synthetic(path: str, weight) -> qinspect.model.Checkpoint:
    from qinspect.model import Checkpoint, Family, KeyRef, Layer, Mode, OpKind, Role, Stage

    mode = Mode.FLOAT if weight.quant is None else Mode.STATIC
    layer = Layer(name="fc", kind="Linear", op=OpKind.LINEAR, mode=mode,
                  keys=(KeyRef("fc.weight", Role.WEIGHT),), weight=weight)
    return Checkpoint(path=path, format="test", family=Family.EAGER,
                      stage=Stage.CONVERTED if weight.quant else Stage.FLOAT,
                      file_size=1, layers=(layer,))


def test_pt2e_int8_weights_dequantize_like_the_decomposed_ops(tmp_path):
    import torch.ao.quantization.fx._decomposed  # registers the ops

    from qinspect.model import PerAxis, TensorQuant, Weight

    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 10, generator=g)
    scales = (w.abs().amax(dim=1) / 127).float()
    zps = torch.zeros(6, dtype=torch.int64)
    ints = torch.ops.quantized_decomposed.quantize_per_channel(w, scales, zps, 0, -127, 127,
                                                               torch.int8)
    dq = torch.ops.quantized_decomposed.dequantize_per_channel(ints, scales, zps, 0, -127, 127,
                                                               torch.int8)
    quant = TensorQuant("int8", "per_channel_symmetric", scales.numpy(), zps.numpy(), 0,
                        quant_min=-127, quant_max=127, granularity=PerAxis(0))
    a = _synthetic("a", Weight("fc.weight", (6, 10), "float32", w.numpy()))
    b = _synthetic("b", Weight("fc.weight", (6, 10), "int8", ints.numpy(), quant))
    row = qinspect.diff(a, b).layers[0]
    expected = torch_metrics(w, dq)
    assert row.weight.sqnr_db == pytest.approx(expected["sqnr_db"], rel=1e-9)
    assert row.weight.max_abs_error == expected["max_abs_error"]
    assert row.weight.max_error_lsb <= 0.5 + 1e-3


def test_block_wise_weights_are_compared_per_block():
    from qinspect.model import PerGroup, TensorQuant, Weight

    w = np.ones((4, 8), np.float32)
    w[:, 4:] = 3.0
    scale = np.tile([1.0, 0.25], 4)  # one scale per block of 1x4, row-major over the grid
    ints = (w / scale.reshape(4, 2).repeat(4, axis=1)).astype(np.int8)
    quant = TensorQuant("int8", "per_group_affine (group 4)", scale, np.zeros(8, np.int64),
                        None, block_size=(1, 4), granularity=PerGroup(4, 1))
    a = _synthetic("a", Weight("fc.weight", (4, 8), "float32", w))
    b = _synthetic("b", Weight("fc.weight", (4, 8), "int8", ints, quant))
    report = qinspect.diff(a, b)
    row = report.layers[0]
    assert row.comparison.value == "float-vs-quantized" and row.weight.error_energy == 0
    assert row.weight.granularity == "per group of 4 (blocks 1x4)"
    bad = replace(quant, block_size=(1, 3))
    c = _synthetic("c", Weight("fc.weight", (4, 8), "int8", ints, bad))
    odd = qinspect.diff(a, c).layers[0]
    assert odd.comparison.value == "unsupported" and "does not tile" in odd.problem
    from qinspect.render.diff import diff_json
    from qinspect.render.jsonout import dumps

    jsonschema.validate(json.loads(dumps(diff_json(report))), _schema())

"""`qinspect check` on real exports: correct models of every family pass every default
rule; a converted state_dict missing any one key fails QI005 naming it, exactly when
torch's own ``load_state_dict(strict=True)`` fails on it, with what torch raises."""

from __future__ import annotations

import copy
from collections import OrderedDict

import check_families as cf
import pytest
import torch
import torch_models as tm

import qinspect
from qinspect.gate.catalogue import RULES, Group
from qinspect.gate.rules import FILE_CHECKS, LAYER_CHECKS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _no_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def families():
    out = {}
    for name, build in cf.FAMILIES.items():
        model, example = build()
        if example is not None:
            model(example)  # the converted model runs: it is a correct export
        out[name] = model
    return out


def _save(sd, tmp_path, name="model.pt") -> str:
    return tm.save(sd, tmp_path / name)


def test_every_rule_has_one_check():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert set(LAYER_CHECKS) | set(FILE_CHECKS) == set(ids)
    assert not set(LAYER_CHECKS) & set(FILE_CHECKS)


def test_public_check_is_the_function_not_the_package():
    import qinspect.gate.engine

    assert callable(qinspect.check) and qinspect.check.__module__ == "qinspect"


@pytest.mark.parametrize("name", list(cf.FAMILIES))
def test_correct_models_pass_every_default_rule(families, tmp_path, name):
    result = qinspect.check(_save(families[name].state_dict(), tmp_path), config=None)
    assert result, [f.message for f in result.errors]
    always = {r.id for r in RULES if r.group is Group.ALWAYS}
    assert always <= {r.id for r in result.rules}
    assert any(c.rule.id == "QI005" for c in result.cases)  # loadability was examined
    unused = {f.layer for f in result.warnings}
    if name.startswith("mobilenet"):
        # the blocks without a residual connection never call their skip_add
        assert unused == {"features.2.skip_add", "features.4.skip_add"}
        assert all(f.rule.id == "QI004" and "never called by forward()" in f.message
                   for f in result.warnings)
    else:
        assert result.warnings == ()


def test_mobilenet_whose_used_add_was_never_calibrated_fails(tmp_path):
    """Calibration skipped altogether: the used adds keep 1.0/0 too, and so do the convs,
    which fail."""
    torch.manual_seed(0)
    model = cf.MobileNetShaped(v3=True).eval()
    cf._fuse_conv_bn(model)
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    with tm.engine("x86"):
        converted = torch.ao.quantization.convert(torch.ao.quantization.prepare(model))
    result = qinspect.check(_save(converted.state_dict(), tmp_path), config=None)
    failed = {f.layer for f in result.errors if f.rule.id == "QI004"}
    assert {"quant", "features.0.0", "classifier"} <= failed
    assert "features.1.skip_add" in {f.layer for f in result.warnings}


def test_uncalibrated_linear_still_fails_where_an_add_only_warns(tmp_path):
    sd = tm.mlp_ptq(spare=True)[2].state_dict()
    (finding,) = qinspect.check(_save(sd, tmp_path), config=None).errors
    assert finding.rule.id == "QI004" and "never calibrated" in finding.message


CONVERTED = {
    "mlp_static": lambda: tm.mlp_qat("fbgemm")[2],
    "conv_zoo": lambda: tm.conv_zoo()[2],
    "dynamic_int8": lambda: tm.dynamic(torch.qint8)[1],
    "dynamic_fp16": lambda: tm.dynamic(torch.float16)[1],
    "embeddings_8bit": lambda: tm.embeddings(False)[1],
    "embeddings_4bit": lambda: tm.embeddings(True)[1],
    "bilstm_dynamic": lambda: tm.bilstm_dynamic()[1],
}
UNDETECTABLE = {"gru._all_weight_values.0.param"}
"""A module's only key: without it the file holds nothing of the module to find."""


def _torch_error(model, sd) -> str | None:
    try:
        copy.deepcopy(model).load_state_dict(sd, strict=True)
    except KeyError as exc:
        return f"KeyError: {exc.args[0]!r}"
    except RuntimeError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("family", list(CONVERTED))
def test_every_missing_key_fails_like_torch(tmp_path, family):
    model = CONVERTED[family]()
    full = model.state_dict()
    assert qinspect.check(_save(full, tmp_path), config=None)
    for key in full:
        sd = OrderedDict((k, v) for k, v in full.items() if k != key)
        sd._metadata = full._metadata  # type: ignore[attr-defined]
        raised = _torch_error(model, sd)
        assert raised is not None, key  # torch cannot load it: a broken export
        if key in UNDETECTABLE:
            continue
        result = qinspect.check(_save(sd, tmp_path, "broken.pt"), config=None)
        found = [f for f in result.errors if f.rule.id == "QI005"]
        assert [f.key for f in found] == [key], (key, [f.message for f in result.errors])
        message = found[0].message
        if raised.startswith("KeyError"):
            assert raised in message, (raised, message)
        else:
            assert "Missing key(s) in state_dict" in raised
            assert f'Missing key(s) in state_dict: "{key}"' in message, message
        layer = next(lay for lay in qinspect.load(tmp_path / "broken.pt").layers
                     if key in lay.missing_keys)
        assert any(n.message.startswith(f"incomplete: {key} missing") for n in layer.notes)


def test_incomplete_layer_keeps_its_present_keys(cli, tmp_path):
    sd = tm.mlp_qat("fbgemm")[2].state_dict()
    del sd["fc1.zero_point"]
    path = _save(sd, tmp_path)
    ckpt = qinspect.load(path)
    assert ckpt.unrecognised == ()
    fc1 = ckpt.layer("fc1")
    assert fc1.missing_keys == ("fc1.zero_point",)
    assert "fc1.scale" in {k.key for k in fc1.keys}
    shown = cli("show", path)
    assert "incomplete: fc1.zero_point missing" in shown.out
    assert "not expected" not in shown.out
    r = cli("check", path)
    assert r.code == 1 and "QI005" in r.out and "KeyError: 'fc1.zero_point'" in r.out


def test_extra_key_is_a_warning(tmp_path):
    sd = dict(tm.mlp_qat("fbgemm")[2].state_dict(), **{"fc1.extra": torch.zeros(1)})
    result = qinspect.check(_save(sd, tmp_path), config=None)
    assert result and [(f.rule.id, f.key) for f in result.warnings] == [("QI003", "fc1.extra")]


@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize("name", ["mlp", "resnet", "mobilenet_v3", "googlenet"])
def test_torchscript_exports_pass_too(families, tmp_path, name, how):
    """A TorchScript archive keeps the state its code uses (a traced Linear's scale is a
    constant of the graph): loadability by load_state_dict does not apply to it."""
    model, example = cf.FAMILIES[name]()
    exported = torch.jit.trace(model, example) if how == "trace" else torch.jit.script(model)
    path = tmp_path / f"{name}_{how}.pt"
    torch.jit.save(exported, str(path))
    result = qinspect.check(path, config=None)
    assert result, [f.message for f in result.errors]
    assert all(not lay.missing_keys for lay in qinspect.load(path).layers)


@pytest.mark.parametrize("qat", [False, True])
def test_prepared_mobilenet_with_unused_adds_passes_with_warnings(tmp_path, qat):
    """Before convert: the unused skip_add's observer saw nothing while the others did."""
    torch.manual_seed(0)
    model = cf.MobileNetShaped(v3=True)
    tq = torch.ao.quantization
    if qat:
        model.train()
        model.qconfig = tq.get_default_qat_qconfig("x86")
        prepare = tq.prepare_qat
    else:
        model.eval()
        cf._fuse_conv_bn(model)
        model.qconfig = tq.get_default_qconfig("x86")
        prepare = tq.prepare
    with tm.engine("x86"):
        prepared = prepare(model)
        for _ in range(2):
            prepared(torch.randn(2, 3, 16, 16))
    result = qinspect.check(_save(prepared.state_dict(), tmp_path), config=None)
    assert result, [f.message for f in result.errors]
    assert {f.layer for f in result.warnings} == {"features.2.skip_add", "features.4.skip_add"}
    assert all(f.rule.id == "QI004" for f in result.warnings)


def test_a_huge_layer_number_does_not_list_millions_of_missing_keys(tmp_path):
    sd = tm.dynamic(torch.float16)[1].state_dict()
    sd["lstm.weight_ih_l999999999"] = torch.zeros(24, 8)
    layer = next(lay for lay in qinspect.load(_save(sd, tmp_path)).layers if lay.missing_keys)
    assert layer.missing_keys == ("lstm.weight_hh_l999999999", "lstm.bias_ih_l999999999",
                                  "lstm.bias_hh_l999999999")

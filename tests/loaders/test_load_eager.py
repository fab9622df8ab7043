"""qinspect.load on eager-mode checkpoints, checked against what torch reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_models as tm

import qinspect
from qinspect.model import Mode, Role, SourceKind


def _load(obj, tmp_path, name="ckpt.pt"):
    return qinspect.load(tm.save(obj, tmp_path / name))


def _assert_all_keys_attributed(ckpt, state_dict):
    attributed = {ref.key for layer in ckpt.layers for ref in layer.keys}
    listed = {u.key for u in ckpt.unrecognised}
    assert attributed | listed == set(state_dict), set(state_dict) ^ (attributed | listed)


def _assert_weight_matches(layer, qweight):
    w = layer.weight
    assert w.stored_dtype == str(qweight.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(w.values, qweight.int_repr().numpy())
    if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_affine_float_qparams):
        assert w.quant.axis == qweight.q_per_channel_axis()
        np.testing.assert_array_equal(w.quant.scale, qweight.q_per_channel_scales().numpy())
        np.testing.assert_array_equal(w.quant.zero_point,
                                      qweight.q_per_channel_zero_points().numpy())
    else:
        assert w.quant.axis is None
        assert w.quant.scale[0] == qweight.q_scale()
        assert w.quant.zero_point[0] == qweight.q_zero_point()
    assert w.quant.qscheme == str(qweight.qscheme()).removeprefix("torch.")


@pytest.mark.parametrize("backend", ["fbgemm", "x86", "qnnpack"])
def test_qat_converted_mlp_matches_torch(tmp_path, backend):
    _, _, q = tm.mlp_qat(backend)
    sd = q.state_dict()
    ckpt = _load(sd, tmp_path)
    assert ckpt.stage == "converted"
    assert [lay.name for lay in ckpt.layers] == ["quant", "fc1", "fc2"]
    stub = ckpt.layer("quant")
    assert stub.mode is Mode.QUANTIZE
    assert stub.output.scale == float(q.quant.scale)
    assert stub.output.zero_point == int(q.quant.zero_point)
    for name, mod in (("fc1", q.fc1), ("fc2", q.fc2)):
        layer = ckpt.layer(name)
        assert layer.mode is Mode.STATIC and layer.kind == "Linear"
        _assert_weight_matches(layer, mod.weight())
        np.testing.assert_array_equal(layer.bias, mod.bias().detach().numpy())
        assert layer.output.scale == mod.scale and layer.output.zero_point == mod.zero_point
    fc1, fc2 = ckpt.layer("fc1"), ckpt.layer("fc2")
    assert fc1.input_source.kind is SourceKind.QUANT_STUB and fc1.input_source.layer == "quant"
    assert fc1.input == stub.output
    assert fc2.input_source.kind is SourceKind.PREVIOUS_LAYER and fc2.input == fc1.output
    assert fc2.input_source.inferred
    roles = {ref.key: ref.role for ref in fc1.keys}
    assert roles == {
        "fc1.scale": Role.OUTPUT_QPARAMS,
        "fc1.zero_point": Role.OUTPUT_QPARAMS,
        "fc1._packed_params.dtype": Role.PACKED_DTYPE,
        "fc1._packed_params._packed_params": Role.WEIGHT,
    }
    _assert_all_keys_attributed(ckpt, sd)
    assert not ckpt.unrecognised


def test_fused_linear_relu_has_same_keys_and_is_read(tmp_path):
    _, _, plain = tm.mlp_qat("fbgemm")
    _, _, fused = tm.mlp_qat("fbgemm", fuse=True)
    assert list(plain.state_dict()) == list(fused.state_dict())
    ckpt = _load(fused.state_dict(), tmp_path)
    _assert_weight_matches(ckpt.layer("fc1"), fused.fc1.weight())
    assert ckpt.layer("fc1").output.zero_point == 0
    assert any("LinearReLU" in n.message for n in ckpt.layer("fc1").notes)


def test_conv_zoo_every_static_kind(tmp_path):
    _, _, q = tm.conv_zoo()
    sd = q.state_dict()
    ckpt = _load(sd, tmp_path)
    _assert_all_keys_attributed(ckpt, sd)
    assert not ckpt.unrecognised
    kinds = {lay.name: lay.kind for lay in ckpt.layers}
    assert kinds["c1"] == "Conv1d"
    assert kinds["block.0"] == "Conv2d"
    assert kinds["c3"] == "Conv3d"
    assert kinds["ct"].startswith("Conv2d")  # per-tensor: Conv2d or ConvTranspose2d
    assert kinds["bn"] == "BatchNorm"
    for norm in ("ln", "gn", "inorm"):
        assert kinds[norm] == "LayerNorm, GroupNorm or InstanceNorm"
    for act in ("hs", "lrelu"):
        assert kinds[act].startswith("quantized activation")
    # torch fact: QuantizedELU keeps its output qparams as plain attributes, so the
    # state_dict has no key for it at all (nothing to attribute)
    assert not any(k.startswith("elu.") for k in sd) and "elu" not in kinds
    for op in ("add", "mul", "cat"):
        assert kinds[op].startswith("QFunctional")
    for name in ("c1", "block.0", "ct", "c3"):
        mod = q.get_submodule(name)
        layer = ckpt.layer(name)
        _assert_weight_matches(layer, mod.weight())
        assert layer.output.scale == mod.scale and layer.output.zero_point == mod.zero_point
        np.testing.assert_array_equal(layer.bias, mod.bias().detach().numpy())
    for name in ("bn", "ln", "hs", "add"):
        mod = q.get_submodule(name)
        assert ckpt.layer(name).output.scale == float(mod.scale)
        assert ckpt.layer(name).output.zero_point == int(mod.zero_point)
    assert "block.1.weight" not in sd  # BatchNorm folded by fuse_modules


def test_dynamic_int8(tmp_path):
    _, q = tm.dynamic(torch.qint8)
    sd = q.state_dict()
    ckpt = _load(sd, tmp_path)
    _assert_all_keys_attributed(ckpt, sd)
    assert not ckpt.unrecognised
    fc = ckpt.layer("fc")
    assert fc.mode is Mode.DYNAMIC
    assert fc.input_source.kind is SourceKind.DYNAMIC and fc.output is None
    _assert_weight_matches(fc, q.fc.weight())
    roles = {ref.key: ref.role for ref in fc.keys}
    assert roles["fc.scale"] is Role.UNUSED
    lstm_cells = [lay for lay in ckpt.layers if lay.name.startswith("lstm.")]
    # torch's own names, those of the float state_dict (layer l = cell l: one direction)
    assert [lay.name for lay in lstm_cells] == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"]
    assert all(lay.kind.startswith("LSTM") for lay in lstm_cells)
    assert ckpt.layer("gru.weight_ih_l0").kind.startswith("GRU")
    # compare with the weights torch itself unpacks from the LSTM module
    for i, cell in enumerate(q.lstm._all_weight_values):
        packed_ih, packed_hh = cell.param.__getstate__()[0][4]
        ih = torch.ops.quantized.linear_unpack(packed_ih)[0]
        hh = torch.ops.quantized.linear_unpack(packed_hh)[0]
        _assert_weight_matches(ckpt.layer(f"lstm.weight_ih_l{i}"), ih)
        _assert_weight_matches(ckpt.layer(f"lstm.weight_hh_l{i}"), hh)


@pytest.mark.parametrize(("input_size", "layers", "bidirectional", "decided"), [
    (6, 2, True, True),    # cells 2, 3 read both directions: 2H input columns
    (6, 2, False, True),   # cell 1 reads H columns, cell 0 the input's 6
    (5, 3, False, True),   # 3 cells: odd, one direction
    (5, 1, True, False),   # input = hidden, 2 cells: 1 bidirectional layer ...
    (5, 2, False, False),  # ... or 2 layers of one direction: the file cannot say
])
def test_dynamic_rnn_weights_carry_torchs_names(tmp_path, input_size, layers, bidirectional,
                                               decided):
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("rnn", torch.nn.LSTM(input_size, 5, num_layers=layers,
                                          bidirectional=bidirectional))
    q = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.LSTM}, torch.qint8)
    ckpt = _load(q.state_dict(), tmp_path)
    names = [lay.name for lay in ckpt.layers]
    float_names = [f"rnn.{k}" for k in model.rnn.state_dict() if k.startswith("weight")]
    notes = [n.message for lay in ckpt.layers for n in lay.notes if "does not say" in n.message]
    if decided:
        assert names == float_names and not notes
    else:  # named as one direction, with the other reading in a note of every ih weight
        assert names == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1",
                         "rnn.weight_hh_l1"]
        assert len(notes) == 2 and "weight_{ih,hh}_l0_reverse" in notes[1]
    # every weight is the one torch unpacks from the packed cell of that index
    directions = 2 if bidirectional else 1
    for i, cell in enumerate(q.rnn._all_weight_values):
        packed_ih, packed_hh = cell.param.__getstate__()[0][4]
        layer, rev = divmod(i, directions if decided else 1)
        suffix = f"l{layer}" + ("_reverse" if rev else "")
        _assert_weight_matches(ckpt.layer(f"rnn.weight_ih_{suffix}"),
                               torch.ops.quantized.linear_unpack(packed_ih)[0])
        _assert_weight_matches(ckpt.layer(f"rnn.weight_hh_{suffix}"),
                               torch.ops.quantized.linear_unpack(packed_hh)[0])


def test_dynamic_fp16_records_float16_but_stores_float32(tmp_path):
    _, q = tm.dynamic(torch.float16)
    ckpt = _load(q.state_dict(), tmp_path)
    fc = ckpt.layer("fc")
    assert fc.mode is Mode.DYNAMIC
    assert fc.weight.declared_dtype == "float16" and fc.weight.stored_dtype == "float32"
    np.testing.assert_array_equal(fc.weight.values, q.fc.weight().numpy())
    assert any("float16" in n.message for n in fc.notes)
    assert ckpt.layer("lstm.weight_ih_l0").mode is Mode.FLOAT


@pytest.mark.parametrize("four_bit", [False, True])
def test_weight_only_embeddings(tmp_path, four_bit):
    _, q = tm.embeddings(four_bit)
    sd = q.state_dict()
    ckpt = _load(sd, tmp_path)
    _assert_all_keys_attributed(ckpt, sd)
    for name in ("emb", "bag"):
        layer = ckpt.layer(name)
        assert layer.mode is Mode.WEIGHT_ONLY
        t = sd[f"{name}._packed_params._packed_weight"]
        w = layer.weight
        assert w.quant.qscheme == "per_channel_affine_float_qparams"
        np.testing.assert_array_equal(w.quant.scale, t.q_per_channel_scales().numpy())
        np.testing.assert_array_equal(w.quant.zero_point, t.q_per_channel_zero_points().numpy())
        # the unpacked int values dequantize exactly as torch does
        deq = ((w.values.astype(np.float32) - w.quant.zero_point[:, None].astype(np.float32))
               * w.quant.scale[:, None].astype(np.float32))
        np.testing.assert_array_equal(deq, t.dequantize().numpy())
    emb = ckpt.layer("emb")
    if four_bit:
        assert emb.weight.stored_dtype == "quint4x2"
        assert emb.weight.declared_dtype == "quint8"  # torch's quirk for nn.Embedding
        assert any("quint4x2" in n.message for n in emb.notes)


def test_qat_prepared(tmp_path):
    _, prepared, converted = tm.mlp_qat("fbgemm")
    sd = prepared.state_dict()
    ckpt = _load(sd, tmp_path)
    assert ckpt.stage == "qat-prepared"
    _assert_all_keys_attributed(ckpt, sd)
    assert not ckpt.unrecognised
    fc1 = ckpt.layer("fc1")
    assert fc1.mode is Mode.QAT_PREPARED
    fq = prepared.fc1.weight_fake_quant
    np.testing.assert_array_equal(fc1.weight.quant.scale, fq.scale.double().numpy())
    np.testing.assert_array_equal(fc1.weight.quant.zero_point, fq.zero_point.numpy())
    np.testing.assert_array_equal(fc1.weight.values, prepared.fc1.weight.detach().numpy())
    app = prepared.fc1.activation_post_process
    assert fc1.output.scale == float(app.scale) and fc1.output.zero_point == int(app.zero_point)
    # after convert, the output qparams are exactly the fake-quant's
    assert fc1.output.scale == converted.fc1.scale
    assert ("fc1.activation_post_process.scale", "fc1.scale") in fc1.converts_to
    roles = {ref.key: ref.role for ref in fc1.keys}
    assert roles["fc1.weight_fake_quant.fake_quant_enabled"] is Role.FAKE_QUANT_FLAGS
    assert roles["fc1.activation_post_process.activation_post_process.min_val"] is \
        Role.OBSERVER_STATS
    assert roles["fc1.weight_fake_quant.scale"] is Role.WEIGHT_QPARAMS
    assert ckpt.layer("fc1").input_source.layer == "quant"
    # the output observer's keys are its own, not the weight fake-quant's observer's
    assert fc1.output_observer.keys == ("fc1.activation_post_process.activation_post_process"
                                        ".min_val", "fc1.activation_post_process."
                                        "activation_post_process.max_val")


def test_ptq_prepared(tmp_path):
    prepared = tm.ptq_prepared()
    sd = prepared.state_dict()
    ckpt = _load(sd, tmp_path)
    assert ckpt.stage == "ptq-prepared"
    _assert_all_keys_attributed(ckpt, sd)
    fc1 = ckpt.layer("fc1")
    assert fc1.mode is Mode.PTQ_PREPARED
    obs = prepared.fc1.activation_post_process
    assert fc1.output_observer.min_val[0] == float(obs.min_val)
    assert fc1.output_observer.max_val[0] == float(obs.max_val)


def test_float_checkpoint(tmp_path):
    model, _, _ = tm.mlp_qat()
    sd = {k: v for k, v in model.state_dict().items() if "fake_quant" not in k
          and "activation_post_process" not in k}
    ckpt = _load(sd, tmp_path)
    assert ckpt.stage == "float"
    assert all(lay.mode is Mode.FLOAT for lay in ckpt.layers)
    _assert_all_keys_attributed(ckpt, sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_wrappers(tmp_path, wrapper):
    _, _, q = tm.mlp_qat()
    ckpt = _load({wrapper: q.state_dict(), "epoch": 3}, tmp_path)
    assert ckpt.wrapper == wrapper
    assert [u.key for u in ckpt.unrecognised] == ["epoch"]
    assert ckpt.layer("fc1").mode is Mode.STATIC


def test_plain_dict_without_metadata_still_infers(tmp_path):
    _, _, q = tm.mlp_qat()
    sd = dict(q.state_dict())  # drops torch's _metadata
    ckpt = _load(sd, tmp_path)
    assert not ckpt.module_order_known
    assert ckpt.layer("fc1").mode is Mode.STATIC  # a QuantStub is present
    assert ckpt.layer("fc2").input_source.layer == "fc1"


def test_unknown_keys_are_listed_not_dropped(tmp_path):
    _, _, q = tm.mlp_qat()
    sd = q.state_dict()
    sd["fc1.mystery"] = torch.zeros(3)
    sd["fc1._packed_params._packed_params"] = (sd["fc1._packed_params._packed_params"][0],)
    ckpt = _load(sd, tmp_path)
    listed = {u.key: u.reason for u in ckpt.unrecognised}
    assert listed["fc1.mystery"] == "not expected in a packed Linear module"
    assert "weight tensor, bias" in listed["fc1._packed_params._packed_params"]
    _assert_all_keys_attributed(ckpt, sd)

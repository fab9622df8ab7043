"""The loaders decide the vocabulary (op kind, file family, stage, packed scheme) as enums;
decisions never read the display labels. Checked on the committed samples and on models
built with real torch flows."""

from __future__ import annotations

import json

import pytest
import torch
import torch_models as tm

import qinspect
from qinspect.loaders.modclass import class_op
from qinspect.model import (
    Family,
    OpKind,
    PackedScheme,
    PerAxis,
    PerBlock,
    PerGroup,
    PerTensor,
    RnnCell,
    Stage,
)

FAMILIES = [
    ("mlp_int8_fbgemm.pt", Family.EAGER, Stage.CONVERTED),
    ("mlp_qat_prepared.pt", Family.EAGER, Stage.QAT_PREPARED),
    ("mlp_fp32.pt", Family.EAGER, Stage.FLOAT),
    ("fx_mlp_int8_state_dict.pt", Family.FX, Stage.CONVERTED),
    ("fx_mlp_int8_graphmodule.pt", Family.FX_PICKLE, Stage.CONVERTED),
    ("fx_mlp_int8_ts.pt", Family.TORCHSCRIPT, Stage.CONVERTED),
    ("eager_mlp_int8_ts.pt", Family.TORCHSCRIPT, Stage.CONVERTED),
    ("pt2e_mlp_xnnpack.pt2", Family.EXPORT, Stage.CONVERTED),
    ("torchao_int8wo.pt", Family.TORCHAO, Stage.CONVERTED),
    ("hf/gptq_v1_asym", Family.HUGGING_FACE, Stage.CONVERTED),
    ("hf/llama_bf16", Family.HUGGING_FACE, Stage.FLOAT),
]


@pytest.mark.parametrize(("name", "family", "stage"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_loader_decides_family_and_stage(samples, name, family, stage):
    ckpt = qinspect.load(samples / name)
    assert ckpt.family is family
    assert ckpt.stage is stage


def test_stage_is_shown_and_written_as_its_value(samples, cli):
    human = cli("show", samples / "mlp_qat_prepared.pt")
    assert "eager state_dict, qat-prepared" in human.out and "Stage." not in human.out
    doc = json.loads(cli("show", samples / "mlp_qat_prepared.pt", "--json").out)
    assert doc["stage"] == "qat-prepared"
    diff = cli("diff", samples / "mlp_fp32.pt", samples / "mlp_int8_fbgemm.pt")
    assert "(float, " in diff.out and "(converted, " in diff.out and "Stage." not in diff.out


def test_eager_state_dict_ops_from_keys_and_shapes(tmp_path):
    """A state_dict has no class names: the op follows from the keys; a fused ReLU cannot
    be told from the keys, so it stays unknown (False)."""
    _, _, q = tm.conv_zoo()
    ckpt = qinspect.load(tm.save(q.state_dict(), tmp_path / "zoo.pt"))
    ops = {lay.name: lay.op for lay in ckpt.layers}
    assert ops["quant"] is OpKind.QUANTIZE
    assert ops["c1"] is ops["block.0"] is ops["c3"] is OpKind.CONV
    assert ops["bn"] is OpKind.BATCH_NORM
    assert ops["ln"] is ops["gn"] is ops["inorm"] is OpKind.NORM
    assert ops["hs"] is ops["lrelu"] is OpKind.ACTIVATION
    assert ops["add"] is ops["mul"] is ops["cat"] is OpKind.FUNCTIONAL
    # per-tensor ConvTranspose stores the keys of a Conv: the file cannot tell them apart
    assert ops["ct"] is OpKind.CONV
    assert not any(lay.fused_relu for lay in ckpt.layers)


def test_torchscript_ops_from_the_stored_classes(tmp_path):
    """The archive stores each module's class: ConvReLU2d is a CONV with a fused ReLU,
    ConvTranspose2d is told from Conv2d (the state_dict could not), LeakyReLU is an
    activation, not a fused ReLU."""
    _, _, q = tm.conv_zoo()
    path = tmp_path / "zoo_ts.pt"
    with tm.engine("x86"), torch.no_grad():
        torch.jit.save(torch.jit.trace(q, torch.randn(2, 3, 6, 6)), path)
    ckpt = qinspect.load(path)
    assert ckpt.family is Family.TORCHSCRIPT
    by_name = {lay.name: lay for lay in ckpt.layers}
    assert by_name["block.0"].kind == "ConvReLU2d"
    assert by_name["block.0"].op is OpKind.CONV and by_name["block.0"].fused_relu
    assert by_name["ct"].kind == "ConvTranspose2d" and by_name["ct"].op is OpKind.CONV_TRANSPOSE
    assert by_name["bn"].kind == "BatchNorm2d" and by_name["bn"].op is OpKind.BATCH_NORM
    assert by_name["lrelu"].op is OpKind.ACTIVATION and not by_name["lrelu"].fused_relu
    # tracing inlines FloatFunctional.add into the code: an op with no module of its own
    assert by_name["add#1"].kind == "quantized.add (in the code)"
    assert by_name["add#1"].op is OpKind.GRAPH_OP
    assert not by_name["c1"].fused_relu


def test_eager_script_sample_linear_relu(samples):
    ckpt = qinspect.load(samples / "eager_mlp_int8_ts.pt")
    fc1, fc2 = ckpt.layer("fc1"), ckpt.layer("fc2")
    assert (fc1.kind, fc1.op, fc1.fused_relu) == ("LinearReLU", OpKind.LINEAR, True)
    assert (fc2.kind, fc2.op, fc2.fused_relu) == ("Linear", OpKind.LINEAR, False)


@pytest.mark.parametrize("name", ["lstm_dynamic_int8.pt", "lstm_fp32.pt"])
def test_rnn_gates_carry_cell_gate_layer_and_direction(samples, name):
    ckpt = qinspect.load(samples / name)
    gates = [lay for lay in ckpt.layers if lay.op is OpKind.RNN_GATES]
    assert [(g.name, g.rnn.cell, g.rnn.gate, g.rnn.layer, g.rnn.reverse) for g in gates] == [
        ("lstm.weight_ih_l0", RnnCell.LSTM, "ih", 0, False),
        ("lstm.weight_hh_l0", RnnCell.LSTM, "hh", 0, False),
        ("lstm.weight_ih_l1", RnnCell.LSTM, "ih", 1, False),
        ("lstm.weight_hh_l1", RnnCell.LSTM, "hh", 1, False),
    ]
    assert ckpt.layer("fc").op is OpKind.LINEAR and ckpt.layer("fc").rnn is None


def test_bidirectional_gru_gates(tmp_path):
    gru = torch.nn.GRU(4, 3, num_layers=1, bidirectional=True)
    ckpt = qinspect.load(tm.save(gru.state_dict(), tmp_path / "gru.pt"))
    reverse = ckpt.layer("weight_hh_l0_reverse")
    assert reverse.op is OpKind.RNN_GATES and reverse.kind == "GRU gates (hh)"
    assert (reverse.rnn.cell, reverse.rnn.gate, reverse.rnn.reverse) == (RnnCell.GRU, "hh", True)
    assert reverse.rnn.input_side is False and ckpt.layer("weight_ih_l0").rnn.input_side


def test_fx_ops_without_modules(samples):
    ckpt = qinspect.load(samples / "fx_mlp_int8_state_dict.pt")
    ops = {lay.name: lay.op for lay in ckpt.layers}
    assert ops["conv_input_0"] is OpKind.QUANTIZE
    assert ops["op_0"] is ops["op_2"] is OpKind.GRAPH_OP
    assert ops["conv"] is OpKind.CONV and ops["fc1"] is OpKind.LINEAR


def test_export_ops_from_graph_targets(samples):
    ckpt = qinspect.load(samples / "pt2e_mlp_x86.pt2")
    assert {lay.name: lay.op for lay in ckpt.layers} == {
        "conv": OpKind.CONV, "fc1": OpKind.LINEAR, "fc2": OpKind.LINEAR}


def test_torchao_tensor_class(samples):
    ckpt = qinspect.load(samples / "torchao_int8wo.pt")
    quantized = [lay for lay in ckpt.layers if lay.weight is not None and lay.mode.value != "float"]
    assert quantized and all(lay.op is OpKind.LINEAR and lay.tensor_class == "Int8Tensor"
                             for lay in quantized)


@pytest.mark.parametrize(("name", "scheme"), [
    ("gptq_v1_asym", PackedScheme.GPTQ_V1), ("gptq_v2_asym", PackedScheme.GPTQ_V2),
    ("awq_gemm", PackedScheme.AWQ_GEMM), ("bnb_int8", PackedScheme.BNB_INT8),
    ("bnb_nf4", PackedScheme.BNB_4BIT), ("ct_w4a16_group", PackedScheme.CT_INT),
    ("ct_fp8_block", PackedScheme.CT_FP8), ("ct_nvfp4", PackedScheme.CT_NVFP4),
    ("modelopt_nvfp4", PackedScheme.MODELOPT_NVFP4), ("modelopt_fp8", PackedScheme.MODELOPT_FP8),
    ("fp8_block_deepseek", PackedScheme.FP8), ("ct_mxfp4", PackedScheme.CT_MXFP4),
    ("mxfp4_gptoss", PackedScheme.GPTOSS_MXFP4),
])
def test_hf_packed_scheme(samples, name, scheme):
    ckpt = qinspect.load(samples / "hf" / name)
    packed = [lay for lay in ckpt.layers if lay.packed is not None]
    assert packed and {lay.packed.quant.scheme for lay in packed} == {scheme}
    assert scheme.scales_input_major is (scheme in (PackedScheme.GPTQ_V1, PackedScheme.GPTQ_V2,
                                                    PackedScheme.AWQ_GEMM))


def test_hf_module_ops(samples):
    ckpt = qinspect.load(samples / "hf" / "mxfp4_gptoss")
    ops = {lay.op for lay in ckpt.layers}
    experts = [lay for lay in ckpt.layers if lay.packed is not None]
    assert experts and all(lay.op is OpKind.EXPERTS and lay.kind == "experts" for lay in experts)
    assert {OpKind.EMBEDDING, OpKind.NORM, OpKind.LINEAR} <= ops
    llama = qinspect.load(samples / "hf" / "llama_bf16")
    labels = {lay.op: lay.kind for lay in llama.layers}
    assert labels[OpKind.EMBEDDING] == "embedding" and labels[OpKind.NORM] == "norm"


@pytest.mark.parametrize(("name", "op", "relu"), [
    ("ConvReLU2d", OpKind.CONV, True), ("ConvAddReLU2d", OpKind.CONV, True),
    ("Conv1d", OpKind.CONV, False), ("ConvTranspose2d", OpKind.CONV_TRANSPOSE, False),
    ("LinearReLU", OpKind.LINEAR, True), ("LinearLeakyReLU", OpKind.LINEAR, False),
    ("BNReLU2d", OpKind.BATCH_NORM, True), ("BatchNorm3d", OpKind.BATCH_NORM, False),
    ("QFunctional", OpKind.FUNCTIONAL, False), ("Quantize", OpKind.QUANTIZE, False),
    ("LeakyReLU", OpKind.ACTIVATION, False), ("EmbeddingBag", OpKind.EMBEDDING, False),
])
def test_class_op(name, op, relu):
    found = class_op(name)
    assert found is not None and (found.op, found.fused_relu) == (op, relu)


def test_unknown_class_keeps_the_loaders_decision():
    assert class_op("MyBlock") is None


@pytest.mark.parametrize(("name", "layer", "granularity"), [
    ("torchao_int4wo_cpu.pt", "fc1", PerGroup(32, 1)),
    ("torchao_int4wo_cpu.pt", "fc2", PerAxis(0)),
    ("mlp_int8_fbgemm.pt", "fc1", PerAxis(0)),
    ("mlp_int8_qnnpack.pt", "fc1", PerTensor()),
    ("pt2e_mlp_xnnpack.pt2", "conv", PerAxis(0)),
    ("embbag_4bit.pt", "emb", PerAxis(0)),
    ("mlp_qat_prepared.pt", "fc1", PerAxis(0)),
])
def test_torch_side_granularity_decided_at_load(samples, name, layer, granularity):
    """Torch-side weights carry the same granularity data as packed HF weights."""
    quant = qinspect.load(samples / name).layer(layer).weight.quant
    assert quant.granularity == granularity


def test_torchao_blocks_to_granularity():
    from qinspect.loaders.torchao import _granularity

    assert _granularity((8, 64), (8, 64)) == ("per_tensor_affine", PerTensor())
    assert _granularity((8, 64), (1, 64)) == ("per_channel_affine", PerAxis(0))
    assert _granularity((8, 64), (1, 16)) == ("per_group_affine (group 16)", PerGroup(16, 1))
    assert _granularity((8, 64), (4, 16)) == ("block_affine", PerBlock((4, 16)))

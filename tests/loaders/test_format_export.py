"""torch.export archives after PT2E convert_pt2e (XNNPACK and X86Inductor quantizers)."""

from __future__ import annotations

import numpy as np
from tests_support import keys_attributed

import qinspect
from qinspect.model import Mode

QD = "quantized_decomposed"


def _expected(program):
    """From the live ExportedProgram: per module, weight int8 + qparams, input and output
    literal qparams, as the graph's q/dq nodes hold them."""
    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    state = program.state_dict
    out = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or "conv2d" not in str(node.target) and \
                "linear" not in str(node.target):
            continue
        act_dq, w_dq, bias = node.args[0], node.args[1], node.args[2]
        module = names[bias.name].rsplit(".", 1)[0]
        weight = state[names[w_dq.args[0].name]]
        scale = state[names[w_dq.args[1].name]]
        zp = state[names[w_dq.args[2].name]]
        output = None
        user = next(iter(node.users))
        while output is None and user is not None:
            if QD in str(user.target) and "quantize_per_tensor" in str(user.target):
                output = (user.args[1], user.args[2])
            elif len(user.users) == 1 and "relu" in str(user.target) or \
                    "flatten" in str(user.target):
                user = next(iter(user.users))
            else:
                user = None
        out[module] = dict(weight=weight, scale=scale, zp=zp,
                           input=(act_dq.args[1], act_dq.args[2]), output=output,
                           bias=state[names[bias.name]].detach())
    unread = {names[n.name] for n in program.graph.nodes
              if n.op == "placeholder" and n.name in names and not n.users}
    return out, unread


def test_pt2e_qparams_match_the_graph(pt2e):
    made, path = pt2e
    program = made.quantized
    ckpt = qinspect.load(path)
    assert "PT2E" in ckpt.format and ckpt.stage == "converted"
    expected, unread = _expected(program)
    assert set(expected) == {"conv", "fc1", "fc2"}
    for module, exp in expected.items():
        layer = ckpt.layer(module)
        assert layer.mode is Mode.STATIC
        np.testing.assert_array_equal(layer.weight.values, exp["weight"].numpy())
        np.testing.assert_array_equal(layer.weight.quant.scale, exp["scale"].double().numpy())
        np.testing.assert_array_equal(layer.weight.quant.zero_point, exp["zp"].numpy())
        np.testing.assert_array_equal(layer.bias, exp["bias"].numpy())
        assert (layer.input.scale, layer.input.zero_point) == exp["input"]
        if exp["output"] is None:
            assert layer.output is None
        else:
            assert (layer.output.scale, layer.output.zero_point) == exp["output"]
        assert not layer.input_source.inferred
    # fc1 is fed by the conv (through relu/flatten and a requantize), fc2 by fc1
    assert ckpt.layer("fc2").input_source.layer == "fc1"
    # the BN-folded float weights are stored but never read: dead weight
    assert {d.key for d in ckpt.dead_weights} == unread == {"conv.weight", "fc1.weight",
                                                             "fc2.weight"}
    assert sum(d.nbytes for d in ckpt.dead_weights) == sum(
        program.state_dict[k].numel() * 4 for k in unread)
    assert keys_attributed(ckpt) | {u.key for u in ckpt.unrecognised} == set(
        program.state_dict)


def test_show_lists_dead_weight(pt2e, cli):
    _, path = pt2e
    result = cli("show", path)
    assert result.code == 0, result.err
    assert "Dead weight: 3 stored tensors" in result.out and "fc1.weight" in result.out


def test_verify_runs_the_whole_graph(pt2e, tmp_path):
    """End-to-end SQNR equals running the float and the quantized models directly."""
    import torch

    from qinspect.quant.metrics import sqnr_db

    made, path = pt2e
    x = made.example
    sample = tmp_path / "x.npy"
    np.save(sample, x.numpy())
    report = qinspect.verify(path, input=sample)
    assert report.mode == "graph"
    assert {r.name for r in report.layers if r.verified} >= {"conv", "fc1", "fc2"}
    with torch.no_grad():
        expected = sqnr_db(made.float_model(x).double().numpy(),
                           made.quantized.module()(x).double().numpy())
    assert round(report.end_to_end.sqnr_db, 1) == round(expected, 1)
    for row in report.layers:
        if row.verified and row.name != "flatten":
            assert 30 < row.sqnr_db < 80

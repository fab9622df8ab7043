"""verify on qparams torch cannot run: the layer is listed as not verified, with the
reason, and the rest of the report still comes out (exit 0, never an internal error)."""

from __future__ import annotations

import json
import math

import pytest
import torch


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("fc1.scale", math.nan, "output scale nan is not a positive finite number"),
    ("fc1.scale", 0.0, "output scale 0 is not a positive finite number"),
    ("fc1.scale", -0.1, "output scale -0.1 is not a positive finite number"),
    ("fc1.scale", math.inf, "output scale inf is not a positive finite number"),
    ("fc1.zero_point", 300, "output zero point 300 is outside quint8's range"),
])
def test_unrunnable_qparams_are_reported_not_crashed_on(cli, samples, tmp_path, key, value,
                                                         reason):
    sd = torch.load(samples / "mlp_int8_fbgemm.pt", weights_only=True)
    sd[key] = torch.tensor(value)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    result = cli("verify", path, "--input", samples / "sample.npy", "--json")
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)["layers"]}
    assert rows["fc1"]["verified"] is False
    assert reason in rows["fc1"]["reason"]
    assert rows["fc2"]["verified"] is False  # its input qparams are fc1's output ones
    assert "from its producer" in rows["fc2"]["reason"]
    assert rows["quant"]["verified"] is True


@pytest.mark.parametrize(("sample", "index", "missing", "reason"), [
    ("dynlinear_int8.pt", 0, "weight", "the file holds no weight for it"),
    ("mlp_int8_fbgemm.pt", 0, "output", "no output qparams"),
])
def test_a_layer_without_its_weight_or_output_qparams_is_not_verified(samples, sample, index,
                                                                      missing, reason):
    """A checkpoint given to the library with a layer missing what verify runs: that layer
    is listed as not verified with the reason, the others still run."""
    from dataclasses import replace

    import qinspect
    from qinspect.loaders import load

    ckpt = load(samples / sample)
    layers = list(ckpt.layers)
    layers[index] = replace(layers[index], **{missing: None})
    report = qinspect.verify(replace(ckpt, layers=tuple(layers)))
    rows = {r.name: r for r in report.layers}
    broken = rows[layers[index].name]
    assert broken.verified is False
    assert reason in (broken.reason or "")
    assert all(r.verified for name, r in rows.items() if name != broken.name)

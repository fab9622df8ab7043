"""`show` on every bundled sample: every key attributed, JSON valid, numbers from torch."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import make_samples  # sample_checkpoints/ is put on sys.path by conftest
import numpy as np
import pytest
import torch
from tests_support import raw_keys

import qinspect

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_checkpoints"
# the eager-mode samples; other formats have their own tests
SAMPLES = [SAMPLE_DIR / name for name in sorted(make_samples.FILES)]
SCHEMA = json.loads(resources.files("qinspect").joinpath("schemas/show-1.json").read_text())


def test_there_are_samples():
    assert len(SAMPLES) >= 15


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_key_of_every_sample_is_attributed(path):
    ckpt = qinspect.load(path)
    attributed = {ref.key for layer in ckpt.layers for ref in layer.keys}
    assert not ckpt.unrecognised, ckpt.unrecognised
    assert attributed == raw_keys(path)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_show_json_validates_for_every_sample(cli, path):
    r = cli("show", path, "--json", "--explain")
    assert r.code == 0, r.err
    jsonschema.validate(json.loads(r.out), SCHEMA)


def test_forum_mlp_roles(samples):
    """The forum's model: each layer's weight, input and output qparams as torch has them."""
    doc = qinspect.load(samples / "mlp_int8_fbgemm.pt")
    sd = torch.load(samples / "mlp_int8_fbgemm.pt", weights_only=True)
    fc1 = doc.layer("fc1")
    w, b = sd["fc1._packed_params._packed_params"]
    np.testing.assert_array_equal(fc1.weight.values, w.int_repr().numpy())
    np.testing.assert_array_equal(fc1.weight.quant.scale, w.q_per_channel_scales().numpy())
    np.testing.assert_array_equal(fc1.bias, b.detach().numpy())
    assert fc1.output.scale == float(sd["fc1.scale"])
    assert fc1.output.zero_point == int(sd["fc1.zero_point"])
    assert fc1.input.scale == float(sd["quant.scale"][0])
    assert fc1.input.zero_point == int(sd["quant.zero_point"][0])
    assert doc.layer("fc2").input == fc1.output


def test_4bit_embedding_dtype_mismatch_is_flagged(samples):
    emb = qinspect.load(samples / "embbag_4bit.pt").layer("emb")
    assert (emb.weight.declared_dtype, emb.weight.stored_dtype) == ("quint8", "quint4x2")
    assert any(n.level.value == "warning" for n in emb.notes)

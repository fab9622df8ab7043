"""Hostile safetensors files, index files and configs: each exits 2 with one line, reads
nothing outside the folder and prints no traceback (issue 11, "Hostile input")."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import stwrite as W
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _one_line(result, *needles: str) -> None:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("qinspect: error: "), lines[0]
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _good(tmp_path, name="model.safetensors"):
    t = {"a.weight": W.array("F32", np.ones((2, 3), np.float32)),
         "a.bias": W.array("F32", np.zeros(2, np.float32))}
    return W.write(tmp_path / name, t)


def test_good_file_reads(cli, tmp_path):
    r = cli("show", _good(tmp_path))
    assert r.code == 0, r.err


@pytest.mark.parametrize("n, needle", [(10**9, "declares"), (2**64 - 1, "declares"),
                                       (200_000_000, "the limit")])
def test_header_length_lies(cli, tmp_path, n, needle):
    p = tmp_path / "m.safetensors"
    header, data = W.encode({"x": W.array("F32", np.ones(4, np.float32))})
    W.write_raw(p, header, data, header_len=n)
    _one_line(cli("show", p), needle)


@pytest.mark.parametrize("raw, needle", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"{\"x\": \xff\xfe}", "not valid UTF-8 JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
])
def test_bad_json(cli, tmp_path, raw, needle):
    p = W.write_raw(tmp_path / "m.safetensors", raw, b"")
    _one_line(cli("show", p), needle)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("entry, data, needle", [
    (_entry(dtype="F128"), b"\0" * 8, "unknown dtype"),
    (_entry(dtype=7), b"\0" * 8, "dtype that is not a string"),
    (_entry(shape=(-2,)), b"\0" * 8, "invalid shape"),
    (_entry(shape=(2**62, 2**62)), b"\0" * 8, "invalid shape"),
    (_entry(shape=[2] * 40), b"\0" * 8, "invalid shape"),
    (_entry(shape=("2",)), b"\0" * 8, "invalid shape"),
    (_entry(offsets=(8, 0)), b"\0" * 8, "invalid data_offsets"),
    (_entry(offsets=(0, -8)), b"\0" * 8, "invalid data_offsets"),
    (_entry(offsets=(0, 12)), b"\0" * 12, "needs 8"),
    (_entry(offsets=(0, 8)), b"\0" * 4, "runs past the end"),
    (_entry(offsets=(4, 12)), b"\0" * 12, "hole"),
    (_entry(offsets=(0, 8)), b"\0" * 16, "unused bytes"),
    ("not an object", b"", "not described by an object"),
])
def test_bad_tensor_entries(cli, tmp_path, entry, data, needle):
    p = W.write_raw(tmp_path / "m.safetensors", {"t": entry}, data)
    _one_line(cli("show", p), needle)


def test_overlapping_offsets(cli, tmp_path):
    header = {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}
    p = W.write_raw(tmp_path / "m.safetensors", header, b"\0" * 12)
    _one_line(cli("show", p), "overlaps")


def test_metadata_must_be_strings(cli, tmp_path):
    header = {"a": _entry(), "__metadata__": {"format": {"nested": 1}}}
    p = W.write_raw(tmp_path / "m.safetensors", header, b"\0" * 8)
    _one_line(cli("show", p), "__metadata__")


def _sharded(tmp_path, weight_map):
    folder = tmp_path / "model"
    folder.mkdir()
    _good(folder, "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_index_reads(cli, tmp_path):
    folder = _sharded(tmp_path, {"a.weight": "model-00001-of-00001.safetensors",
                                 "a.bias": "model-00001-of-00001.safetensors"})
    assert cli("show", folder).code == 0
    assert cli("show", folder / "model.safetensors.index.json").code == 0


@pytest.mark.parametrize("shard, needle", [
    ("/etc/passwd", "outside its folder"),
    ("../outside.safetensors", "outside its folder"),
    ("model-00002-of-00002.safetensors", "missing"),
])
def test_index_paths(cli, tmp_path, shard, needle):
    _good(tmp_path, "outside.safetensors")
    folder = _sharded(tmp_path, {"a.weight": shard})
    _one_line(cli("show", folder), needle)


def test_index_symlink_out_of_folder(cli, tmp_path):
    _good(tmp_path, "secret.safetensors")
    folder = _sharded(tmp_path, {"a.weight": "link.safetensors"})
    os.symlink(tmp_path / "secret.safetensors", folder / "link.safetensors")
    _one_line(cli("show", folder), "outside the folder")


def test_index_tensor_not_in_shard(cli, tmp_path):
    folder = _sharded(tmp_path, {"nope": "model-00001-of-00001.safetensors"})
    _one_line(cli("show", folder), "not in the shard")


def test_tensor_in_two_shards(cli, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _good(folder, "s1.safetensors")
    _good(folder, "s2.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "s1.safetensors", "a.bias": "s2.safetensors"}}))
    _one_line(cli("show", folder), "two shards")


@pytest.mark.parametrize("index", ["[]", "{\"weight_map\": [1]}", "{\"weight_map\": {\"a\": 3}}",
                                   "not json"])
def test_bad_index(cli, tmp_path, index):
    folder = tmp_path / "m"
    folder.mkdir()
    _good(folder)
    (folder / "model.safetensors.index.json").write_text(index)
    _one_line(cli("show", folder))


@pytest.mark.parametrize("config, needle", [
    ("[]", "not a JSON object"),
    ("{\"quantization_config\": 5}", "not an object"),
    ("{\"quantization_config\": {\"quant_method\": 5}}", "quant_method"),
    ("{\"quantization_config\": {\"quant_method\": \"hqq\"}}", "HQQ"),
    ("{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": \"four\"}}", "bits"),
    ("{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 1000000}}", "bits"),
    ("{\"quantization_config\": {\"quant_method\": \"gptq\", \"desc_act\": \"yes\"}}",
     "desc_act"),
    ("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"ignore\": 3}}",
     "ignore"),
])
def test_bad_configs(cli, tmp_path, config, needle):
    folder = tmp_path / "m"
    folder.mkdir()
    rng = np.random.default_rng(0)
    W.write(folder / "model.safetensors", {
        "l.qweight": W.array("I32", rng.integers(0, 2**31, (8, 16), dtype=np.int32)),
        "l.qzeros": W.array("I32", rng.integers(0, 2**31, (1, 2), dtype=np.int32)),
        "l.scales": W.array("F16", np.ones((1, 16), np.float16)),
    })
    (folder / "config.json").write_text(config)
    _one_line(cli("show", folder), needle)


def test_nothing_written_and_nothing_read_outside(cli, tmp_path):
    folder = _sharded(tmp_path, {"a.weight": "model-00001-of-00001.safetensors",
                                 "a.bias": "model-00001-of-00001.safetensors"})
    before = sorted(p.name for p in folder.iterdir())
    assert cli("show", folder, "--json").code == 0
    assert sorted(p.name for p in folder.iterdir()) == before


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_keep_the_contract(cli, tmp_path, data):
    """Random mutations of a valid header: either a normal read or one line and exit 2."""
    header, blob = W.encode({"l.weight": W.array("F32", np.ones((4, 4), np.float32)),
                             "l.bias": W.array("BF16", np.ones(4, np.uint16))})
    name = data.draw(st.sampled_from(["l.weight", "l.bias"]))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    value = data.draw(st.one_of(
        st.integers(-2**70, 2**70), st.text(max_size=8),
        st.lists(st.integers(-2**65, 2**65), max_size=5), st.none(), st.booleans(),
        st.sampled_from(["F8_E4M3", "F4", "U8", "I64", "BOOL", "E8M0", "F6_E2M3"])))
    header[name][field] = value
    p = W.write_raw(tmp_path / "f.safetensors", header, blob)
    result = cli("show", p, "--json")
    if result.code != 0:
        _one_line(result)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_byte_flips_keep_the_contract(cli, tmp_path, flips):
    p = _good(tmp_path, "f.safetensors")
    raw = bytearray(p.read_bytes())
    for pos, value in flips:
        raw[pos % len(raw)] = value
    p.write_bytes(bytes(raw))
    result = cli("show", p)
    if result.code != 0:
        _one_line(result)


def test_header_length_field_alone(cli, tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(struct.pack("<Q", 16) + b"{")
    _one_line(cli("show", p))

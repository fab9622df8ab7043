"""The Hugging Face reader against the producing libraries' own dequantization (issue 11).

``libref`` runs compressed-tensors, bitsandbytes, transformers and ModelOpt on the samples
(and re-implements GPTQ/AWQ's torch paths where those libraries cannot run); qinspect's
numpy decoders must give the same bits (rtol=0, atol=0, signed zeros included).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources

import jsonschema
import libref
import numpy as np
import pytest

import qinspect
from qinspect.loaders.hf import container
from qinspect.model import Mode

SAMPLES = libref.SAMPLES
QUANTIZED = [n for n in libref.available() if n not in libref.BASES]
SCHEMA = json.loads(resources.files("qinspect").joinpath("schemas/show-2.json").read_text())


@pytest.fixture(scope="module", params=QUANTIZED)
def sample(request):
    name = request.param
    return name, qinspect.load(SAMPLES / name), libref.truth(name)


def test_every_module_dequantizes_bit_exactly(sample):
    name, ckpt, truth = sample
    assert truth.weights, name
    for module, ref in truth.weights.items():
        layer = ckpt.layer(module)
        assert layer.packed is not None, module
        got = layer.packed.source.dequantize()
        ref = np.ascontiguousarray(ref, np.float32)
        assert got.shape == ref.shape, module
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32),
                                      err_msg=f"{name} {module} ({truth.dequantizer})")


def test_the_library_reads_only_keys_of_that_layer(sample):
    name, ckpt, truth = sample
    for module, keys in truth.keys.items():
        mine = {k.key for k in ckpt.layer(module).keys}
        assert set(keys) <= mine, (module, set(keys) - mine)


def test_every_tensor_has_exactly_one_role(sample):
    name, ckpt, _ = sample
    ts = container.open_set(SAMPLES / name)
    keys = [k.key for lay in ckpt.layers for k in lay.keys]
    assert not ckpt.unrecognised, ckpt.unrecognised
    assert sorted(keys) == sorted(ts.tensors), name


def test_unquantized_modules_are_float_with_a_reason(sample):
    name, ckpt, truth = sample
    for module in truth.unquantized:
        layer = ckpt.layer(module)
        assert layer.mode is Mode.FLOAT and layer.packed is None, module
        assert layer.notes and "float" in layer.notes[0].message


def test_parameter_count_is_the_base_models(sample):
    """Packed elements x values per element: the base model's count, not the Hub's 4x-off
    count of int32 words (huggingface.js #1770)."""
    name, ckpt, _ = sample
    base = libref.BASE_OF.get(name, "llama_bf16")
    base_params = sum(info.numel for info in container.open_set(SAMPLES / base).tensors.values())
    assert qinspect.summarise(ckpt).parameters == base_params


def test_show_json_validates(cli, sample):
    name, _, _ = sample
    result = cli("show", SAMPLES / name, "--json", "--explain")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["schema"] == "qinspect.show/2"
    assert doc["hf"]["producer"]


def test_diff_against_the_base_matches_library_truth(sample):
    """Per-layer weight SQNR of qinspect diff = SQNR computed here from the library's own
    dequantization and the float weights the sample was quantized from."""
    name, ckpt, truth = sample
    base = libref.BASE_OF.get(name, "llama_bf16")
    original = libref.original(name)
    report = qinspect.diff(SAMPLES / base, SAMPLES / name)
    rows = {r.name: r for r in report.layers}
    for module, deq in truth.weights.items():
        ref = original[module].astype(np.float64)
        got = deq.astype(np.float64)
        if ref.shape != got.shape:  # gpt-oss bf16 experts are stored [E, in, out]
            ref = np.swapaxes(ref, -1, -2)
        expected = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
        row = rows[module]
        assert row.weight is not None, (module, row.problem)
        assert row.weight.sqnr_db == pytest.approx(expected, rel=1e-9), module


def test_sharded_folder_index_file_and_single_shard_agree():
    folder = SAMPLES / "ct_w4a16_sharded"
    by_folder = qinspect.load(folder)
    index = next(folder.glob("*.index.json"))
    by_index = qinspect.load(index)
    assert [lay.name for lay in by_folder.layers] == [lay.name for lay in by_index.layers]
    assert by_folder.hf is not None and len(by_folder.hf.shards) == 2
    assert by_folder.file_size == sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_config_decides_not_the_names():
    """ModelOpt writes compressed-tensors-looking config_groups: dispatch on quant_method."""
    ckpt = qinspect.load(SAMPLES / "modelopt_nvfp4")
    assert ckpt.hf is not None and ckpt.hf.quantization_config.get("config_groups")
    fmt = {lay.packed.quant.format for lay in ckpt.layers if lay.packed is not None}
    assert fmt == {"ModelOpt NVFP4"}


def test_without_config_the_format_is_inferred_and_said(tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(SAMPLES / "gptq_v1_sym", copy)
    (copy / "config.json").unlink()
    (copy / "quantize_config.json").unlink()  # GPTQModel's second copy of the config
    ckpt = qinspect.load(copy)
    assert any("inferred from tensor names" in n.message for n in ckpt.notes)
    assert any(lay.packed is not None for lay in ckpt.layers)


def test_scale_directions_are_data():
    ct = qinspect.load(SAMPLES / "ct_nvfp4")
    mo = qinspect.load(SAMPLES / "modelopt_nvfp4")
    layer_ct = next(lay for lay in ct.layers if lay.packed is not None)
    layer_mo = next(lay for lay in mo.layers if lay.packed is not None)
    ops_ct = {t.key.rsplit(".", 1)[-1]: t.op.value for t in layer_ct.packed.quant.tensors if t.op}
    ops_mo = {t.key.rsplit(".", 1)[-1]: t.op.value for t in layer_mo.packed.quant.tensors if t.op}
    assert ops_ct == {"weight_scale": "multiply", "weight_global_scale": "divide"}
    assert ops_mo == {"weight_scale": "multiply", "weight_scale_2": "multiply"}


def test_explain_answers_the_seed_question_for_input_scales(cli):
    result = cli("show", SAMPLES / "ct_fp8_tensor", "--explain")
    assert result.code == 0, result.err
    assert "quantizes this layer's INPUT activation" in result.out.replace("\n", " ")


def test_histogram_statistics_equal_unpacked_codes(sample):
    """show's code statistics come from a byte histogram; they equal those of the codes."""
    from qinspect.analyse.packed import packed_health

    name, ckpt, _ = sample
    for layer in ckpt.layers:
        if layer.packed is None:
            continue
        h = packed_health(layer)
        codes = np.asarray(layer.packed.source.codes(), np.float64)
        finite = codes[np.isfinite(codes)]
        assert h.code_min == finite.min() and h.code_max == finite.max(), layer.name

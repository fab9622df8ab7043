"""The Hugging Face samples (sample_checkpoints/hf/) are what make_hf_samples.py writes, and
their producing libraries dequantize every quantized module to a finite weight of the right
shape, close to the float weight it came from (libref.py is that truth)."""

from __future__ import annotations

from pathlib import Path

import libref
import numpy as np
import pytest

SAMPLES = libref.SAMPLES
QUANTIZED = sorted(libref.TRUTH)
ALL_FOLDERS = sorted([*QUANTIZED, *libref.BASES])

# SQNR (dB) of the library's dequantized weight against the original bf16 weight, worst module.
# Measured with `python tests/hf/libref.py` (torch 2.13.0 CPU); each bound is the measured worst
# module minus about 0.5 dB, so a sample made wrongly (scale direction, nibble order, group
# assignment, zero-point offset) fails.
SQNR_MIN_DB = {
    "ct_w4a16_group": 19.8,
    "ct_w4a16_asym": 21.2,
    "ct_w8a16_channel": 41.4,
    "ct_w8a8_int": 41.4,
    "ct_fp8_tensor": 30.9,
    "ct_fp8_block": 30.9,
    "ct_nvfp4": 19.8,
    "ct_mxfp4": 18.3,
    "ct_w4a16_sharded": 19.8,
    "ct_w4a16_actorder": 19.8,
    "gptq_v1_sym": 19.8,
    "gptq_v1_asym": 21.2,
    "gptq_v2_asym": 21.2,
    "gptq_desc_act": 19.8,
    "gptq_8bit": 44.5,
    "gptq_3bit": 14.6,
    "awq_gemm": 21.2,
    "bnb_nf4": 20.1,
    "bnb_nf4_dq": 20.1,
    "bnb_fp4": 17.7,
    "bnb_int8": 42.2,
    "fp8_block_deepseek": 31.0,
    "fp8_tensor_static": 31.0,
    "modelopt_nvfp4": 19.8,
    "modelopt_fp8": 30.9,
    "mxfp4_gptoss": 18.4,
}
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = (got.astype(np.float64) - ref.astype(np.float64)) ** 2
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / err.sum()))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sample_set_is_what_the_script_makes(regenerated_hf):
    made = sorted(p.name for p in regenerated_hf.iterdir())
    committed = sorted(p.name for p in SAMPLES.iterdir())
    assert made == committed == sorted([*ALL_FOLDERS, "inputs"])


@pytest.mark.parametrize("name", [*ALL_FOLDERS, "inputs"])
def test_committed_sample_is_byte_identical_to_a_fresh_run(name, regenerated_hf):
    assert _files(SAMPLES / name) == _files(regenerated_hf / name)
    for f in _files(SAMPLES / name):
        ours, fresh = (SAMPLES / name / f).read_bytes(), (regenerated_hf / name / f).read_bytes()
        assert ours == fresh, f"{name}/{f} differs from a fresh make_hf_samples.py run"


def test_tokens_input():
    tokens = np.load(SAMPLES / "inputs" / "tokens.npy")
    assert tokens.dtype == np.int64 and tokens.shape == (2, 16)
    assert 0 <= tokens.min() and tokens.max() < libref.load_config(SAMPLES / "llama_bf16")[
        "vocab_size"]


def test_samples_fit_in_the_repository():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 8.5 * 2**20, f"{total / 2**20:.1f} MiB of HF samples"


@pytest.fixture(scope="module", params=QUANTIZED)
def sample(request):
    name = request.param
    return name, libref.truth(name), libref.original(name)


def test_library_dequantizes_every_quantized_module(sample):
    name, truth, orig = sample
    config = libref.load_config(SAMPLES / name)
    assert "quantization_config" in config
    expected = {m for m in orig if m.rsplit(".", 1)[-1] in LLAMA_LINEARS}
    if name == "mxfp4_gptoss":
        expected = {m for m in orig if m.endswith(("gate_up_proj", "down_proj"))}
    assert set(truth.weights) == expected, name
    for module, w in truth.weights.items():
        assert w.dtype == np.float32
        assert w.shape == orig[module].shape, module
        assert np.isfinite(w).all(), module


def test_library_result_is_close_to_the_float_weights(sample):
    name, truth, orig = sample
    worst = min(sqnr_db(orig[m], w) for m, w in truth.weights.items())
    assert worst >= SQNR_MIN_DB[name], f"{name}: worst module SQNR {worst:.2f} dB"
    # and not the float weights themselves: something was quantized
    assert all(not np.array_equal(orig[m], w) for m, w in truth.weights.items())


def test_keys_the_library_reads_are_in_the_file(sample):
    name, truth, _ = sample
    tensors = libref.load_tensors(SAMPLES / name)
    for module, keys in truth.keys.items():
        assert keys and set(keys) <= set(tensors), module


def test_unquantized_modules_are_the_ignored_ones():
    truth = libref.truth("ct_w4a16_group")
    assert truth.unquantized == ("lm_head", "model.embed_tokens")
    config = libref.load_config(SAMPLES / "ct_w4a16_group")["quantization_config"]
    assert config["ignore"] == ["lm_head"]

"""check on Hugging Face files: every sample passes every default rule (no false alarm), and
each rule has a file made to break it (issue 11, "check")."""

from __future__ import annotations

import json
import shutil

import libref
import numpy as np
import pytest
import stwrite as W

from qinspect.loaders.hf import container

SAMPLES = libref.SAMPLES
ALL = [p.name for p in sorted(SAMPLES.iterdir()) if (p / "config.json").exists()]


def _statuses(result) -> dict[str, str]:
    """Worst status of each rule over its checks (failed > warning > passed)."""
    rank = {"failed": 3, "warning": 2, "passed": 1, "skipped": 0}
    out: dict[str, str] = {}
    for c in json.loads(result.out)["checks"]:
        if rank.get(c["status"], 0) >= rank.get(out.get(c["rule"], "skipped"), 0):
            out[c["rule"]] = c["status"]
    return out


def _failed(result) -> set[str]:
    return {rule for rule, status in _statuses(result).items() if status == "failed"}


@pytest.mark.parametrize("name", ALL)
def test_every_sample_passes_the_default_rules(cli, name):
    result = cli("check", SAMPLES / name, "--format", "json")
    assert result.code == 0, (result.out[-2000:], result.err)


def mutate(tmp_path, name: str, changes: dict, config=None, drop=(), add=None):
    """Copy a sample, rewriting tensors: ``changes`` maps a key to a new numpy array of the
    same dtype (raw storage values), ``drop`` removes keys, ``add`` adds
    ``{key: (dtype, shape, bytes)}``; ``config(dict)`` edits config.json in place."""
    src = SAMPLES / name
    dst = tmp_path / name
    shutil.copytree(src, dst)
    ts = container.open_set(src)
    for shard in ts.shards:
        tensors = {}
        for key, info in shard.tensors.items():
            if key in drop:
                continue
            raw = np.asarray(ts.raw(key))
            if key in changes:
                raw = np.asarray(changes[key], dtype=raw.dtype)
            tensors[key] = (info.dtype, list(raw.shape) if info.dtype != "F4" else
                            list(info.shape), raw.tobytes())
        if add and shard is ts.shards[0]:
            tensors.update(add)
        W.write(dst / shard.path.name, tensors)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst, ts


Q = "model.layers.0.self_attn.q_proj"
K = "model.layers.0.self_attn.k_proj"


def test_nan_scales_fail_QI010(cli, tmp_path):
    ts = container.open_set(SAMPLES / "ct_w4a16_group")
    s = np.array(ts.raw(f"{Q}.weight_scale"))
    s[0, :2] = 0x7FC0  # bf16 NaN: what never-calibrated modules export (CT #832)
    path, _ = mutate(tmp_path, "ct_w4a16_group", {f"{Q}.weight_scale": s})
    assert "QI010" in _failed(cli("check", path, "--format", "json"))


def test_zero_global_scale_fails_QI011(cli, tmp_path):
    path, _ = mutate(tmp_path, "ct_nvfp4", {f"{Q}.weight_global_scale": np.zeros(1, np.float32)})
    assert "QI011" in _failed(cli("check", path, "--format", "json"))


def test_targeted_module_stored_in_float_fails_QI012(cli, tmp_path):
    base = container.open_set(SAMPLES / "llama_bf16")
    w = base.tensors[f"{Q}.weight"]
    drop = [k for k in container.open_set(SAMPLES / "ct_w4a16_group").tensors
            if k.startswith(Q + ".")]
    path, _ = mutate(tmp_path, "ct_w4a16_group", {}, drop=drop,
                     add={f"{Q}.weight": (w.dtype, list(w.shape),
                                          np.asarray(base.raw(f"{Q}.weight")).tobytes())})
    result = cli("check", path, "--format", "json")
    assert "QI012" in _failed(result)


def test_ignored_module_stored_quantized_fails_QI012(cli, tmp_path):
    def ignore_q(cfg):
        cfg["quantization_config"]["ignore"].append("re:.*q_proj$")

    path, _ = mutate(tmp_path, "ct_w4a16_group", {}, config=ignore_q)
    assert "QI012" in _failed(cli("check", path, "--format", "json"))


def test_scale_shape_that_does_not_match_the_group_size_fails_QI013(cli, tmp_path):
    ts = container.open_set(SAMPLES / "ct_w4a16_group")
    s = np.array(ts.raw(f"{Q}.weight_scale"))[:, : ts.tensors[f"{Q}.weight_scale"].shape[1] // 2]
    path, _ = mutate(tmp_path, "ct_w4a16_group", {f"{Q}.weight_scale": s})
    result = cli("check", path, "--format", "json")
    assert "QI013" in _failed(result)
    assert cli("show", path).code == 0  # show still reads the rest of the file


def test_gptq_v1_zero_overflow_fails_QI014(cli, tmp_path):
    ts = container.open_set(SAMPLES / "gptq_v1_asym")
    z = np.array(ts.raw(f"{Q}.qzeros")).view(np.uint32)
    # AutoGPTQ pack with a zero point of 0: stored -1 ORed in at field 3 of word [0, 0]
    z[0, 0] |= np.uint32(0xFFFFFFFF << 12 & 0xFFFFFFFF)
    path, _ = mutate(tmp_path, "gptq_v1_asym", {f"{Q}.qzeros": z.view(np.int32)})
    assert "QI014" in _failed(cli("check", path, "--format", "json"))


def test_g_idx_out_of_range_fails_QI015(cli, tmp_path):
    ts = container.open_set(SAMPLES / "gptq_desc_act")
    g = np.array(ts.raw(f"{Q}.g_idx"))
    g[5] = 999
    path, _ = mutate(tmp_path, "gptq_desc_act", {f"{Q}.g_idx": g})
    assert "QI015" in _failed(cli("check", path, "--format", "json"))


def test_g_idx_not_monotonic_without_act_order_fails_QI015(cli, tmp_path):
    ts = container.open_set(SAMPLES / "gptq_v1_sym")
    g = np.array(ts.raw(f"{Q}.g_idx"))
    g[[0, -1]] = g[[-1, 0]]
    path, _ = mutate(tmp_path, "gptq_v1_sym", {f"{Q}.g_idx": g})
    assert "QI015" in _failed(cli("check", path, "--format", "json"))


def test_uncalibrated_input_scale_fails_QI016(cli, tmp_path):
    ts = container.open_set(SAMPLES / "ct_fp8_tensor")
    key = f"{Q}.input_scale"
    one = np.array(ts.raw(key))
    one[...] = {"BF16": 0x3F80, "F32": 1.0, "F16": 0x3C00}[ts.tensors[key].dtype]
    path, _ = mutate(tmp_path, "ct_fp8_tensor", {key: one})
    assert "QI016" in _failed(cli("check", path, "--format", "json"))


def test_qkv_input_scales_that_differ_warn_QI017(cli, tmp_path):
    ts = container.open_set(SAMPLES / "ct_fp8_tensor")
    key = f"{K}.input_scale"
    good = cli("check", SAMPLES / "ct_fp8_tensor", "--format", "json")
    assert _statuses(good).get("QI017") == "passed"
    changed = np.array(ts.raw(key)) + 1  # one bf16/f32 ulp-ish nudge of the raw bits
    path, _ = mutate(tmp_path, "ct_fp8_tensor", {key: changed})
    result = cli("check", path, "--format", "json")
    assert _statuses(result).get("QI017") == "warning", _statuses(result)
    assert result.code == 0


def test_bnb_weight_format_other_than_row_fails_QI018(cli, tmp_path):
    key = f"{Q}.weight_format"
    path, _ = mutate(tmp_path, "bnb_int8", {key: np.array(1, np.uint8)})
    assert "QI018" in _failed(cli("check", path, "--format", "json"))

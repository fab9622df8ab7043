"""Configuration of `qinspect check`: search order, validation (a typo is exit 2 naming
the key), per-layer overrides by glob, command-line --set over the file."""

from __future__ import annotations

import json

import pytest
import torch_models as tm

from qinspect.errors import InputError
from qinspect.gate.config import (
    CheckConfig,
    load_config,
    parse,
    parse_assignment,
    with_assignments,
)


@pytest.fixture(scope="module")
def qnnpack_ckpt(tmp_path_factory):
    """Per-tensor weights: fails require_per_channel on fc1 and fc2."""
    sd = tm.mlp_qat("qnnpack")[2].state_dict()
    return tm.save(sd, tmp_path_factory.mktemp("cfg") / "mlp_qnnpack.pt")


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_line_error(result, *needles):
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qinspect: error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _failing(cli, path, *args) -> set[tuple[str, str]]:
    r = cli("check", path, "--format", "json", *args)
    assert r.code in (0, 1), r.err
    return {(f["rule"], f["layer"]) for f in json.loads(r.out)["findings"]
            if f["severity"] == "error"}


# --- misspelled keys --------------------------------------------------------------------


def test_misspelled_key_in_qinspect_toml_exits_2(cli, here, qnnpack_ckpt):
    (here / "qinspect.toml").write_text("[check]\nrequire_per_chanel = true\n")
    _one_line_error(cli("check", qnnpack_ckpt), "'require_per_chanel'",
                    "did you mean 'require_per_channel'", "qinspect.toml")


def test_misspelled_key_in_pyproject_exits_2(cli, here, qnnpack_ckpt):
    (here / "pyproject.toml").write_text("[tool.qinspect.check]\nmin_range_use = 0.5\n")
    _one_line_error(cli("check", qnnpack_ckpt), "'min_range_use'", "pyproject.toml",
                    "did you mean 'min_range_used'")


def test_misspelled_key_in_an_override_exits_2(cli, here, qnnpack_ckpt):
    (here / "qinspect.toml").write_text('[check.overrides."fc*"]\nrequire_per_channels = 1\n')
    _one_line_error(cli("check", qnnpack_ckpt), "'require_per_channels'", "overrides.'fc*'")


def test_misspelled_table_exits_2(cli, here, qnnpack_ckpt):
    (here / "qinspect.toml").write_text("[chek]\nrequire_per_channel = true\n")
    _one_line_error(cli("check", qnnpack_ckpt), "'chek'", "did you mean 'check'")
    (here / "qinspect.toml").write_text("require_per_channel = true\n")
    _one_line_error(cli("check", qnnpack_ckpt), "'require_per_channel'", "[check] table")
    (here / "qinspect.toml").unlink()
    (here / "pyproject.toml").write_text("[tool.qinspect.chek]\nrequire_per_channel = true\n")
    _one_line_error(cli("check", qnnpack_ckpt), "'chek'", "[tool.qinspect]")


def test_misspelled_set_option_exits_2(cli, here, qnnpack_ckpt):
    _one_line_error(cli("check", qnnpack_ckpt, "--set", "max_clipping=0.1"), "'max_clipping'",
                    "--set", "did you mean 'max_clipping_fraction'")
    _one_line_error(cli("check", qnnpack_ckpt, "--set", "novalue"), "KEY=VALUE")


@pytest.mark.parametrize(("line", "needle"), [
    ("require_per_channel = 1", "true or false"),
    ("min_range_used = 1.5", "between 0 and 1"),
    ("min_range_used = true", "must be a number"),
    ('weight_dtypes = ["qint9"]', "did you mean 'qint8'"),
    ('unrecognised_keys = "fatal"', '"error" or "warning"'),
    ('require_quantized = [1]', "list of strings"),
    ('overrides = 3', "table of tables"),
    ('[check.overrides."x"]\nignore = ["QI999"]', "unknown rule 'QI999'"),
    ("max_sqnr_drop_db = -1", ">= 0"),
])
def test_bad_values_exit_2(cli, here, qnnpack_ckpt, line, needle):
    body = line if line.startswith("[") else f"[check]\n{line}"
    (here / "qinspect.toml").write_text(body + "\n")
    _one_line_error(cli("check", qnnpack_ckpt), needle)


def test_invalid_toml_and_missing_config_exit_2(cli, here, qnnpack_ckpt):
    (here / "broken.toml").write_text("[check\n")
    _one_line_error(cli("check", qnnpack_ckpt, "--config", "broken.toml"), "not valid TOML")
    _one_line_error(cli("check", qnnpack_ckpt, "--config", "absent.toml"), "not found")
    (here / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    _one_line_error(cli("check", qnnpack_ckpt, "--config", "pyproject.toml"),
                    "no [tool.qinspect.check]")


# --- search order -----------------------------------------------------------------------


def test_search_order_and_source_shown(cli, here, qnnpack_ckpt):
    r = cli("check", qnnpack_ckpt)
    assert r.code == 0 and "built-in defaults (no qinspect.toml or pyproject.toml" in r.out

    (here / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    r = cli("check", qnnpack_ckpt)
    assert r.code == 0 and "pyproject.toml has no [tool.qinspect.check]" in r.out

    (here / "pyproject.toml").write_text("[tool.qinspect.check]\nrequire_per_channel = true\n")
    r = cli("check", qnnpack_ckpt)
    assert r.code == 1 and "pyproject.toml [tool.qinspect.check]" in r.out

    (here / "qinspect.toml").write_text("[check]\n")  # wins over pyproject.toml
    r = cli("check", qnnpack_ckpt)
    assert r.code == 0 and "qinspect.toml [check]" in r.out

    (here / "strict.toml").write_text("[check]\nrequire_per_channel = true\n")
    r = cli("check", qnnpack_ckpt, "--config", "strict.toml")  # --config wins over both
    assert r.code == 1 and "strict.toml [check]" in r.out


def test_command_line_overrides_the_file(cli, here, qnnpack_ckpt):
    (here / "qinspect.toml").write_text("[check]\nrequire_per_channel = true\n")
    assert _failing(cli, qnnpack_ckpt) == {("QI101", "fc1"), ("QI101", "fc2")}
    r = cli("check", qnnpack_ckpt, "--set", "require_per_channel=false")
    assert r.code == 0 and "+ command-line --set" in r.out


def test_overrides_by_glob(cli, here, qnnpack_ckpt):
    (here / "qinspect.toml").write_text(
        "[check]\nrequire_per_channel = true\n"
        '[check.overrides."fc*"]\nrequire_per_channel = false\n'
        '[check.overrides."fc2"]\nrequire_per_channel = true\n')
    assert _failing(cli, qnnpack_ckpt) == {("QI101", "fc2")}  # later override wins


def test_pyproject_overrides(cli, here, qnnpack_ckpt):
    (here / "pyproject.toml").write_text(
        "[tool.qinspect.check]\nrequire_per_channel = true\n"
        '[tool.qinspect.check.overrides."fc1"]\nignore = ["QI101"]\n')
    assert _failing(cli, qnnpack_ckpt) == {("QI101", "fc2")}


# --- the data model ---------------------------------------------------------------------


def test_for_layer_merges_in_order_and_accumulates_ignore():
    cfg = parse({"min_range_used": 0.5, "overrides": {
        "a.*": {"min_range_used": 0.2, "ignore": ["QI001"]},
        "a.b": {"ignore": ["calibrated"]},
    }})
    assert cfg.for_layer("x").min_range_used == 0.5
    a_b = cfg.for_layer("a.b")
    assert a_b.min_range_used == 0.2 and a_b.ignore == ("QI001", "calibrated")
    assert cfg.for_layer("a.c").ignore == ("QI001",)


def test_must_be_quantized():
    assert CheckConfig().must_be_quantized("fc") is None
    cfg = parse({"allow_float": ["head"]})
    assert cfg.must_be_quantized("fc") is True and cfg.must_be_quantized("head") is False
    cfg = parse({"require_quantized": ["features.*"]})
    assert cfg.must_be_quantized("features.0") is True and cfg.must_be_quantized("fc") is False


def test_assignments_parse_toml_or_bare_words():
    assert parse_assignment("min_range_used=0.5") == ("min_range_used", 0.5)
    assert parse_assignment("unrecognised_keys=error") == ("unrecognised_keys", "error")
    assert parse_assignment('weight_dtypes=["qint8", "quint8"]') == (
        "weight_dtypes", ["qint8", "quint8"])
    cfg = with_assignments(CheckConfig(), ["weight_dtypes=torch.qint8"])
    assert cfg.defaults.weight_dtypes == ("qint8",)
    with pytest.raises(InputError, match="per-layer overrides live in the config file"):
        with_assignments(CheckConfig(), ["overrides=1"])


def test_load_config_reads_explicit_pyproject(tmp_path):
    p = tmp_path / "custom.toml"
    p.write_text("[tool.qinspect.check]\nmin_range_used = 0.25\n")
    cfg = load_config(p, cwd=tmp_path)
    assert cfg.defaults.min_range_used == 0.25 and "[tool.qinspect.check]" in cfg.source


def test_readme_config_example_is_valid(tmp_path):
    """The configuration block of the check reference (docs/check.md) loads, every key
    known."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "check.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", page, re.S)
    (tmp_path / "pyproject.toml").write_text(block)
    cfg = load_config(tmp_path / "pyproject.toml")
    assert cfg.defaults.require_per_channel is True
    assert cfg.for_layer("deconv1").require_per_channel is False
    assert cfg.for_layer("deconv1").ignore == ("QI105",)

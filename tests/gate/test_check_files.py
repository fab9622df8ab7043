"""`qinspect check A.pt B.pt DIR/`: one summary line per file, the worst exit code,
``--jobs``, and every output format covering every file."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import torch
import torch_models as tm
from referencing import Registry, Resource

from qinspect.gate.files import find_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SCHEMAS = resources.files("qinspect").joinpath("schemas")
CHECK = json.loads(SCHEMAS.joinpath("check-1.json").read_text())
FILES = json.loads(SCHEMAS.joinpath("check-files-1.json").read_text())
REGISTRY = Registry().with_resource("qinspect.check/1", Resource.from_contents(CHECK))
SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


def validate(doc: dict) -> None:
    jsonschema.Draft202012Validator(FILES, registry=REGISTRY).validate(doc)


@pytest.fixture(autouse=True)
def _no_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three checkpoints (one broken) beside files that are not checkpoints."""
    root = tmp_path_factory.mktemp("exports")
    sd = tm.mlp_qat("fbgemm")[2].state_dict()
    tm.save(sd, root / "a_good.pt")
    broken = dict(sd)
    del broken["fc2.zero_point"]
    (root / "sub").mkdir()
    tm.save(broken, root / "sub" / "b_broken.pt")
    shutil.copy(SAMPLES / "pt2e_mlp_x86.pt2", root / "c_pt2e.pt2")
    shutil.copy(SAMPLES / "sample.npy", root / "input.npy")  # not a checkpoint
    (root / "README.md").write_text("# exports\n")
    (root / ".cache").mkdir()
    tm.save(broken, root / ".cache" / "hidden.pt")  # hidden folders are not searched
    return root


NAMES = ["a_good.pt", "c_pt2e.pt2", "sub/b_broken.pt"]


def _rel(folder: Path, path: str) -> str:
    return Path(path).relative_to(folder).as_posix()


def test_folder_is_searched_for_checkpoints_only(folder):
    found = [p.relative_to(folder).as_posix() for p in find_checkpoints([folder])]
    assert sorted(found) == sorted(NAMES)


def test_one_summary_line_per_file_and_the_worst_exit_code(cli, folder):
    r = cli("check", folder)
    assert r.code == 1, r.err
    lines = [line for line in r.out.splitlines() if line.startswith(("PASSED ", "FAILED "))]
    assert len(lines) == 3
    assert lines[0].startswith("PASSED") and "a_good.pt" in lines[0]
    assert any(line.startswith("FAILED") and "b_broken.pt" in line for line in lines)
    assert "fc2.zero_point missing" in r.out
    assert "3 files: 2 passed, 1 failed, 0 not readable" in r.out
    good = cli("check", folder / "a_good.pt", folder / "c_pt2e.pt2")
    assert good.code == 0 and "2 files: 2 passed" in good.out


def test_an_unreadable_file_is_exit_2_and_does_not_hide_the_others(cli, folder):
    r = cli("check", folder / "a_good.pt", folder / "input.npy", "--format", "json")
    assert r.code == 2
    doc = json.loads(r.out)
    validate(doc)
    assert [f["exit_code"] for f in doc["files"]] == [0, 2]
    assert doc["files"][1]["report"] is None and "NumPy" in doc["files"][1]["error"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_json_covers_every_file(cli, folder, jobs):
    r = cli("check", folder, "--format", "json", "--jobs", jobs)
    assert r.code == 1
    doc = json.loads(r.out)
    validate(doc)
    assert doc["schema"] == "qinspect.check-files/1" and doc["exit_code"] == 1
    assert [_rel(folder, f["file"]) for f in doc["files"]] == NAMES
    by_name = {_rel(folder, f["file"]): f for f in doc["files"]}
    assert by_name["sub/b_broken.pt"]["report"]["findings"][0]["rule"] == "QI005"
    assert by_name["a_good.pt"]["report"]["passed"] is True


def test_jobs_give_the_same_report(cli, folder):
    one = json.loads(cli("check", folder, "--format", "json").out)
    two = json.loads(cli("check", folder, "--format", "json", "-j", "3").out)
    assert one == two


def test_junit_has_one_suite_per_file(cli, folder):
    r = cli("check", folder, "--format", "junit")
    assert r.code == 1
    root = ET.fromstring(r.out)
    suites = root.findall("testsuite")
    assert [s.get("name").rsplit("/", 1)[-1] for s in suites] == [
        "a_good.pt", "c_pt2e.pt2", "b_broken.pt"]
    assert int(root.get("failures")) == 1
    assert sum(int(s.get("tests")) for s in suites) == int(root.get("tests"))
    failing = [s for s in suites if s.find("testcase/failure") is not None]
    assert len(failing) == 1 and failing[0].get("name").endswith("b_broken.pt")


def test_github_lines_cover_every_file(cli, folder):
    r = cli("check", folder, "--format", "github")
    assert r.code == 1
    notices = [line for line in r.out.splitlines() if line.startswith("::notice ")]
    errors = [line for line in r.out.splitlines() if line.startswith("::error ")]
    assert len(notices) == 2 and len(errors) == 1 and "b_broken.pt" in errors[0]


def test_markdown_job_summary(cli, folder, tmp_path):
    out = tmp_path / "summary.md"
    r = cli("check", folder, "--format", "markdown", "--output", out)
    assert r.code == 1
    md = out.read_text()
    assert md.startswith("## qinspect check: FAILED (1 of 3 files)")
    rows = [line for line in md.splitlines() if line.startswith(("| PASSED", "| FAILED"))]
    assert len(rows) == 3
    assert "QI005 loadable" in md and r"fc2\.zero\_point" in md


def test_markdown_escapes_names_from_the_file(cli, tmp_path):
    sd = dict(tm.mlp_qat("fbgemm")[2].state_dict())
    sd["<img src=x>|*a*"] = torch.zeros(2)
    path = tm.save(sd, tmp_path / "m.pt")
    md = cli("check", path, "--format", "markdown").out
    assert "<img" not in md and "&lt;img src=x&gt;\\|\\*a\\*" in md


def test_single_file_markdown(cli):
    r = cli("check", SAMPLES / "mlp_int8_fbgemm.pt", "--format", "markdown")
    assert r.code == 0 and r.out.startswith("## qinspect check: PASSED")


def test_empty_folder_and_bad_jobs_are_usage_errors(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("check", tmp_path / "empty")
    assert r.code == 2 and "no checkpoint file" in r.err
    r = cli("check", SAMPLES / "mlp_int8_fbgemm.pt", SAMPLES, "--jobs", "0")
    assert r.code == 2


def test_a_hugging_face_model_folder_is_one_checkpoint(cli):
    hf = SAMPLES / "hf"
    found = find_checkpoints([hf])
    assert found and all(p.is_dir() and p.parent == hf for p in found)
    assert len(found) == len([d for d in hf.iterdir() if (d / "config.json").is_file()])
    one = next(p for p in found if p.name == "ct_w4a16_sharded")
    r = cli("check", one, "--format", "json")  # a model folder alone: a single report
    assert r.code == 0 and json.loads(r.out)["schema"] == "qinspect.check/1"

"""Bad inputs: one clear line on stderr, exit 2, no traceback, no code executed."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
import torch_models as tm


class _RunsCode:
    """Unpickling this would create a marker file (via os.system)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("qinspect: error: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.out == ""


def test_missing_file(cli, tmp_path):
    _assert_one_line_error(cli("show", tmp_path / "nope.pt"), "no such file")


def test_directory(cli, tmp_path):
    _assert_one_line_error(cli("show", tmp_path), "is a directory")


def test_empty_file(cli, tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    _assert_one_line_error(cli("show", p), "empty")


def test_random_bytes(cli, tmp_path):
    p = tmp_path / "random.pt"
    p.write_bytes(bytes(range(256)) * 8)
    _assert_one_line_error(cli("show", p), "not a PyTorch checkpoint")


def test_text_file(cli, tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("hello, this is not a model\n")
    _assert_one_line_error(cli("show", p), "text file")


def test_truncated_zip(cli, tmp_path):
    _, _, q = tm.mlp_qat()
    full = tm.save(q.state_dict(), tmp_path / "full.pt")
    data = open(full, "rb").read()
    p = tmp_path / "truncated.pt"
    p.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(cli("show", p), "truncated or corrupt")


def test_zip_without_torch_data(cli, tmp_path):
    p = tmp_path / "other.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hi")
    _assert_one_line_error(cli("show", p), "without data.pkl")


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(cli, tmp_path, zipped):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    if zipped:
        torch.save({"fc.weight": torch.zeros(2), "x": _RunsCode(str(marker))}, p)
    else:  # a legacy (non-zip) pickle file
        p.write_bytes(pickle.dumps({"x": _RunsCode(str(marker))}, protocol=2))
    result = cli("show", p)
    _assert_one_line_error(result, "refused", "posix.system")
    assert not marker.exists(), "the pickle's code ran"


def test_whole_module_pickle_is_refused(cli, tmp_path):
    _, _, q = tm.mlp_qat()
    p = tmp_path / "module.pt"
    torch.save(q, p)
    _assert_one_line_error(cli("show", p), "refused")


def test_not_a_dict(cli, tmp_path):
    p = tm.save(torch.zeros(3), tmp_path / "tensor.pt")
    _assert_one_line_error(cli("show", p), "not a state_dict")


def test_debug_shows_traceback(tmp_path, monkeypatch):
    from qinspect.cli import main
    from qinspect.errors import LoadError

    monkeypatch.setenv("QINSPECT_DEBUG", "1")
    with pytest.raises(LoadError):
        main(["show", str(tmp_path / "missing.pt")])


def test_input_is_not_modified_and_nothing_written_beside_it(cli, tmp_path):
    _, _, q = tm.mlp_qat()
    p = tm.save(q.state_dict(), tmp_path / "m.pt")
    before = open(p, "rb").read()
    assert cli("show", p, "--explain").code == 0
    assert cli("show", p, "--json").code == 0
    assert open(p, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]

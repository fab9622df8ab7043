"""Damaged or hostile files in the new formats: one-line errors (exit 2), no code runs."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dst


def _one_line_error(result, *needles):
    assert result.code == 2, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    for needle in needles:
        assert needle in lines[0], lines[0]


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torchscript_data_pkl_with_code_never_runs(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": _RunsCode(str(marker))}, protocol=2)
    path = _rewrite(SAMPLES / "eager_mlp_int8_ts.pt", tmp_path / "ts.pt",
                    lambda n, d: evil if n.endswith("/data.pkl") else d)
    _one_line_error(cli("show", path), "not a module")
    assert not marker.exists()


def test_torchao_file_with_code_never_runs(cli, tmp_path):
    import torch

    marker = tmp_path / "pwned"
    sd = torch.load(SAMPLES / "format_net_fp32.pt", weights_only=True)
    sd["fc1.weight"] = _RunsCode(str(marker))
    # name a torchao class so the sniffer routes it to the torchao reader
    sd["fc2.weight"] = __import__("torchao.quantization", fromlist=["Int8Tensor"]).Int8Tensor
    path = tmp_path / "ao.pt"
    torch.save(sd, path)
    result = cli("show", path)
    assert result.code in (0, 2), result.err
    assert "internal error" not in result.err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["eager_mlp_int8_ts.pt", "pt2e_mlp_xnnpack.pt2",
                                  "torchao_int8wo.pt", "fx_mlp_int8_graphmodule.pt"])
def test_truncated_archives(cli, tmp_path, name):
    data = (SAMPLES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    result = cli("show", path)
    assert result.code == 2 and "internal error" not in result.err, result.err


@pytest.mark.parametrize("edit, needle", [
    (lambda n, d: b"{not json" if n.endswith("models/model.json") else d, "not valid JSON"),
    (lambda n, d: None if "weights/weight_" in n else d, "no record"),
    (lambda n, d: d[:3] if n.endswith("weights/weight_2") else d, "re-export"),
    (lambda n, d: json.dumps({"graph_module": {"graph": {"nodes": 7}}}).encode()
     if n.endswith("models/model.json") else d, "malformed"),
])
def test_damaged_pt2(cli, tmp_path, edit, needle):
    path = _rewrite(SAMPLES / "pt2e_mlp_xnnpack.pt2", tmp_path / "m.pt2", edit)
    _one_line_error(cli("show", path), needle)


def test_names_from_the_file_are_escaped(cli, tmp_path):
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("\x1b[31mred", b"x")
    result = cli("show", path)
    assert result.code == 2 and "\x1b" not in result.err


def test_the_pickle_walker_imports_nothing_the_file_names():
    import sys

    from qinspect.loaders.safe_pickle import Stub, load_pickle

    assert "antigravity" not in sys.modules
    data = b"\x80\x02cantigravity\nfly\nq\x00)R."
    value = load_pickle(data, None, "test")
    assert isinstance(value, Stub) and value.qualname == "antigravity.fly"
    assert "antigravity" not in sys.modules


# --- the one pickle reader: bounded memory, no calls (issue 18) ------------------------


def _refused(data: bytes, *needles: str, strict: bool = False) -> str:
    from qinspect.errors import LoadError
    from qinspect.loaders.safe_pickle import load_pickle

    with pytest.raises(LoadError) as info:
        load_pickle(data, None, "test", strict=strict)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    return text


def test_a_memo_index_beyond_the_pickle_is_refused_without_allocating():
    import struct
    import tracemalloc

    tracemalloc.start()
    _refused(b"\x80\x02]r" + struct.pack("<I", 2**30) + b".", "memo entry 1073741824")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, peak  # C unpicklers allocate 2x the index (16 GiB here)


def test_memo_indices_within_the_pickle_are_read():
    import pickle

    from qinspect.loaders.safe_pickle import load_pickle

    value = {"a": [1, 2], "b": "x" * 10}
    value["c"] = value["a"]
    out = load_pickle(pickle.dumps(value, protocol=2), None, "test")
    assert out == value and out["c"] is out["a"]


def test_setitem_on_a_list_and_build_on_a_list_are_corrupt():
    _refused(b"\x80\x02]K\x01K\x02s.", "SETITEM on a list")
    _refused(b"\x80\x02]}b.", "BUILD on a list")


def test_nesting_is_bounded():
    _refused(b"\x80\x02" + b"]" * 2000 + b"a" * 1999 + b".", "nests containers")


def test_objects_are_charged_to_a_budget_of_the_pickles_length():
    from qinspect.loaders import safe_pickle

    count = 3_000_000  # 3 MB of EMPTY_LIST makes ~250 MB of lists in a C unpickler
    _refused(b"\x80\x02(" + b"]" * count + b"l.", "builds more objects")
    assert safe_pickle.BUDGET_FACTOR * (count + 5) + safe_pickle.BUDGET_SLACK < \
        count * safe_pickle.COST_CONTAINER


def test_strict_mode_refuses_any_global_outside_the_allow_list():
    from qinspect.errors import UnsafeCheckpointError
    from qinspect.loaders.safe_pickle import load_pickle

    with pytest.raises(UnsafeCheckpointError, match="would call os.system"):
        load_pickle(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85R.", None,
                    "test", strict=True)

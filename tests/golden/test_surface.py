"""What a new user sees before any checkpoint: usage lines, ``dir(qinspect)``."""

from __future__ import annotations

import pytest

import qinspect


@pytest.mark.parametrize(("command", "usage"), [
    ("show", "Usage: qinspect show [OPTIONS] CKPT"),
    ("diff", "Usage: qinspect diff [OPTIONS] A B"),
    ("check", "Usage: qinspect check [OPTIONS] CKPT_OR_DIR..."),
    ("verify", "Usage: qinspect verify [OPTIONS] CKPT"),
])
def test_usage_line_names_the_arguments(cli, command, usage):
    res = cli(command, "--help")
    assert res.code == 0
    assert res.out.splitlines()[0] == usage


def test_dir_lists_the_public_api_only():
    assert dir(qinspect) == sorted(qinspect.__all__)
    for name in qinspect.__all__:
        assert hasattr(qinspect, name), name
    assert {"load", "summarise", "diff", "verify", "check", "QInspectError"} <= set(dir(qinspect))
    assert not {"os", "Any", "TYPE_CHECKING", "annotations"} & set(dir(qinspect))

"""Golden output: every command's human output on the samples at 80 and 160 columns.

Regenerate after an intended change of output (then review the diff like code)::

    QINSPECT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/golden

The files live in ``tests/golden/expected/<case>.<width>.txt``; the first line is the
command and its exit code. Cases and normalisation: ``tests/golden/golden_cases.py``.
"""

from __future__ import annotations

import difflib
import os

import pytest
from golden_cases import CASES, UPDATE_ENV, WIDTHS, expected_path, normalise, run


def _document(case, width) -> str:
    code, out = run(case, width)
    return f"$ qinspect {' '.join(case.argv)}  # exit {code}\n" + normalise(out)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_output(case, width):
    got = _document(case, width)
    path = expected_path(case, width)
    if os.environ.get(UPDATE_ENV):
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
        return
    assert path.exists(), f"no golden file {path.name}: run with {UPDATE_ENV}=1 to write it"
    want = path.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            "expected", "got"))
        pytest.fail(f"{case.id} at {width} columns differs from {path.name} "
                    f"({UPDATE_ENV}=1 rewrites it if the change is intended):\n{diff}")


def test_every_line_fits_its_width():
    for case in CASES:
        for width in WIDTHS:
            _, out = run(case, width)
            long = [line for line in out.splitlines() if len(line.rstrip()) > width]
            assert not long, (case.id, width, long[:3])


def test_no_golden_file_is_stale():
    """Every expected file belongs to a case (a renamed case leaves no orphan behind)."""
    wanted = {expected_path(c, w).name for c in CASES for w in WIDTHS}
    present = {p.name for p in expected_path(CASES[0], 80).parent.glob("*.txt")}
    assert present <= wanted, sorted(present - wanted)

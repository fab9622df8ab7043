"""At 80 columns no table cell splits a number across lines, and no sign is doubled.

The scan covers every command on every sample (``show``, ``show --explain``, ``verify``,
``check``), the golden cases (``diff`` pairs, ``check`` and ``verify`` with inputs), and
every line of their output, tables and prose alike. A number split by wrapping
(``0.000279..0`` / ``.000281``) shows up as other digit runs than the same output laid
out wide enough never to wrap: the test compares the multiset of numbers (with their
signs, decimal points and exponents) of the 80-column output with that of a 1000-column
layout of the same run. Names from files keep their digits too (``layers.10`` must not
become ``layers.1`` / ``0``).
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from golden_cases import rendered, scan_cases

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?\.?")
# "q - -128", "x + -3", "x - (-3)", "(q - 0)": signs as no person writes them
DOUBLE_SIGN = re.compile(r"(?<![-\w>])[-+] ?\(?[-+]\d|\([a-z] [-+] 0\)")
WIDE = 1000
SCAN = scan_cases()


def _numbers(text: str) -> Counter[str]:
    return Counter(m.group().rstrip(".") for m in NUMBER.finditer(text))


def test_the_scan_covers_every_command_on_every_sample():
    """show, show --explain, verify and check on every sample, and every golden diff."""
    from golden_cases import HF_SAMPLES, SHOW_SAMPLES, S

    argvs = {c.argv for c in SCAN}
    for path in [f"{S}/{n}" for n in SHOW_SAMPLES] + [f"{S}/hf/{n}" for n in HF_SAMPLES]:
        for argv in (("show", path), ("show", path, "--explain"), ("verify", path),
                     ("check", path)):
            assert argv in argvs, argv
    assert sum(c.argv[0] == "diff" for c in SCAN) >= 10


@pytest.mark.parametrize("case", SCAN, ids=lambda c: c.id)
def test_no_number_is_split_at_80_columns(case):
    narrow, wide = rendered(case, 80), rendered(case, WIDE)
    assert all(len(line.rstrip()) <= 80 for line in narrow.splitlines())
    got, want = _numbers(narrow), _numbers(wide)
    assert got == want, (f"numbers split or lost at 80 columns: only at 80 {got - want}, "
                         f"only at {WIDE} {want - got}")
    bad = [line for width in (80, WIDE) for line in rendered(case, width).splitlines()
           if DOUBLE_SIGN.search(line)]
    assert not bad, bad


@pytest.mark.parametrize("case", [c for c in SCAN if c.argv[0] in ("show", "diff", "verify")],
                         ids=lambda c: c.id)
def test_tables_fit_120_columns_whole(case):
    """120 columns: every line fits, every number whole; the tables take their natural
    width when it fits (no padding to the terminal's width)."""
    mid, wide = rendered(case, 120), rendered(case, WIDE)
    assert all(len(line.rstrip()) <= 120 for line in mid.splitlines())
    assert _numbers(mid) == _numbers(wide)
    rules = [len(line) for line in wide.splitlines() if set(line) == {"─"}]
    if rules and rules[0] <= 120:  # a render/table.py table: its header rule, as wide
        assert [len(line) for line in mid.splitlines() if set(line) == {"─"}][:1] == rules[:1]


@pytest.mark.parametrize(("text", "doubled"), [
    ("an output byte q means (q - -128) x 0.005", True),
    ("x - (-3)", True),
    ("x + -3", True),
    ("(q - 0) x 0.1", True),
    ("an output byte q means (q + 128) x 0.005", False),
    ("scale 0.1 -> -0.2", False),
    ("[-1.151, 11.61]", False),
    ("zp -128..-120", False),
    ("--set min_range_used=-1", False),
])
def test_double_sign_pattern(text, doubled):
    assert bool(DOUBLE_SIGN.search(text)) is doubled


def test_split_number_is_detected():
    assert _numbers("scale 0.000279..0\n.000281") != _numbers("scale 0.000279..0.000281")
    assert _numbers("layers.1\n0") != _numbers("layers.10")
    assert _numbers("scale 0.000279\n..0.000281") == _numbers("scale 0.000279..0.000281")


@pytest.mark.parametrize("case", [c for c in SCAN if c.id in (
    "show-convnet_int8.pt", "diff-mlp_fp32.pt-mlp_int8_fbgemm.pt")], ids=lambda c: c.id)
@pytest.mark.parametrize("width", [80, 160])
def test_laid_out_again_is_what_the_command_prints(case, width):
    """The scan lays a command's output out again at each width: that is what the
    command itself prints with COLUMNS at that width."""
    from golden_cases import run

    assert rendered(case, width) == run(case, width)[1]

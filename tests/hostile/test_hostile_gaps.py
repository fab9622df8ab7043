"""Known gaps (conftest.GAPS) are judged once the session is over, in any test order."""

from __future__ import annotations

import runner
from conftest import Gap, closed_gaps, excuse


def _gaps() -> tuple[Gap, ...]:
    return (Gap("qinspect/a.py", "a", r"exit 3", "structure", command="show"),
            Gap("qinspect/b.py", "b", r"traceback", "fuzz"),
            Gap("qinspect/c.py", "c", r"hung", "io"))


def test_a_gap_that_did_not_show_up_in_its_suite_is_closed(monkeypatch):
    gaps = _gaps()
    monkeypatch.setattr("conftest.GAPS", gaps)
    tally = runner.Tally()
    hits: dict[int, int] = {}
    real = excuse("case", ["show", "F"], ["exit 3 (allowed 0, 2)", "other"], hits)
    assert real == ["other"] and hits == {0: 1}
    tally.gap_hits.update(hits)
    tally.by_kind = {"structure": {"f"}, "fuzz": {"g"}}  # the io suite did not run
    assert closed_gaps(gaps, tally) == [gaps[1]]
    tally.gap_hits[1] = 2
    assert closed_gaps(gaps, tally) == []

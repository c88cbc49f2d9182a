"""What a resumed run starts from: the spend so far, in all and per part (``tierwise.jobs.resume.prior_spend``)."""

import pytest

from tierwise.jobs.resume import ledger_record, prior_spend


def _summary(cost: float) -> dict:
    return {"cost": cost, "rows": 10}


def test_parts_to_redo_carry_what_earlier_attempts_spent():
    # Saved 5 s before a crash: parts 0 and 1 committed later (part 1 at 40 once done), part 2 was
    # in flight (25 spent on it, lost), part 3 holds old rows (12) being redone.
    saved = ledger_record(95.0, 1000.0, {0: 30.0, 1: 28.0, 2: 25.0, 3: 12.0})
    committed = {0: _summary(30.0), 1: _summary(40.0), 3: _summary(12.0)}
    spent, parts = prior_spend(saved, committed, done={0: committed[0], 1: committed[1]}, changed=False)
    assert parts == {0: 30.0, 1: 40.0, 2: 25.0, 3: 12.0}
    assert spent == pytest.approx(107.0)  # what was saved, and the kept parts' spend after the save


def test_spend_no_part_is_named_for_stays_in_the_total():
    saved = ledger_record(100.0, 1000.0, {0: 30.0})  # 70 of side work (rung calibration)
    spent, parts = prior_spend(saved, {0: _summary(30.0)}, done={0: _summary(30.0)}, changed=False)
    assert parts == {0: 30.0} and spent == pytest.approx(100.0)


def test_an_older_ledger_file_keeps_the_old_total():
    committed = {0: _summary(30.0), 1: _summary(20.0)}
    spent, parts = prior_spend({"spent": 80.0, "budget": 1000.0}, committed, done={0: committed[0]}, changed=False)
    assert spent == pytest.approx(80.0) and parts == {0: 30.0, 1: 20.0}
    spent, _ = prior_spend({"spent": 10.0}, committed, done=committed, changed=False)
    assert spent == pytest.approx(50.0)  # the rows' cost when the file lags behind them


def test_another_jobs_spend_counts_but_names_none_of_this_jobs_parts():
    saved = ledger_record(90.0, 1000.0, {0: 90.0})
    spent, parts = prior_spend(saved, {0: _summary(90.0)}, done={}, changed=True)
    assert spent == pytest.approx(90.0) and parts == {}

import pytest

from tierwise.pipelines.data import records


def _table(costs):
    recs = [records.empty_record(str(i), "ok") | {"cost": c} for i, c in enumerate(costs)]
    return records.to_table(recs)


def test_lost_cost_is_spread_over_the_part_and_included_in_cost():
    table = records.with_lost_cost(_table([3.0, 0.0, 5.0, 2.0]), 10.0)
    assert table.column("lost_cost").to_pylist() == [2.5] * 4
    assert table.column("cost").to_pylist() == [5.5, 2.5, 7.5, 4.5]
    assert sum(table.column("cost").to_pylist()) == pytest.approx(20.0)
    clean = records.with_lost_cost(_table([1.0, 2.0]), 0.0)
    assert clean.column("lost_cost").to_pylist() == [0.0, 0.0] and clean.column("cost").to_pylist() == [1.0, 2.0]


def test_lost_spend_is_the_ledger_spend_beyond_the_rows_own():
    assert records.lost_spend(130.0, 100.0) == 30.0
    assert records.lost_spend(0.1 + 0.2, 0.3) == 0.0  # float residue of two sums is no loss
    assert records.lost_spend(100.0, 100.0) == 0.0

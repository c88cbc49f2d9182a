import random

import pytest

from tierwise.pipelines.plan.budget import DENIED, GRANTED, WAIT, Ledger, cost_per_token


def test_reserve_settle_never_lets_spend_pass_budget():
    led = Ledger(budget=100)
    assert led.reserve(60) == GRANTED
    assert led.reserve(50) == WAIT          # fits once the first settles below 60
    led.settle(60, 30)
    assert led.reserve(50) == GRANTED
    assert led.reserve(30) == WAIT
    led.settle(50, 50)
    assert led.spent == 80 and led.reserved == 0 and led.in_flight == 0
    assert led.reserve(30) == DENIED        # cannot fit even with nothing in flight
    assert led.reserve(20) == GRANTED


def test_float_residue_never_leaves_a_phantom_reservation():
    # Regression: amounts summed and subtracted in another order left 1e-14 "reserved",
    # so a reservation waited forever for work that was no longer in flight.
    rng = random.Random(0)
    led = Ledger(budget=1e9)
    amounts = [rng.uniform(0.1, 1000) for _ in range(1000)]
    for a in amounts:
        led.reserve(a, "r")
    for a in reversed(amounts):
        led.settle(a, a / 3, "r")
    assert led.reserved == 0.0 and led.in_flight == 0
    led.budget = led.spent + 1
    assert led.reserve(5, "r") == DENIED


def test_actual_above_reservation_is_refused():
    led = Ledger(budget=10)
    led.reserve(5)
    with pytest.raises(ValueError):
        led.settle(5, 6)


def test_release_and_release_holder():
    led = Ledger(budget=10)
    led.reserve(4, "a")
    led.reserve(3, "a")
    led.reserve(2, "b")
    led.release(2, "b")
    assert led.release_holder("a") == pytest.approx(7)
    assert led.in_flight == 0 and led.reserve(10) == GRANTED and led.spent == 0


def test_zero_budget_denies_everything_but_free_work():
    led = Ledger(budget=0)
    assert led.reserve(1) == DENIED
    assert led.reserve(0) == GRANTED


def test_cost_units():
    assert cost_per_token("tokens") == 1
    assert cost_per_token("gpu_hours", tokens_per_gpu_hour=1e6) == pytest.approx(1e-6)
    assert cost_per_token("usd", tokens_per_gpu_hour=1e6, usd_per_gpu_hour=2.0) == pytest.approx(2e-6)
    with pytest.raises(ValueError):
        cost_per_token("gpu_hours")


def test_lease_roll_reports_spend_and_keeps_work_in_flight_covered():
    ledger = Ledger(budget=1000.0)
    lease = ledger.roll("r0", 0.0, 0.0, 0.0, 300.0)
    assert lease == 300.0 and ledger.reserved == 300.0 and ledger.in_flight == 1
    # 120 of the lease finished costing 50; 100 is still in flight; ask for 400 more.
    lease = ledger.roll("r0", lease, 50.0, 100.0, 500.0, {"generation": 40.0, "judge": 10.0})
    assert ledger.spent == 50.0 and ledger.by_kind == {"generation": 40.0, "judge": 10.0}
    assert lease == 500.0 and ledger.reserved == 500.0
    # Another holder takes at most half of what no one holds.
    other = ledger.roll("r1", 0.0, 0.0, 0.0, 10_000.0)
    assert other == pytest.approx((1000.0 - 50.0 - 500.0) / 2)
    assert ledger.spent + ledger.reserved <= ledger.budget


def test_lease_roll_always_covers_work_in_flight_and_never_overspends():
    ledger = Ledger(budget=100.0)
    lease = ledger.roll("r0", 0.0, 0.0, 0.0, 100.0)
    assert lease == 50.0  # half of what no one holds
    ledger.roll("r1", 0.0, 0.0, 0.0, 1000.0)  # takes half of the rest
    # r0 spent 30 of its lease and has 20 in flight: the new lease covers the 20 even
    # when nothing else is left, and no more than half of what is free.
    lease = ledger.roll("r0", lease, 30.0, 20.0, 1000.0)
    assert lease >= 20.0 and ledger.spent + ledger.reserved <= ledger.budget + 1e-9
    with pytest.raises(ValueError):
        ledger.roll("r0", lease, 30.0, lease, 0.0)  # spend plus work in flight beyond the lease
    # Returning the lease: nothing held, nothing in flight.
    assert ledger.roll("r0", lease, 5.0, 0.0, 0.0) == 0.0
    assert "r0" not in ledger.held and ledger.spent == 35.0


def test_spend_is_kept_per_part_through_settlements_and_lease_rolls():
    led = Ledger(budget=1000, spent=7.0, by_part={("out", 0): 7.0})
    led.reserve(50, "r")
    led.settle(50, 20, "r", part=("out", 0))
    led.reserve(5, "r")
    led.settle(5, 3, "r")  # naming no part: in the total only
    lease = led.roll("r", 0.0, 0.0, 0.0, 200.0)
    led.roll("r", lease, 60.0, 0.0, 0.0, {"generation": 50.0, "judge": 10.0},
             {("out", 1): 45.0, ("side", 1): 15.0})
    assert led.spent == 90.0 and led.reserved == 0
    assert led.part_spend("out") == {0: 27.0, 1: 45.0} and led.part_spend("side") == {1: 15.0}

import random

import pytest

from pipelines.budget import DENIED, GRANTED, WAIT, Ledger, cost_per_token


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

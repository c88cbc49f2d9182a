"""Prices per weighted token: converted from tokens, or metered replica time (pure, time passed in)."""

import pytest

from tierwise.pipelines.plan.pricing import MIN_MEASURED_TOKENS, DeviceMeter, Pricer, PriceSpec, price_spec


def test_the_meter_counts_wall_time_with_any_request_in_flight_once_times_devices():
    m = DeviceMeter(devices=2)
    m.begin(now=10.0)
    m.begin(now=11.0)           # overlapping requests: the devices are held once
    m.end(100, now=12.0)
    assert m.device_seconds(now=12.5) == pytest.approx(2 * 2.5)  # still held by the second
    m.end(50, now=13.0)
    m.begin(now=20.0)           # idle 13..20 is not counted
    m.end(10, now=21.0)
    assert m.device_seconds(now=99.0) == pytest.approx(2 * 4.0) and m.tokens == 160
    with pytest.raises(ValueError):
        m.end(1, now=22.0)


def test_prices_start_from_the_conversion_and_follow_the_measured_rate():
    spec = price_spec("gpu_hours", 1 / 36_000, metering="measured", num_gpus=0)  # 10 tokens/s configured
    assert spec.measured and spec.devices == 1 and spec.per_device_s == pytest.approx(1 / 3600)
    p = Pricer(spec, DeviceMeter(spec.devices))
    assert p.per_token() == pytest.approx(1 / 36_000)  # nothing measured yet
    p.meter.begin(now=0.0)
    p.meter.end(MIN_MEASURED_TOKENS, now=MIN_MEASURED_TOKENS / 100)  # measured: 100 tokens per second
    rate = p.meter.seconds_per_token(now=1e9)
    assert rate == pytest.approx(0.01)
    assert p.per_token() == pytest.approx(0.01 / 3600)
    worst = p.reserve(10, 90)
    assert worst == pytest.approx(100 * 0.01 / 3600 * spec.headroom)
    assert p.settle(10, 20, worst) == pytest.approx(30 * 0.01 / 3600)


def test_a_settlement_never_passes_its_reservation_and_the_excess_is_counted():
    spec = PriceSpec(per_token=1.0, measured=True, per_device_s=1.0)
    p = Pricer(spec)
    assert p.settle(0, 10, reserved=4.0) == 4.0
    assert p.meter.unattributed_s == pytest.approx(6.0)


def test_prompt_tokens_carry_their_weight_in_token_budgets():
    spec = price_spec("tokens", 1.0, prompt_weight=0.25)
    p = Pricer(spec)
    assert not spec.measured
    assert p.reserve(100, 50) == 75.0 and p.settle(100, 20, 75.0) == 45.0


def test_usd_is_priced_from_the_measured_hours():
    spec = price_spec("usd", 1.0, metering="measured", usd_per_gpu_hour=7.2, num_gpus=4)
    assert spec.devices == 4 and spec.per_device_s == pytest.approx(7.2 / 3600)

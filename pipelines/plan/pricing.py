"""What a row's tokens cost in the budget's unit: converted from tokens, or metered replica time.

Pure and synchronous (time is passed in or read from ``time.monotonic``); a replica keeps one
``DeviceMeter`` per job and prices its rows through a ``Pricer``.

- ``metering: tokens``: a weighted token (``prompt_token_weight`` x prompt + generated) costs
  ``PriceSpec.per_token`` (1 for a token budget; ``1 / tokens_per_gpu_hour`` GPU-hours, times
  ``usd_per_gpu_hour`` for dollars). Reservations are exact worst cases.
- ``metering: measured`` (``gpu_hours`` / ``usd``): the replica meters the seconds it holds its
  devices generating for the job (wall time with at least one of the job's requests in its
  engine, times its device count) and its weighted tokens done; a weighted token costs the
  measured device-seconds per token so far (the configured conversion until enough is measured),
  so rows together pay what the replica was busy. A round reserves its worst-case tokens at
  ``headroom`` times the current price; should the price rise past that before it settles, the
  row pays its reservation (the ledger's cap holds) and the difference is counted as
  ``unattributed_s`` in the meter's report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Measured prices replace the configured conversion once this much is measured.
MIN_MEASURED_TOKENS = 1000.0
MIN_MEASURED_S = 0.5


@dataclass(frozen=True)
class PriceSpec:
    """How a job prices tokens (from its ``budget``); cheap to pickle, sent with each part.

    Attributes:
        per_token: budget unit per weighted token (the configured conversion).
        prompt_weight: a prompt token's weight beside a generated one's (1).
        measured: price from metered replica time instead (``metering: measured``).
        per_device_s: budget unit per device-second (1/3600 for GPU-hours).
        devices: devices each replica holds (its ``num_gpus``; 1 for a CPU replica).
        headroom: a measured reservation's margin over the current price.
    """

    per_token: float = 1.0
    prompt_weight: float = 1.0
    measured: bool = False
    per_device_s: float = 0.0
    devices: float = 1.0
    headroom: float = 1.5

    def weighted(self, prompt_tokens: float, output_tokens: float) -> float:
        return self.prompt_weight * prompt_tokens + output_tokens


def price_spec(unit: str, per_token: float, prompt_weight: float = 1.0, metering: str = "tokens",
               usd_per_gpu_hour: float | None = None, num_gpus: float = 0) -> PriceSpec:
    """The ``PriceSpec`` of a budget (``per_token``: ``tierwise.pipelines.plan.budget.cost_per_token``)."""
    if metering != "measured":
        return PriceSpec(per_token, prompt_weight)
    per_hour = 1.0 if unit == "gpu_hours" else float(usd_per_gpu_hour or 0.0)
    return PriceSpec(per_token, prompt_weight, True, per_hour / 3600.0, num_gpus if num_gpus > 0 else 1.0)


class DeviceMeter:
    """The seconds one replica holds its devices generating for one job, and the weighted tokens done."""

    def __init__(self, devices: float = 1.0):
        self.devices = devices
        self.active = 0
        self.busy_s = 0.0
        self.since: float | None = None
        self.tokens = 0.0
        self.unattributed_s = 0.0

    def begin(self, now: float | None = None) -> None:
        if self.active == 0:
            self.since = time.monotonic() if now is None else now
        self.active += 1

    def end(self, weighted_tokens: float, now: float | None = None) -> None:
        if self.active <= 0:
            raise ValueError("DeviceMeter.end without begin")
        self.active -= 1
        self.tokens += weighted_tokens
        if self.active == 0:
            self.busy_s += (time.monotonic() if now is None else now) - self.since
            self.since = None

    def device_seconds(self, now: float | None = None) -> float:
        open_s = ((time.monotonic() if now is None else now) - self.since) if self.since is not None else 0.0
        return (self.busy_s + open_s) * self.devices

    def seconds_per_token(self, now: float | None = None) -> float | None:
        """Device-seconds per weighted token so far; None until enough is measured."""
        s = self.device_seconds(now)
        if self.tokens < MIN_MEASURED_TOKENS or s < MIN_MEASURED_S * self.devices:
            return None
        return s / self.tokens

    def snapshot(self) -> dict:
        return {"device_seconds": self.device_seconds(), "weighted_tokens": self.tokens, "devices": self.devices,
                "seconds_per_token": self.seconds_per_token(), "unattributed_s": self.unattributed_s}


class Pricer:
    """Prices one replica's rounds of a job: ``reserve`` before a round, ``settle`` after."""

    def __init__(self, spec: PriceSpec, meter: DeviceMeter | None = None):
        self.spec, self.meter = spec, meter if meter is not None else DeviceMeter(spec.devices)

    def per_token(self) -> float:
        """The current price of a weighted token."""
        if self.spec.measured and (spt := self.meter.seconds_per_token()) is not None:
            return spt * self.spec.per_device_s
        return self.spec.per_token

    def reserve(self, prompt_tokens: float, output_tokens: float) -> float:
        """A round's reservation for at most these tokens."""
        margin = self.spec.headroom if self.spec.measured else 1.0
        return self.spec.weighted(prompt_tokens, output_tokens) * self.per_token() * margin

    def settle(self, prompt_tokens: float, output_tokens: float, reserved: float) -> float:
        """A round's actual cost: its weighted tokens at the current price, at most ``reserved``."""
        actual = self.spec.weighted(prompt_tokens, output_tokens) * self.per_token()
        if actual > reserved:
            if self.spec.per_device_s:
                self.meter.unattributed_s += (actual - reserved) / self.spec.per_device_s
            actual = reserved
        return actual

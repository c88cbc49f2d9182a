"""The budget ledger's arithmetic: reserve before spending, settle after.

Pure and synchronous; ``ray_cluster.ledger`` hosts one instance in a Ray actor so
that every replica draws on the same budget. The invariant is
``spent + reserved <= budget`` at all times, so ``spent`` can never pass it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GRANTED, WAIT, DENIED = "granted", "wait", "denied"


@dataclass
class Ledger:
    """A hard budget in one unit (tokens, GPU-hours or dollars).

    Attributes:
        budget: the total that may be spent, in the budget's unit.
        spent: settled spend (actual cost of finished work).
        reserved: worst-case cost of work in flight.
    """

    budget: float
    spent: float = 0.0
    reserved: float = 0.0
    n_reservations: int = 0
    n_denied: int = 0
    by_kind: dict[str, float] = field(default_factory=dict)

    def reserve(self, amount: float) -> str:
        """Tries to reserve ``amount``.

        Returns:
            ``"granted"`` (now reserved), ``"wait"`` (it would fit once work in
            flight settles below its reservation: ask again later) or ``"denied"``
            (it cannot fit even if all work in flight cost nothing).
        """
        if amount < 0:
            raise ValueError(f"reservation must be >= 0, got {amount}")
        if self.spent + self.reserved + amount <= self.budget:
            self.reserved += amount
            self.n_reservations += 1
            return GRANTED
        if self.spent + amount <= self.budget and self.reserved > 0:
            return WAIT
        self.n_denied += 1
        return DENIED

    def settle(self, reserved: float, actual: float, kind: str = "generation") -> None:
        """Replaces a reservation by the actual cost (which must not exceed it)."""
        if actual > reserved + 1e-9:
            raise ValueError(f"actual cost {actual} exceeds its reservation {reserved}")
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + actual

    def release(self, reserved: float) -> None:
        """Returns a reservation whose work was never run."""
        self.reserved = max(0.0, self.reserved - reserved)

    @property
    def remaining(self) -> float:
        return self.budget - self.spent

    def snapshot(self) -> dict:
        return asdict(self) | {"remaining": self.remaining}


def cost_per_token(unit: str, tokens_per_gpu_hour: float | None = None,
                   usd_per_gpu_hour: float | None = None) -> float:
    """The price of one processed token (prompt or generated) in the budget's unit.

    GPU-hours and dollars are converted through a throughput figure
    (tokens per GPU-hour), which keeps reservations exact worst cases.
    """
    if unit == "tokens":
        return 1.0
    if not tokens_per_gpu_hour:
        raise ValueError(f"budget unit {unit!r} needs tokens_per_gpu_hour")
    per_gpu_hour = 1.0 / tokens_per_gpu_hour
    if unit == "gpu_hours":
        return per_gpu_hour
    if unit == "usd":
        if usd_per_gpu_hour is None:
            raise ValueError("budget unit 'usd' needs usd_per_gpu_hour")
        return per_gpu_hour * usd_per_gpu_hour
    raise ValueError(f"unknown budget unit {unit!r}")

"""The budget ledger's arithmetic: reserve before spending, settle after.

Pure and synchronous; ``tierwise.ray_cluster.ledger`` hosts one instance in a Ray actor so
that every replica draws on the same budget. The invariant is
``spent + reserved <= budget`` at all times, so ``spent`` can never pass it.

Spend is also kept per part (``by_part``, keyed by ``(output location, part id)``): a
part's attempts that were lost (a replica killed mid-part, a driver crash) spent tokens
no committed row carries, and the attempt that commits the part carries them
(``tierwise.pipelines.data.records.with_lost_cost``), so the output's costs add up to ``spent``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PartKey = tuple[str, int]  # (output location, part id)

GRANTED, WAIT, DENIED = "granted", "wait", "denied"


@dataclass
class Ledger:
    """A hard budget in one unit (tokens, GPU-hours or dollars).

    Reservations are tracked per holder (a replica), by count as well as amount,
    so that "nothing in flight" is exact whatever float residue the amounts carry,
    and a lost holder's reservations can be released at once.

    Attributes:
        budget: the total that may be spent, in the budget's unit.
        spent: settled spend (actual cost of finished work).
        by_part: settled spend per part (of the settlements that name one), over all its attempts.
    """

    budget: float
    spent: float = 0.0
    held: dict[str, list] = field(default_factory=dict)  # holder -> [count, amount]
    n_reservations: int = 0
    n_denied: int = 0
    by_kind: dict[str, float] = field(default_factory=dict)
    by_part: dict[PartKey, float] = field(default_factory=dict)

    @property
    def reserved(self) -> float:
        return sum(amount for _, amount in self.held.values())

    @property
    def in_flight(self) -> int:
        return sum(count for count, _ in self.held.values())

    def reserve(self, amount: float, holder: str = "") -> str:
        """Tries to reserve ``amount`` for ``holder``.

        Returns:
            ``"granted"`` (now reserved), ``"wait"`` (it would fit once work in
            flight settles below its reservation: ask again later) or ``"denied"``
            (it cannot fit even if all work in flight cost nothing).
        """
        if amount < 0:
            raise ValueError(f"reservation must be >= 0, got {amount}")
        if self.spent + self.reserved + amount <= self.budget:
            entry = self.held.setdefault(holder, [0, 0.0])
            entry[0] += 1
            entry[1] += amount
            self.n_reservations += 1
            return GRANTED
        if self.spent + amount <= self.budget and self.in_flight > 0:
            return WAIT
        self.n_denied += 1
        return DENIED

    def _drop(self, holder: str, amount: float) -> None:
        entry = self.held.get(holder)
        if entry is None or entry[0] == 0:
            raise ValueError(f"holder {holder!r} has no reservation to settle or release")
        entry[0] -= 1
        entry[1] = entry[1] - amount if entry[0] else 0.0
        if entry[0] == 0:
            del self.held[holder]

    def settle(self, reserved: float, actual: float, holder: str = "", kind: str = "generation",
               part: PartKey | None = None) -> None:
        """Replaces a reservation by the actual cost (which must not exceed it), spent on
        ``part`` when given."""
        if actual > reserved * (1 + 1e-9) + 1e-12:
            raise ValueError(f"actual cost {actual} exceeds its reservation {reserved}")
        self._drop(holder, reserved)
        self.spent += actual
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + actual
        if part is not None:
            self._add_parts({part: actual})

    def _add_parts(self, by_part: dict[PartKey, float]) -> None:
        for part, amount in by_part.items():
            self.by_part[part] = self.by_part.get(part, 0.0) + amount

    def part_spend(self, output: str) -> dict[int, float]:
        """What each part of ``output`` has spent so far, over all its attempts."""
        return {pid: amount for (out, pid), amount in self.by_part.items() if out == output}

    def release(self, reserved: float, holder: str = "") -> None:
        """Returns a reservation whose work was never run."""
        self._drop(holder, reserved)

    def roll(self, holder: str, lease: float, actual: float, must: float, want: float,
             by_kind: dict[str, float] | None = None, by_part: dict[PartKey, float] | None = None) -> float:
        """Renews ``holder``'s lease: a block of budget a replica reserves once and carves
        its rows' reservations from, so that rows need no call to the ledger each.

        Settles the current ``lease`` (0: none yet) with ``actual``, the cost of the work
        carved from it that finished (split by kind in ``by_kind``, by part in ``by_part``), then holds a new
        lease of at least ``must``, the worst cases of work still in flight (carved from
        the old lease, so it always fits), and up to ``want``, taking at most half of the
        budget no one holds, so that other replicas find some near the end. Returns the
        new lease (0: none). ``spent + reserved <= budget`` holds throughout.
        """
        if min(lease, actual, must, want) < 0:
            raise ValueError("lease amounts must be >= 0")
        if actual + must > lease * (1 + 1e-9) + 1e-12:
            raise ValueError(f"actual cost {actual} plus work in flight {must} exceed the lease {lease}")
        if lease:
            self._drop(holder, lease)
            self.spent += actual
            for kind, amount in (by_kind or {"generation": actual}).items():
                self.by_kind[kind] = self.by_kind.get(kind, 0.0) + amount
            self._add_parts(by_part or {})
        free = max(0.0, self.budget - self.spent - self.reserved - must)
        new = must + min(max(0.0, want - must), free / 2)
        if new > 0:
            entry = self.held.setdefault(holder, [0, 0.0])
            entry[0] += 1
            entry[1] += new
            self.n_reservations += 1
        return new

    def release_holder(self, holder: str) -> float:
        """Releases everything ``holder`` still holds (a lost replica); returns it."""
        _, amount = self.held.pop(holder, (0, 0.0))
        return amount

    @property
    def remaining(self) -> float:
        return self.budget - self.spent

    def snapshot(self) -> dict:
        return {"budget": self.budget, "spent": self.spent, "reserved": self.reserved,
                "in_flight": self.in_flight, "remaining": self.remaining, "n_reservations": self.n_reservations,
                "n_denied": self.n_denied, "by_kind": dict(self.by_kind)}


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

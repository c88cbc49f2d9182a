"""The progress display: the job's phase (starting replicas, calibrating, running, writing), rows
done, spend against the budget, generated tokens/s and the time left (tqdm's, from the row rate)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from tqdm import tqdm


class Progress:
    def __init__(self, rows: int, budget: float, unit: str, done: Iterable[dict] = (), enabled: bool = True):
        self.t0 = time.monotonic()
        self.tokens = 0
        self.budget, self.unit = budget, unit
        already = sum(s.get("rows", 0) for s in done)
        self.bar = tqdm(total=rows, initial=already, unit="row", disable=not enabled, dynamic_ncols=True,
                        desc="tierwise")
        self.name = ""
        self._spent = 0.0

    def phase(self, name: str) -> None:
        """Names what the job is doing now (shown before the bar)."""
        if name != self.name:
            self.name = name
            self.bar.set_description_str(f"tierwise {name}", refresh=True)

    def part_done(self, summary: dict) -> None:
        self.tokens += summary.get("output_tokens", 0)
        self.bar.update(summary.get("rows", 0))
        self._refresh()

    def spent(self, amount: float) -> None:
        self._spent = amount
        self._refresh()

    def _refresh(self) -> None:
        rate = self.tokens / max(1e-9, time.monotonic() - self.t0)
        self.bar.set_postfix_str(f"spent {self._spent:,.4g}/{self.budget:,.4g} {self.unit}, {rate:,.0f} gen tok/s",
                                 refresh=True)

    def close(self) -> None:
        self.bar.close()

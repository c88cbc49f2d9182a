"""Driver of a uniform policy: every part gets the policy's one tier. The same interface as the
adaptive drivers (``tierwise.jobs.adaptive_driver``, ``tierwise.jobs.sequential_driver``):
``first_round()`` for the budget floor, ``run(session)`` returning the parts left unsent, ``report``."""

from __future__ import annotations

from tierwise.jobs import skipping
from tierwise.jobs.row_programs import policy_tier
from tierwise.jobs.spec import JobSpec
from tierwise.pipelines.data import io


class UniformDriver:
    def __init__(self, spec: JobSpec, parts: list[io.Part], done: dict[int, dict]):
        self.tier = policy_tier(spec.policy, spec.sampling)
        self.todo = [p for p in parts if p.part_id not in done]
        self.report: dict = {}

    def first_round(self) -> list[tuple[int, int]]:
        """``(n, max_tokens)`` of each request of every row's first round."""
        return skipping.first_round(self.tier)

    def run(self, session) -> int:
        return session.run_parts(self.todo, lambda _part: self.tier)

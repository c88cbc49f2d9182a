"""Driver side of the adaptive ladder's extra rungs (``policy.ladder``: think, search).

After the calibration slice has run, each extra rung runs its own row program on a sub-slice of the
calibration rows (``policy.rung_calibration_rows``, taken from every calibration part in proportion) through
the same pool and budget ledger as every other request, so its spend is the run's spend. Its output rows go
to ``_tierwise/rungs/<rung>/`` beside the output (never among the job's rows, which are written once each);
committed rung parts are read back on resume instead of being run again. ``tierwise.pipelines.plan.rungs.rung_measures``
turns them into per-row cost and score for the planner.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import polars as pl

from tierwise.jobs.row_programs import rung_tiers
from tierwise.jobs.spec import JobSpec
from tierwise.pipelines.data import io

log = logging.getLogger(__name__)

RUNG_DIR = "_tierwise/rungs"


def rung_parts(cal_parts: list[io.Part], rows: int) -> list[io.Part]:
    """About ``rows`` rows from the head of every calibration part, in proportion to its length (part ids
    renumbered from 0: they name files under the rung's own directory)."""
    total = sum(p.length for p in cal_parts)
    out, left = [], min(rows, total)
    for p in cal_parts:
        take = min(p.length, left, math.ceil(rows * p.length / total)) if total else 0
        if take > 0:
            out.append(io.Part(len(out), p.file, p.start, take))
            left -= take
    return out


def rung_dir(spec: JobSpec, rung: str) -> str:
    return f"{spec.output.path.rstrip('/')}/{RUNG_DIR}/{rung}"


def calibrate_rungs(spec: JobSpec, session, cal_parts: list[io.Part], samples: pl.DataFrame,
                    cal_cap: float, cal_spent: float) -> tuple[pl.DataFrame | None, dict]:
    """Runs each extra rung on a sub-slice of the calibration rows and measures it.

    Args:
        session: The job's ``runner.Session`` (pool and ledger).
        cal_parts: The calibration parts that ran.
        samples: The calibration samples (their K-sample majority labels rungs when there is no gold and no
            verifier).
        cal_cap: Most the calibration (slice and rungs) may spend, in the budget's unit; a rung part is sent
            only while the calibration spend plus one rung part of average cost fits.
        cal_spent: What the slice spent.

    Returns:
        (``query_id, rung, cost, score`` with cost in tokens, or None without extra rungs; a JSON-ready
        summary per rung: rows measured, spent (budget unit), mean cost and score, label source).
    """
    from tierwise.pipelines.plan.rungs import majority_answers, rung_measures

    tiers = rung_tiers(spec)
    if not tiers:
        return None, {}
    pol, inp, so = spec.policy, spec.input, spec.output.storage_options
    parts = rung_parts(cal_parts, pol.rung_calibration_rows)
    gold = None
    if inp.gold_column:
        gold = io.read_parts(parts, [inp.id_column, inp.gold_column], inp.storage_options).select(
            pl.col(inp.id_column).cast(pl.String).alias("id"), pl.col(inp.gold_column).cast(pl.String).alias("gold"))
    majority = majority_answers(samples) if gold is None else None
    measures, summary, spent = [], {}, cal_spent
    for tier in tiers:
        out = rung_dir(spec, tier.name)
        done = io.with_retries(lambda out=out: io.committed_parts(out, so), f"list {out}")
        todo = [p for p in parts if p.part_id not in done]
        costs = [d["cost"] for d in done.values()]

        def full(costs=costs, spent=spent) -> bool:
            per_part = sum(costs) / len(costs) if costs else 0.0
            return spent + sum(costs) + per_part > cal_cap

        if todo and not full():
            job = replace(session.job, output_uri=out, keep_samples=False)
            session.run_side_parts(todo, lambda _part, tier=tier: tier, job, stop_when=full,
                                   on_part=lambda s, costs=costs: costs.append(s["cost"]))
        spent += sum(costs)
        output = io.read_output(out, so) if costs else pl.DataFrame()
        m, labels = rung_measures(output, tier.name, objective=pol.objective, unit="tokens", gold=gold,
                                  majority=majority, yield_cap=pol.yield_cap)
        measures.append(m)
        summary[tier.name] = {"rows": m.height, "spent": float(sum(costs)), "labels": labels,
                              "mean_cost_tokens": float(m["cost"].mean()) if m.height else None,
                              "mean_score": float(m["score"].mean()) if m.height else None}
        if not m.height:
            log.warning("rung %s was measured on no row (calibration budget share spent): the plan leaves it out",
                        tier.name)
        log.info("rung %s measured on %d rows: %.1f tokens/row, score %.3f", tier.name, m.height,
                 summary[tier.name]["mean_cost_tokens"] or 0.0, summary[tier.name]["mean_score"] or 0.0)
    return pl.concat(measures), summary

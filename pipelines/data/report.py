"""The run report: merges per-part summaries into ``run_report.json``."""

from __future__ import annotations

from collections import Counter


def build_report(spec, summaries: list[dict], ledger: dict, n_rows: int, n_parts: int,
                 resumed_parts: int, wall_s: float, generate_wall_s: float = 0.0,
                 attempt: list[dict] | None = None, prior_spent: float = 0.0) -> dict:
    """Totals over every committed part (resumed ones included), and ``this_attempt``: the
    work of this invocation alone (``attempt``: the parts it committed; None: all of them),
    which the throughput figures are of: a resumed run never reports the parts it found as
    work it did."""
    status: Counter[str] = Counter()
    for s in summaries:
        status.update(s.get("status", {}))
    tot = {k: sum(s.get(k, 0) for s in summaries)
           for k in ("rows", "prompt_tokens", "output_tokens", "cost", "lost_cost", "samples", "correct", "graded")}
    gen_seconds = sum(s.get("seconds", 0.0) for s in summaries)
    spent = max(float(ledger.get("spent", 0.0)), tot["cost"])
    report = {
        "job": spec.name,
        "rows": n_rows,
        "rows_written": tot["rows"],
        "parts": n_parts,
        "resumed_parts": resumed_parts,
        "status": dict(status),
        "budget": {"amount": spec.budget.amount, "unit": spec.budget.unit},
        "spent": spent,
        "spent_in_output": tot["cost"],
        # What lost attempts (a replica or a driver lost mid-part) spent, carried by the rows of
        # the parts they were redone as (``lost_cost``, in ``spent_in_output``).
        "lost_spent": tot["lost_cost"],
        "utilization": spent / spec.budget.amount if spec.budget.amount else None,
        "prompt_tokens": tot["prompt_tokens"],
        "output_tokens": tot["output_tokens"],
        "samples": tot["samples"],
        "wall_s": round(wall_s, 3),
        "output_tokens_per_s": None,  # this attempt's: see below
        # Time spent generating in this invocation (engines started, parts streaming).
        "generate_wall_s": round(generate_wall_s, 3),
        "part_seconds": round(gen_seconds, 3),
        "policy": spec.policy.model_dump(),
        "model": spec.model.path,
    }
    report["this_attempt"] = _this_attempt(summaries if attempt is None else attempt, spent - prior_spent, wall_s)
    report["output_tokens_per_s"] = report["this_attempt"]["output_tokens_per_s"]
    report |= _checker_issues(summaries)
    if tot["graded"]:
        report["accuracy"] = tot["correct"] / tot["graded"]
        report["graded_rows"] = tot["graded"]
    return report


def _this_attempt(attempt: list[dict], spent: float, wall_s: float) -> dict:
    """What this invocation did: its parts, rows, tokens, spend and generated tok/s."""
    new_tokens = sum(s.get("output_tokens", 0) for s in attempt)
    return {"parts": len(attempt), "rows": sum(s.get("rows", 0) for s in attempt),
            "output_tokens": new_tokens, "spent": max(0.0, spent), "wall_s": round(wall_s, 3),
            "output_tokens_per_s": new_tokens / wall_s if wall_s > 0 and new_tokens else None}


def _checker_issues(summaries: list[dict]) -> dict:
    """``judge``: an LLM judge's tokens (in ``spent``) and why samples lack a verdict;
    ``verifier_issues``: a pure verifier's calls that timed out or raised (their scores are null)."""
    out = {}
    judged = [s for s in summaries if "judge_tokens" in s]
    if judged:
        issues: Counter[str] = Counter()
        for s in judged:
            issues.update(s.get("judge_issues", {}))
        out["judge"] = {"tokens": sum(s["judge_tokens"] for s in judged), "issues": dict(issues)}
    verifier_issues: Counter[str] = Counter()
    for s in summaries:
        verifier_issues.update(s.get("verifier_issues", {}))
    if verifier_issues:
        out["verifier_issues"] = dict(verifier_issues)
    return out


def breakdown(output) -> list[dict]:
    """Spend and score per (tier, bucket) from the output rows (a polars frame)."""
    import polars as pl

    if output.is_empty():
        return []
    aggs = [pl.len().alias("rows"), pl.col("cost").sum().alias("cost"), pl.col("n_samples").sum().alias("samples"),
            pl.col("n_samples").mean().alias("mean_samples"), pl.col("n_samples").max().alias("max_samples")]
    if "correct" in output.columns and output["correct"].is_not_null().any():
        aggs.append(pl.col("correct").cast(pl.Float64).mean().alias("accuracy"))
    return (output.group_by("tier", "bucket").agg(aggs).sort("tier", "bucket", nulls_last=True).to_dicts())

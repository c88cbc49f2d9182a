"""``tierwise plan SPEC``: what a job will spend and buy, before the full run.

It reads the input's Parquet footers (rows, parts), runs the adaptive policy's calibration on the
same slice a run would calibrate on (``tierwise.jobs.adaptive_driver.AdaptiveDriver``: same parts, same
calibration tier, one part at a time), capped at ``--pilot-budget`` and ``--pilot-rows``, into a
scratch output; or, with ``policy.calibration_from``, reads last night's samples and spends nothing.
Then it asks the run's own planner (``AdaptiveDriver._plan``, i.e. ``plan_from_calibration`` with
the spec's settings) for the plan of the rows left at the budget left, and at a range of budgets.

Expected figures: spend = the pilot's spend + the rows left x the plan's cost per row (at most the
budget); accuracy = the pilot rows' measured accuracy and the plan's expected score per row, by
rows; wall time = the pilot's engine start + the tokens left at the pilot's generation rate.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass

from tierwise.jobs.spec import JobSpec, SpecError

log = logging.getLogger(__name__)

CURVE_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass
class Pilot:
    """What the calibration slice measured: its rows, spend (budget unit), graded and correct rows,
    engine start and generation seconds, generated tokens; ``samples`` in the replay schema."""

    rows: int
    spent: float
    graded: int
    correct: int
    start_s: float
    generate_s: float
    output_tokens: int
    samples: object


@dataclass
class _PlanLedger:
    """The budget ``AdaptiveDriver._plan`` reads (``session.save_ledger()``) and the calibration
    summaries it counts: the stand-in for a live session when planning ahead."""

    budget: float
    spent: float
    summaries: dict

    def save_ledger(self) -> dict:
        return {"budget": self.budget, "spent": self.spent}


def check_plannable(spec: JobSpec) -> None:
    if spec.policy.kind != "adaptive" or spec.policy.planner != "calibrated":
        raise SpecError("tierwise plan needs policy.kind adaptive with planner calibrated (its plan is "
                        f"learned from a calibration slice); this spec's policy is {spec.policy.kind!r}")


def run_pilot(spec: JobSpec, driver, pilot_rows: int | None, cap: float, scratch: str, address: str | None,
              show_progress: bool) -> tuple[Pilot, dict]:
    """Runs the calibration slice of ``driver`` (at most ``pilot_rows`` rows, ``cap`` spent) on the
    replicas, writing into ``scratch``; returns what it measured and its parts' summaries."""
    from tierwise.jobs.runner import Session

    pilot_spec = spec.model_copy(update={
        "output": spec.output.model_copy(update={"path": scratch}),
        "budget": spec.budget.model_copy(update={"amount": cap})})
    cal = [p for p in driver.parts if p.part_id in driver.cal_ids]
    limit = min(x for x in (pilot_rows, driver.pol.calibration_rows, sum(p.length for p in cal)) if x is not None)
    t0 = time.monotonic()
    session = Session(pilot_spec, limit, {}, 0.0, address, show_progress)
    with session:
        start_s = time.monotonic() - t0

        def full() -> bool:  # the run's own rule (AdaptiveDriver.run): the next part must fit the cap
            done = list(session.summaries.values())
            spent = sum(d["cost"] for d in done)
            return sum(d["rows"] for d in done) >= limit or spent + (spent / len(done) if done else 0) > cap

        session.run_parts(cal, tier=lambda _part: driver.calibration_tier, stop_when=full, max_inflight=1)
        summaries = dict(session.summaries)
        generate_s = session.generate_wall_s
    from tierwise.jobs.adaptive_driver import AdaptiveDriver

    ran = [p for p in cal if p.part_id in summaries]
    samples = AdaptiveDriver(pilot_spec, driver.parts, {})._calibration_samples(ran)
    driver.cal_ids = {p.part_id for p in ran}
    return Pilot(rows=sum(s["rows"] for s in summaries.values()), spent=sum(s["cost"] for s in summaries.values()),
                 graded=sum(s["graded"] for s in summaries.values()),
                 correct=sum(s["correct"] for s in summaries.values()), start_s=start_s, generate_s=generate_s,
                 output_tokens=sum(s["output_tokens"] for s in summaries.values()), samples=samples), summaries


def expect(driver, pilot: Pilot, summaries: dict, n_rows: int, budget: float) -> dict:
    """The run's expected spend, accuracy and wall time at ``budget`` (the planner's plan for the rows
    the pilot leaves, fitted to the budget it leaves)."""
    driver._samples = pilot.samples
    rows_left = n_rows - pilot.rows
    left = [p for p in driver.parts if p.part_id not in driver.cal_ids]
    plan = driver._plan(_PlanLedger(budget, pilot.spent, summaries), left)
    gated = plan.gate is not None
    per_row = max(0.0, min(plan.expected_cost_per_row, (budget - pilot.spent) / driver.cpt / max(1, rows_left)))
    spend = min(budget, pilot.spent + rows_left * per_row * driver.cpt)
    score = sum(b.share * b.expected_score for b in plan.buckets)
    pilot_acc = pilot.correct / pilot.graded if pilot.graded else score
    accuracy = (pilot.rows * pilot_acc + rows_left * score) / max(1, n_rows)
    rate = pilot.output_tokens / pilot.generate_s if pilot.generate_s > 0 else None
    tokens_left = rows_left * per_row  # prompt and output tokens alike: the pilot's rate per token spent
    spent_tokens = pilot.spent / driver.cpt
    wall = (pilot.start_s + pilot.generate_s * (spent_tokens + tokens_left) / spent_tokens
            if spent_tokens > 0 else None)
    return {"budget": budget, "expected_spend": spend, "expected_accuracy": accuracy,
            "expected_wall_s": wall, "generated_tok_per_s": rate, "cost_per_row_tokens": per_row,
            "buckets": [{"bucket": i, "tier": b.tier, "share": round(b.share, 4), "cap": b.rule.cap,
                         "expected_score": round(b.expected_score, 4)} for i, b in enumerate(plan.buckets)],
            "gated": gated}


def no_pilot(driver) -> tuple[Pilot, dict]:
    """``policy.calibration_from``: last night's samples, nothing spent (the run spends nothing on them)."""
    from tierwise.pipelines.replay.table import load_samples

    driver.cal_ids = set()
    return Pilot(0, 0.0, 0, 0, 0.0, 0.0, 0, load_samples(driver.pol.calibration_from)), {}


def plot_curve(curve: list[dict], budget: float, unit: str, path: str) -> None:
    """The expected accuracy over budgets (PNG), the spec's budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["budget"] for c in curve], [c["expected_accuracy"] for c in curve], marker="o")
    ax.axvline(budget, color="grey", linestyle="--", label="spec budget")
    ax.set_xlabel(f"budget ({unit})")
    ax.set_ylabel("expected accuracy")
    ax.set_title("tierwise plan: expected accuracy vs budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lines(spec: JobSpec, n_rows: int, pilot: Pilot, at: dict, curve: list[dict]) -> list[str]:
    """The plan's text: the pilot, the expectation at the spec's budget, then the curve."""
    unit = spec.budget.unit
    wall = f"{at['expected_wall_s']:.0f} s" if at["expected_wall_s"] is not None else "unknown (no pilot)"
    out = [f"tierwise plan: {n_rows} rows; pilot {pilot.rows} rows, spent {pilot.spent:,.6g} {unit}"
           + (f", accuracy {pilot.correct / pilot.graded:.3f}" if pilot.graded else ""),
           f"at budget {spec.budget.amount:,.6g} {unit}: expected spend {at['expected_spend']:,.6g} {unit} "
           f"({at['expected_spend'] / spec.budget.amount:.1%}), expected accuracy {at['expected_accuracy']:.3f}, "
           f"expected wall {wall}"]
    from tierwise.jobs.cli_common import tier_label

    out += [f"  bucket {b['bucket']}: {b['share']:.0%} of rows, {tier_label(b['tier'], b['cap'])}, "
            f"expected score {b['expected_score']:.3f}" for b in at["buckets"]]
    out.append(f"  {'budget':>14} {'spend':>14} {'accuracy':>9}")
    out += [f"  {c['budget']:>14,.6g} {c['expected_spend']:>14,.6g} {c['expected_accuracy']:>9.3f}" for c in curve]
    return out


def cmd_plan(args) -> int:
    import json

    from tierwise.jobs.adaptive_driver import AdaptiveDriver
    from tierwise.jobs.cli_common import load_job_spec, log_to_file
    from tierwise.pipelines.data import io

    spec = load_job_spec(args.spec, args.set)
    check_plannable(spec)
    files = io.list_input_files(spec.input.path, spec.input.storage_options)  # the footers: rows, parts
    parts = io.plan_parts(files, spec.output.part_rows)
    n_rows = sum(p.length for p in parts)
    scratch = args.scratch or tempfile.mkdtemp(prefix=f"tierwise-plan-{spec.name}-")
    log_to_file(spec.model_copy(update={"output": spec.output.model_copy(update={"path": scratch})}), args.verbose)
    driver = AdaptiveDriver(spec, parts, {})
    if spec.policy.calibration_from:
        pilot, summaries = no_pilot(driver)
    else:
        cap = args.pilot_budget or spec.policy.calibration_budget_share * spec.budget.amount
        pilot, summaries = run_pilot(spec, driver, args.pilot_rows, cap, scratch, args.address, not args.quiet)
    at = expect(driver, pilot, summaries, n_rows, spec.budget.amount)
    curve = [expect(driver, pilot, summaries, n_rows, f * spec.budget.amount) for f in CURVE_FACTORS]
    png = args.png or f"{spec.name}-plan.png"
    plot_curve(curve, spec.budget.amount, spec.budget.unit, png)
    for line in lines(spec, n_rows, pilot, at, curve):
        print(line)
    print(f"tierwise plan: curve written to {png}", file=sys.stderr)
    if args.json:
        print(json.dumps({"rows": n_rows, "pilot_rows": pilot.rows, "pilot_spent": pilot.spent, "at_budget": at,
                          "curve": curve}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="dry run: expected spend, accuracy and wall time of a spec, from a small "
                       "pilot (or policy.calibration_from's samples), and a curve over budgets")
    p.add_argument("spec")
    p.add_argument("--pilot-rows", type=int, help="most rows the pilot runs (default: the calibration slice "
                   "a run would take)")
    p.add_argument("--pilot-budget", type=float, help="most the pilot spends, in the budget's unit (default: "
                   "policy.calibration_budget_share of the budget)")
    p.add_argument("--png", help="the curve's PNG (default: <name>-plan.png here)")
    p.add_argument("--scratch", help="where the pilot writes its parts (default: a temporary folder)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.set_defaults(func=cmd_plan)

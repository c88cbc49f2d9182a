"""``tierwise replay SAMPLES --budget B``: what would budget B have bought on recorded samples?

Replays a samples table (see ``tierwise.pipelines.replay.run``) through the ``uniform`` or ``adaptive`` policy at a
budget, or at several budgets with ``--curve`` (both policies, plotted with ``--plot``). Progress goes
to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from tierwise.pipelines.plan.objectives import OBJECTIVES


def _budgets(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--curve expects numbers like 1e5,2e5; got {text!r}") from exc
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--curve expects non-negative budgets, got {text!r}")
    return values


def register(subparsers) -> None:
    """Add the ``replay`` subcommand to the ``tierwise`` parser."""
    p = subparsers.add_parser("replay", help="replay recorded samples under a policy and budget (no GPU)",
                              description=__doc__.splitlines()[0])
    p.add_argument("samples", help="samples Parquet file (local path or s3:// URI)")
    p.add_argument("--budget", type=float, help="total budget for the whole table, in --budget-unit")
    p.add_argument("--budget-unit", choices=["samples", "tokens"], default="samples")
    p.add_argument("--objective", choices=OBJECTIVES, default="accuracy",
                   help="verified_yield: verified samples per query up to --yield-cap (needs verifier_score)")
    p.add_argument("--yield-cap", type=int, default=4, metavar="C",
                   help="verified_yield: verified samples worth keeping per query (default 4)")
    p.add_argument("--verifier-pass", type=float, default=1.0, metavar="S",
                   help="verifier score at which a sample counts as verified (default 1.0: a checker's full pass)")
    p.add_argument("--policy", choices=["adaptive", "uniform"], default="adaptive")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="share of queries whose gold calibration may use; not scored (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the calibration split")
    p.add_argument("--plot", metavar="FILE.png",
                   help="with --curve: score vs budget per policy; else (adaptive): per-bucket curves")
    p.add_argument("--curve", type=_budgets, metavar="B1,B2,...", help="replay both policies at these budgets")
    p.add_argument("--calibration-out", metavar="FILE.json",
                   help="adaptive: write the difficulty model and per-bucket curves and choices (calibration.json)")
    p.set_defaults(func=main)


def _say(msg: str) -> None:
    print(f"tierwise replay: {msg}", file=sys.stderr, flush=True)


def _load(path: str):
    from tierwise.pipelines.replay.table import load_samples

    if "://" in path and not path.startswith("file://"):
        from tierwise.pipelines.data import io

        fs, p = io.filesystem(path)
        with fs.open(p, "rb") as fh:
            return load_samples(fh)
    return load_samples(path)


def _plot_curve(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for policy in dict.fromkeys(r.policy for r in results):
        rs = sorted((r for r in results if r.policy == policy), key=lambda r: r.budget)
        ax.plot([r.budget for r in rs], [r.score for r in rs], marker="o", label=policy)
    ax.set_xlabel(f"budget ({results[0].budget_unit})")
    ax.set_ylabel(f"{results[0].objective} on scored queries")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    """Run the replay; returns the exit status (2 for unusable input or arguments)."""
    from tierwise.pipelines.replay.run import POLICIES, replay, replay_curve

    if (error := _argument_error(args)) is None:
        table, error = _read_table(args)
    if error:
        _say(f"error: {error}")
        return 2
    common = dict(budget_unit=args.budget_unit, objective=args.objective,
                  calibration_fraction=args.calibration_fraction, seed=args.seed, yield_cap=args.yield_cap,
                  verifier_pass=args.verifier_pass)
    if args.curve:
        _print_curve(replay_curve(table, args.curve, policies=POLICIES, progress=_say, **common), args)
    else:
        _print_result(replay(table, args.budget, policy=args.policy, progress=_say, **common), args)
    return 0


def _argument_error(args) -> str | None:
    if args.budget is None and not args.curve:
        return "give --budget B or --curve B1,B2,..."
    if args.yield_cap < 1:
        return "--yield-cap must be >= 1"
    if not 0.0 <= args.calibration_fraction < 1.0:
        return "--calibration-fraction must be in [0, 1)"
    return None


def _read_table(args):
    """The samples as a ``ReplayTable``, or None and why it cannot be replayed."""
    from tierwise.pipelines.replay.table import build_table

    try:
        _say(f"reading {args.samples}")
        samples = _load(args.samples)
    except (FileNotFoundError, IsADirectoryError) as exc:
        return None, f"cannot read {args.samples}: {exc}"
    except ValueError as exc:  # SamplesSchemaError and unreadable Parquet
        return None, str(exc)
    _say(f"laying out {samples.height:,} samples")
    table = build_table(samples)
    del samples
    _say(f"{table.shape[0]:,} queries, up to {table.shape[1]} samples each")
    if args.objective == "verified_yield" and table.verifier_score is None:
        return None, "--objective verified_yield needs a verifier_score column in the samples"
    return table, None


def _print_curve(results, args) -> None:
    if args.plot:
        _plot_curve(results, args.plot)
        _say(f"wrote {args.plot}")
    for r in results:
        print(json.dumps(_row(r)))
    last = [r for r in results if r.policy == args.policy][-1]
    print(json.dumps({**_row(last), "curve": [_row(r) for r in results], "plot": args.plot}))


def _print_result(result, args) -> None:
    if args.plot:
        if result.calibration:
            from tierwise.pipelines.plan.calibration import plot_curves

            plot_curves(result.calibration, args.plot, x_label=f"extra {args.budget_unit} per query",
                        title=f"{args.objective} vs compute per difficulty bucket")
            _say(f"wrote {args.plot}")
        else:
            _say("no per-bucket curves to plot for this policy (use --curve to compare policies)")
    if args.calibration_out and result.calibration:
        with open(args.calibration_out, "w") as fh:
            json.dump({"objective": result.objective, "budget": result.budget, "budget_unit": result.budget_unit,
                       "difficulty_model": result.details.get("difficulty_model"),
                       "buckets": [b.to_dict() for b in result.calibration]}, fh, indent=1)
        _say(f"wrote {args.calibration_out}")
    _say(f"{result.policy}: {result.objective} {result.score:.4f} on {result.queries_scored:,} queries, "
         f"spent {result.spent:,.6g} of {result.budget:,.6g} {result.budget_unit}")
    print(json.dumps(result.to_dict()))


def _row(r) -> dict:
    keys = ("policy", "objective", "budget", "budget_unit", "spent", "queries", "queries_scored", "score",
            "mean_samples_per_query")
    return {k: getattr(r, k) for k in keys}

"""The ``tierwise`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from pipelines.errors import TierwiseError

# Exit codes (README, "Exit codes").
EXIT_OK, EXIT_JOB_ERROR, EXIT_STRICT, EXIT_EVERY_ROW_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


def _overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs as ``{dotted key: YAML value}``.

    Raises:
        SpecError: a pair without ``=`` or a key, or a value that is not YAML.
    """
    from jobs.spec import SpecError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set expects KEY=VALUE (e.g. budget.amount=1e6), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise SpecError(f"--set {pair!r}: the value is not valid YAML ({reason}); "
                            "quote a string value, e.g. --set 'name=\"[x\"'") from None
    return out


def cmd_run(args) -> int:
    from jobs.runner import run_job
    from jobs.spec import load_spec, resolve_output_path

    spec = resolve_output_path(load_spec(args.spec, _overrides(args.set)))
    log_to_file(spec, args.verbose)
    import ray

    owned = not ray.is_initialized()
    report = run_job(spec, address=args.address, show_progress=not args.quiet, strict=args.strict,
                     overwrite=args.overwrite)
    if owned:  # the workers' last lines (engine shutdown) come before the report, which ends stdout
        ray.shutdown()
    print(summary_line(report))
    for line in tier_lines(report):
        print(line)
    if not args.brief:
        print(json.dumps(report))
    from jobs.export_command import run_exports
    for line in run_exports(spec, report):
        print(line)
    return every_row_failed(report, spec)


def log_to_file(spec, verbose: bool) -> None:
    """Sends the job's vLLM and Ray lines to its log file (``jobs.console``), named on stderr."""
    from jobs import console

    path = console.log_path(spec.output.path, spec.name)
    console.setup(verbose, path)
    logging.getLogger("tierwise").info("logs (vLLM, Ray workers): %s", path)


def every_row_failed(report: dict, spec) -> int:
    """``EXIT_EVERY_ROW_FAILED`` (with the most common errors on stderr) when every row of the
    job ended ``error``: a job that produced nothing must not look like a success. Else 0."""
    from pipelines import io

    rows, errors = report["rows"], report["status"].get("error", 0)
    if not rows or errors < rows:
        return EXIT_OK
    out = io.read_output(report.get("output_path", spec.output.path), spec.output.storage_options, ["error"])
    common = out.group_by("error").len().sort("len", descending=True).head(3).rows() if out.height else []
    print(f"tierwise: error: every row ({errors} of {rows}) ended as an error; most common:", file=sys.stderr)
    for message, count in common:
        print(f"  {count} x {message}", file=sys.stderr)
    return EXIT_EVERY_ROW_FAILED


def summary_line(report: dict) -> str:
    b = report["budget"]
    parts = [f"rows {report['rows']}", "status " + ", ".join(f"{k}={v}" for k, v in sorted(report["status"].items())),
             f"spent {report['spent']:,.6g} of {b['amount']:,.6g} {b['unit']} ({(report['utilization'] or 0):.1%})"]
    if "accuracy" in report:
        parts.append(f"accuracy {report['accuracy']:.3f}")
    if report.get("output_tokens_per_s"):
        parts.append(f"{report['output_tokens_per_s']:,.0f} generated tok/s")
    parts.append(f"wall {report['wall_s']:.1f}s")
    if report.get("resumed_parts"):
        this = report.get("this_attempt", {})
        parts.append(f"resumed {report['resumed_parts']} of {report['parts']} parts (this run: {this.get('parts', 0)} "
                     f"parts, {this.get('spent', 0):,.6g} spent)")
    return "tierwise: " + " | ".join(parts)


def tier_lines(report: dict) -> list[str]:
    """One line per (tier, bucket): what its rows got, rows, mean samples, spend, accuracy."""
    lines = []
    for r in report.get("by_tier", []):
        name = tier_label(r["tier"], r.get("max_samples"))
        if r.get("bucket") is not None:
            name += f" b{r['bucket']}"
        acc = f", accuracy {r['accuracy']:.3f}" if r.get("accuracy") is not None else ""
        lines.append(f"  {name:<24} {r['rows']:>7} rows, {r['mean_samples']:.2f} samples/row, "
                     f"cost {r['cost']:,.6g}{acc}")
    return lines


def tier_label(tier: str | None, max_samples: int | None) -> str:
    """What a row of ``tier`` got: ``pilot only`` (the adaptive policy's ``skip``: no sample beyond
    its pilot), ``best_of_n up to 8`` (a voting tier and its rows' most samples), else the tier."""
    if tier == "skip":
        return "pilot only"
    if tier in ("best_of_n", "vote") and max_samples:
        return f"{tier} up to {max_samples}"
    return tier or "(none)"


def cmd_demo_data(args) -> int:
    from pipelines import io
    from pipelines.tasks.arithmetic import DEMO_MIX, generate_dataset

    df = generate_dataset(args.rows, DEMO_MIX, args.seed)
    fs, path = io.filesystem(args.out)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        df.write_parquet(fh, row_group_size=args.row_group_size)
    print(f"wrote {df.height} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_export_batch(args) -> int:
    from jobs.spec import load_spec, resolve_output_path
    from pipelines import io
    from pipelines.export import batch_lines

    spec = resolve_output_path(load_spec(args.spec, _overrides(args.set)))
    out = spec.output
    lines = batch_lines(io.read_output(out.path, out.storage_options,
                                       ["id", "status", "error", "answer", "prompt_tokens", "output_tokens"]))
    fs, path = io.filesystem(args.out, out.storage_options)
    with fs.open(path, "wb") as fh:
        lines.write_ndjson(fh)
    print(f"wrote {lines.height} lines to {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierwise", description="Spend a fixed inference budget wisely.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a job spec")
    run.add_argument("spec")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec field, e.g. --set budget.amount=1e5")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--brief", action="store_true", help="print the summary lines, not the JSON report "
                     "(run_report.json holds it)")
    run.add_argument("--strict", action="store_true", help="fail the job (exit 3) if any row ends as an error "
                     "(without it: exit 4 only when every row does)")
    run.add_argument("--overwrite", action="store_true",
                     help="move the output's old contents to <output>.archived-<UTC time> and start afresh")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo-data", help="write the demo arithmetic data set")
    demo.add_argument("out")
    demo.add_argument("--rows", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=1234)
    demo.add_argument("--row-group-size", type=int, default=10_000)
    demo.set_defaults(func=cmd_demo_data)

    export = sub.add_parser("export-batch", help="write a job's output as OpenAI-batch-style JSONL")
    export.add_argument("spec")
    export.add_argument("out", help="the JSONL file (local, or s3:// with the output's storage_options)")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    export.set_defaults(func=cmd_export_batch)

    from jobs import example_data, export_command, plan_command, replay_command, sample_command
    example_data.register(sub)
    plan_command.register(sub)
    export_command.register(sub)
    sample_command.register(sub)
    replay_command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs import console

    console.setup(args.verbose)
    try:
        return args.func(args)
    except TierwiseError as exc:
        print(f"tierwise: error: {exc}", file=sys.stderr)
        from jobs.runner import JobInterrupted, RowErrorsInStrictMode
        if isinstance(exc, JobInterrupted):
            return EXIT_INTERRUPTED
        return EXIT_STRICT if isinstance(exc, RowErrorsInStrictMode) else EXIT_JOB_ERROR
    except KeyboardInterrupt:  # a second signal while draining: stopped at once
        print("tierwise: error: interrupted; re-run the same spec to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The ``tierwise`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from tierwise.jobs.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_JOB_ERROR,
    EXIT_STRICT,
    every_row_failed,
    load_job_spec,
    log_to_file,
    summary_line,
    tier_lines,
)
from tierwise.pipelines.data.errors import TierwiseError


def cmd_run(args) -> int:
    from tierwise.jobs.runner import run_job

    spec = load_job_spec(args.spec, args.set)
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
    from tierwise.jobs.export_command import run_exports
    for line in run_exports(spec, report):
        print(line)
    return every_row_failed(report, spec)


def cmd_demo_data(args) -> int:
    from tierwise.pipelines.data import io
    from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

    df = generate_dataset(args.rows, DEMO_MIX, args.seed)
    fs, path = io.filesystem(args.out)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        df.write_parquet(fh, row_group_size=args.row_group_size)
    print(f"wrote {df.height} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_export_batch(args) -> int:
    from tierwise.pipelines.data import io
    from tierwise.pipelines.data.export import batch_lines

    spec = load_job_spec(args.spec, args.set)
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

    from tierwise.jobs import example_data, export_command, plan_command, replay_command, sample_command
    example_data.register(sub)
    plan_command.register(sub)
    export_command.register(sub)
    sample_command.register(sub)
    replay_command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tierwise.jobs import console

    console.setup(args.verbose)
    try:
        return args.func(args)
    except TierwiseError as exc:
        print(f"tierwise: error: {exc}", file=sys.stderr)
        from tierwise.pipelines.data.errors import JobInterrupted, RowErrorsInStrictMode
        if isinstance(exc, JobInterrupted):
            return EXIT_INTERRUPTED
        return EXIT_STRICT if isinstance(exc, RowErrorsInStrictMode) else EXIT_JOB_ERROR
    except KeyboardInterrupt:  # a second signal while draining: stopped at once
        print("tierwise: error: interrupted; re-run the same spec to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

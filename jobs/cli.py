"""The ``tierwise`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from tierwise.jobs.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_JOB_ERROR,
    EXIT_OK,
    EXIT_STRICT,
    every_row_failed,
    load_job_spec,
    log_to_file,
    summary_line,
    tier_lines,
)
from tierwise.pipelines.data.errors import TierwiseError


def cmd_run(args) -> int:
    """Runs each spec in turn. Consecutive specs whose replicas are the same
    (``tierwise.jobs.runner.pool_spec``) share one pool: their engines start once."""
    from tierwise.jobs.runner import run_job

    specs = [load_job_spec(path, args.set) for path in args.spec]  # every spec is checked before any runs
    import ray

    owned = not ray.is_initialized()
    pools = _Pools(args.address) if len(specs) > 1 else None
    code = EXIT_OK
    try:
        for i, spec in enumerate(specs):
            log_to_file(spec, args.verbose)
            report = run_job(spec, address=args.address, show_progress=not args.quiet, strict=args.strict,
                             overwrite=args.overwrite, pool=pools.pool_for(spec) if pools else None)
            if i == len(specs) - 1:  # the workers' last lines (engine shutdown) come before the report
                _shut_down(pools, owned)
            _print_report(spec, report, args.brief)
            code = max(code, every_row_failed(report, spec))
    finally:
        _shut_down(pools, owned)
    return code


class _Pools:
    """The pool of the spec run last, kept for the next spec with the same replicas."""

    def __init__(self, address: str | None):
        self.address, self.key, self.pool = address, None, None

    def pool_for(self, spec):
        from tierwise.jobs.runner import pool_spec, start_pool

        key = pool_spec(spec)
        if self.pool is None or key != self.key:
            self.close()
            print(f"tierwise: starting {spec.replicas.count} replica(s) of {spec.model.path} for {spec.name}",
                  file=sys.stderr)
            self.pool, self.key = start_pool(spec, self.address), key
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _shut_down(pools: _Pools | None, owned_ray: bool) -> None:
    if pools is not None:
        pools.close()
    import ray

    if owned_ray and ray.is_initialized():
        ray.shutdown()


def _print_report(spec, report: dict, brief: bool) -> None:
    print(summary_line(report))
    for line in tier_lines(report):
        print(line)
    if not brief:
        print(json.dumps(report))
    from tierwise.jobs.export_command import run_exports
    for line in run_exports(spec, report):
        print(line)


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

    run = sub.add_parser("run", help="run (or resume) job specs, one after another (engines shared where they can be)")
    run.add_argument("spec", nargs="+")
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

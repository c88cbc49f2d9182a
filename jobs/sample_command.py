"""``tierwise sample SPEC --n 32 --out SAMPLES``: record samples for replay.

Runs the spec's job with the uniform policy at ``n`` samples per row (sampling
temperature from the spec) and writes the samples table (one row per sample)
that ``tierwise replay`` reads. Grading uses the spec's gold column if any.
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="record n samples per row as a replay samples table")
    p.add_argument("spec")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--out", required=True, help="samples Parquet file (local or s3://)")
    p.add_argument("--address")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=main)


def main(args) -> int:
    import polars as pl

    from tierwise.jobs.cli_common import every_row_failed, load_job_spec
    from tierwise.jobs.runner import run_job
    from tierwise.pipelines.data import io
    from tierwise.pipelines.data.samples import output_to_samples

    spec = load_job_spec(args.spec, args.set, extra={"sampling.logprobs": True},
                         last={"policy": {"kind": "uniform", "n": args.n}})  # once: the output read below is the one run
    report = run_job(spec, address=args.address)
    if code := every_row_failed(report, spec):
        return code
    output = io.read_output(spec.output.path, spec.output.storage_options)
    gold = None
    if spec.input.gold_column:
        files = io.list_input_files(spec.input.path, spec.input.storage_options)
        cols = [spec.input.id_column, spec.input.gold_column]
        gold = io.read_parts(io.plan_parts(files, 1_000_000), cols, spec.input.storage_options)
        gold = gold.select(pl.col(cols[0]).cast(pl.String).alias("id"), pl.col(cols[1]).alias("gold"))
    samples = output_to_samples(output, gold)
    fs, path = io.filesystem(args.out)
    with fs.open(path, "wb") as fh:
        samples.write_parquet(fh)
    print(f"wrote {samples.height} samples of {samples['query_id'].n_unique()} queries to {args.out}",
          file=sys.stderr)
    print(json.dumps({"samples": samples.height, "queries": samples["query_id"].n_unique(),
                      "spent": report["spent"], "out": args.out}))
    return 0

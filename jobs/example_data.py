"""``tierwise example-data {label,traces,bulk} OUT``: the input of each example job (``jobs/examples/``).

All three are built on the shipped model's task, multi-digit addition (``tierwise.pipelines.tiers.tasks.arithmetic``):

- ``label``: Parquet rows to label with their units-column sum (0-18, the first step the model writes),
  the columns the label prompt's template reads (``prompt``, ``units_a``, ``units_b``) and the ``gold`` label;
- ``traces``: Parquet problems with a ``reference`` answer for the reference verifier (and ``gold``, which
  only scores the run);
- ``bulk``: an OpenAI batch JSONL file (``custom_id``, ``body.messages``, ``body.max_tokens``).
"""

from __future__ import annotations

import sys

import polars as pl

from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

# Traces: rows where a sample or two more is worth drawing (1-5 digits easy, 6 headroom, 7 hopeless).
TRACE_MIX = {3: 0.2, 4: 0.2, 5: 0.2, 6: 0.3, 7: 0.1}


def label_rows(n: int, seed: int) -> pl.DataFrame:
    """Problems with the operands' units digits and the gold label, their sum."""
    df = generate_dataset(n, DEMO_MIX, seed)
    ops = df["prompt"].str.extract_groups(r"^(\d+)\+(\d+)=")
    units = df.with_columns(units_a=ops.struct.field("1").str.slice(-1).cast(pl.Int64),
                            units_b=ops.struct.field("2").str.slice(-1).cast(pl.Int64))
    return units.with_columns(gold=(pl.col("units_a") + pl.col("units_b")).cast(pl.String)).drop("digits")


def trace_rows(n: int, seed: int) -> pl.DataFrame:
    """Problems with their reference answers (the ``reference`` column the verifier reads)."""
    return generate_dataset(n, TRACE_MIX, seed).with_columns(reference=pl.col("gold"))


def bulk_rows(n: int, seed: int) -> pl.DataFrame:
    """An OpenAI batch file's lines: each problem as a one-turn chat request of its own max_tokens."""
    df = generate_dataset(n, DEMO_MIX, seed)
    body = pl.struct(pl.lit("embedded:tiny-adder").alias("model"),
                     pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content")))
                     .alias("messages"),
                     (16 * pl.col("digits") + 24).alias("max_tokens"))
    return df.select(pl.col("id").alias("custom_id"), pl.lit("POST").alias("method"),
                     pl.lit("/v1/chat/completions").alias("url"), body.alias("body"))


KINDS = {"label": label_rows, "traces": trace_rows, "bulk": bulk_rows}


def register(subparsers) -> None:
    p = subparsers.add_parser("example-data", help="write the input of an example job (jobs/examples/)")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("out", help="the file (.parquet; .jsonl for bulk), local or s3://")
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=main)


def main(args) -> int:
    from tierwise.pipelines.data import io

    df = KINDS[args.kind](args.rows, args.seed)
    fs, path = io.filesystem(args.out)
    if not io._protocol_prefix(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        df.write_ndjson(fh) if io.is_jsonl(path) else df.write_parquet(fh)
    print(f"wrote {df.height} {args.kind} rows to {args.out}", file=sys.stderr)
    return 0

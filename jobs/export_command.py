"""``tierwise export-traces SPEC DEST``: a job's verified traces as an SFT-ready table.

One row per verified trace (``tierwise.pipelines.data.export.verified_traces``): the row's conversation as the
job sent it (its messages column, or its system prompt and user turn), the sample (its thought and
answer, with ``reasoning``) as the assistant's turn, the sample's answer and tokens. The spec names both the output (the samples, kept with
``output.keep_samples``) and the input (the conversations); a spec's ``export: {traces: DEST}``
block writes the same table at the end of ``tierwise run``.
"""

from __future__ import annotations

import sys

import polars as pl


def register(subparsers) -> None:
    p = subparsers.add_parser("export-traces", help="write a job's verified traces (chat form) as Parquet or JSONL")
    p.add_argument("spec")
    p.add_argument("dest", help="a .parquet or .jsonl file (local, or s3:// with the output's storage_options)")
    p.add_argument("--min-score", type=float, default=None, help="the verifier score a trace must reach "
                   "(default: the spec's export.min_score, else 1.0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=main)


def main(args) -> int:
    from tierwise.jobs.cli_common import load_job_spec

    spec = load_job_spec(args.spec, args.set)
    min_score = args.min_score if args.min_score is not None else (spec.export.min_score if spec.export else 1.0)
    n = export_traces(spec, args.dest, min_score)
    print(f"wrote {n} verified traces to {args.dest}", file=sys.stderr)
    return 0


def run_exports(spec, report: dict) -> list[str]:
    """Writes what the spec's ``export`` block asks for after a run (``report``: the run's report, whose
    ``output_path`` has the placeholders filled in); returns a line per export."""
    if not (spec.export and spec.export.traces):
        return []
    ran = spec.model_copy(update={"output": spec.output.model_copy(
        update={"path": report.get("output_path", spec.output.path)})})
    n = export_traces(ran, spec.export.traces, spec.export.min_score)
    return [f"tierwise: exported {n} verified traces to {spec.export.traces}"]


def export_traces(spec, dest: str, min_score: float = 1.0) -> int:
    """Writes the spec's verified traces to ``dest``; returns how many.

    Raises:
        SpecError: the output holds no sample texts or verifier scores (the message says what to set).
    """
    from tierwise.jobs.spec import SpecError, prompt_config
    from tierwise.pipelines.data import io
    from tierwise.pipelines.data.export import verified_traces, write_table

    out, r = spec.output, spec.reasoning
    cols = ["id", "status", "samples", "sample_answers", "sample_output_tokens", "verifier_scores"]
    output = io.read_output(out.path, out.storage_options, cols + (["reasoning"] if r else []))
    markers = (r.start or "", r.end) if r else None
    try:
        traces = verified_traces(output, conversations(spec.input, prompt_config(spec)), min_score, markers)
    except ValueError as exc:
        raise SpecError(f"export-traces: {exc}") from None
    write_table(traces, dest, out.storage_options)
    return traces.height


def conversations(inp, cfg) -> pl.DataFrame:
    """``id, messages``: each input row's conversation as the job sent it (null for a row that had none)."""
    from tierwise.pipelines.data import io
    from tierwise.pipelines.data.export import TRACE_MESSAGES
    from tierwise.pipelines.data.prompts import row_prompts

    files = io.list_input_files(inp.path, inp.storage_options)
    cols = list(dict.fromkeys([inp.id_column] + cfg.columns()))
    frame = io.read_parts(io.plan_parts(files, 1_000_000), cols, inp.storage_options)
    rows = row_prompts(frame, cfg, chat=True)
    return pl.DataFrame({"id": frame[inp.id_column].cast(pl.String), "messages": rows.messages},
                        schema={"id": pl.String, "messages": TRACE_MESSAGES})

"""The front door: ``run_job(spec)`` runs a whole tierwise job and returns its report.

Driver-side work is cheap: read footers, check ids, plan parts, start the ledger
and the replicas, then stream parts through the pool and merge their summaries.
Re-running the same spec resumes: committed parts are skipped and their spend is
charged to the budget before anything new is reserved.
"""

from __future__ import annotations

import logging
import time

from jobs.progress import Progress
from jobs.spec import JobSpec
from pipelines import io, records
from pipelines.budget import cost_per_token
from pipelines.report import build_report
from pipelines.tiers import uniform_tier
from pipelines.validation import check_columns, check_unique_ids

log = logging.getLogger(__name__)


def _check_input(spec: JobSpec) -> tuple[list[io.InputFile], int]:
    inp = spec.input
    files = io.list_input_files(inp.path, inp.storage_options)
    required = {"id_column": inp.id_column, "prompt_column": inp.prompt_column, "gold_column": inp.gold_column}
    for f in files:
        check_columns(io.read_schema(f, inp.storage_options), required, f.path)
    n_rows = check_unique_ids(list(io.iter_column(files, inp.id_column, inp.storage_options)), inp.id_column)
    return files, n_rows


def run_job(spec: JobSpec, address: str | None = None, show_progress: bool = True) -> dict:
    """Runs ``spec`` to completion (or resumes it) and returns the run report.

    Raises:
        InputError: the input is unusable as a whole; nothing was spent.
        StorageError: the output location cannot be written.
    """
    t0 = time.monotonic()
    files, n_rows = _check_input(spec)
    parts = io.plan_parts(files, spec.output.part_rows)
    out, so = spec.output.path, spec.output.storage_options
    committed = io.committed_parts(out, so)
    prior_spent = sum(s.get("cost", 0.0) for s in committed.values())
    todo = [p for p in parts if p.part_id not in committed]
    log.info("%d rows in %d parts; %d already committed", n_rows, len(parts), len(committed))

    summaries = dict(committed)
    generate_wall_s = 0.0
    ledger_snapshot = {"budget": spec.budget.amount, "spent": prior_spent}
    if todo:
        from ray_cluster.cluster import connect
        from ray_cluster.engine import EngineSpec
        from ray_cluster.ledger import BudgetLedger
        from ray_cluster.pool import PoolConfig, ReplicaPool
        from ray_cluster.replica import ReplicaConfig

        ray = connect(address)
        ledger = BudgetLedger.remote(spec.budget.amount, prior_spent)
        s = spec.sampling
        replica_cfg = ReplicaConfig(
            engine=EngineSpec(spec.model.path, spec.model.max_model_len, spec.model.dtype, s.seed,
                              spec.model.engine_kwargs),
            output_uri=out, id_column=spec.input.id_column, prompt_column=spec.input.prompt_column,
            gold_column=spec.input.gold_column,
            tier=uniform_tier(spec.policy.n, s.temperature, s.top_p, s.max_tokens,
                              weighted=spec.policy.select == "verifier"),
            cost_per_token=cost_per_token(spec.budget.unit, spec.budget.tokens_per_gpu_hour,
                                          spec.budget.usd_per_gpu_hour),
            extractor=spec.answer_extractor, verifier=spec.verifier, keep_samples=spec.output.keep_samples,
            max_rows_in_flight=spec.replicas.max_rows_in_flight, seed=s.seed,
            input_storage=spec.input.storage_options, output_storage=so,
        )
        r = spec.replicas
        pool = ReplicaPool(replica_cfg, PoolConfig(r.count, r.num_cpus, r.num_gpus, r.parts_per_replica,
                                                   r.max_part_retries), ledger)
        progress = Progress(n_rows, spec.budget.amount, spec.budget.unit, done=committed.values(),
                            enabled=show_progress)

        def on_done(summary: dict) -> None:
            summaries[summary["part_id"]] = summary
            progress.part_done(summary)

        def on_failed(part: io.Part, reason: str) -> None:
            on_done(_commit_failed_part(spec, part, reason))

        def poll() -> None:
            progress.spent(ray.get(ledger.snapshot.remote())["spent"])

        try:
            t_gen = time.monotonic()
            pool.run(todo, on_done, on_failed, poll)
            generate_wall_s = time.monotonic() - t_gen
            ledger_snapshot = ray.get(ledger.snapshot.remote())
        finally:
            progress.close()
            pool.shutdown()
            ray.kill(ledger)

    report = build_report(spec, list(summaries.values()), ledger_snapshot, n_rows, len(parts),
                          resumed_parts=len(committed), wall_s=time.monotonic() - t0,
                          generate_wall_s=generate_wall_s)
    io.write_json(report, out, "run_report.json", so)
    return report


def _commit_failed_part(spec: JobSpec, part: io.Part, reason: str) -> dict:
    """Writes a part whose retries are exhausted as row-level error records."""
    import polars as pl

    from ray_cluster.replica import summarize

    ids = pl.from_arrow(io.read_part(part, [spec.input.id_column], spec.input.storage_options))
    recs = [records.empty_record(i, "error", f"part failed after retries: {reason}")
            for i in ids.to_series().cast(pl.String).to_list()]
    table = records.to_table(recs)
    summary = summarize(part.part_id, table, 0.0)
    io.write_part(table, spec.output.path, part.part_id, summary, spec.output.storage_options)
    return summary

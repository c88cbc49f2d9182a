"""A run's start on its output: is this the job that wrote it, and which of its parts are done?

Runs on the driver, under the output's lease (``tierwise.pipelines.data.lease``), before any Ray or
engine start: a refused run spends nothing and starts nothing.

1. Fingerprint the job (``tierwise.pipelines.data.manifest``) from its spec and its input: every
   input file's size and version, the row count, the ids of each planned part.
2. Compare it with the output's ``_tierwise/manifest.json``. A difference (or parts but no
   manifest) refuses the run with ``JobChanged`` naming each change, unless the output
   holds nothing worth keeping (no part, or only rows that failed for a job-level cause).
   ``overwrite`` first moves the old output aside (``<output>.archived-<UTC time>``) and
   starts fresh, with a fresh ledger.
3. Check each committed part against the input part it claims (``classify_parts``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tierwise.jobs.spec import JobSpec
from tierwise.pipelines.data import io, manifest
from tierwise.pipelines.data.errors import TierwiseError
from tierwise.pipelines.data.lease import LEASE_DIR

log = logging.getLogger(__name__)

LEDGER_FILE = "_tierwise/ledger.json"


class JobChanged(TierwiseError):
    """The output was written by a job with other input or answer-changing settings."""


@dataclass
class Start:
    """What a run starts from: its parts, the committed parts it keeps, and the spend so far."""

    n_rows: int
    parts: list[io.Part]
    manifest: dict[str, Any]
    check: manifest.PartCheck
    prior_spent: float
    archived: str | None = None
    prior_parts: dict[int, float] = field(default_factory=dict)  # spend so far per part (``prior_spend``)

    @property
    def done(self) -> dict[int, dict]:
        return self.check.done


def part_hashes(parts: list[io.Part], id_chunks: list) -> list[str]:
    """``manifest.ids_hash`` of each part's ids (as the output stores them: strings), from the
    input's whole id column in file order (parts are consecutive ranges of it)."""
    ids = pl.concat([pl.Series("id", c).cast(pl.String) for c in id_chunks]) if id_chunks else pl.Series([])
    out, at = [], 0
    for p in parts:
        out.append(manifest.ids_hash(ids.slice(at, p.length).to_list()))
        at += p.length
    return out


def _found(out: str, so: dict) -> tuple[dict[int, dict], dict[int, str], dict[int, int]]:
    """The committed parts: summaries, the hash of the ids each holds, its job-caused error rows."""
    scanned = io.with_retries(lambda: io.scan_committed(out, so, ["id", "error_cause"]), f"list output {out}")
    summaries, hashes, job_rows = {}, {}, {}
    for pid, (summary, table) in scanned.items():
        summaries[pid] = summary
        hashes[pid] = manifest.ids_hash(table.column("id").to_pylist()) if "id" in table.column_names else ""
        causes = table.column("error_cause").to_pylist() if "error_cause" in table.column_names else []
        job_rows[pid] = sum(c == "job" for c in causes)
    return summaries, hashes, job_rows


def prepare(spec: JobSpec, files: list[io.InputFile], n_rows: int, id_chunks: list,
            overwrite: bool = False) -> Start:
    """Decides what this run does on its output; the caller holds the output's lease.

    Raises:
        JobChanged: the output holds work of a different job (each change named).
        StorageError: the output cannot be read or written.
    """
    out, so = spec.output.path, spec.output.storage_options
    parts = io.plan_parts(files, spec.output.part_rows)
    hashes = part_hashes(parts, id_chunks)
    inputs = [io.file_identity(f.path, spec.input.storage_options) for f in files]
    current = manifest.build_manifest(spec.model_dump(mode="json"), inputs, n_rows, hashes)
    archived = None
    if overwrite:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        archived = io.archive_output(out, f"archived-{stamp}", LEASE_DIR, so)
        if archived:
            log.warning("--overwrite: the old output of %s is now %s", out, archived)
    stored = io.read_json(out, manifest.MANIFEST_FILE, so)
    committed, found, job_rows = _found(out, so)
    changes = manifest.diff(stored, current) if stored else (
        [f"it holds {len(committed)} part(s) but no {manifest.MANIFEST_FILE} (written by an older tierwise, "
         "or by hand)"] if committed else [])
    worth_keeping = [p for p, s in committed.items() if job_rows.get(p, 0) < s.get("rows", 0)]
    if changes and worth_keeping:
        raise JobChanged(f"output {out} holds the work of a different job: {'; '.join(changes)}. Run with a new "
                         "output path, or --overwrite to archive the old output and start again")
    if changes:
        log.warning("output %s: %s; none of its parts is kept", out, "; ".join(changes))
    skipped_at = (stored or {}).get("skipped_at_budget")
    raised = skipped_at is not None and spec.budget.amount > skipped_at
    check = manifest.classify_parts(committed, found, job_rows, hashes, raised)
    for reason, ids in check.redone().items():
        log.warning("output %s: %d committed part(s) redone (%s): %s", out, len(ids), reason, ids[:10])
    if stored and not changes:
        current["skipped_at_budget"] = skipped_at
    io.write_json(current, out, manifest.MANIFEST_FILE, so)
    saved = io.read_json(out, LEDGER_FILE, so) or {}
    prior, prior_parts = prior_spend(saved, committed, check.done, bool(changes))
    return Start(n_rows, parts, current, check, prior, archived, prior_parts)


def ledger_record(spent: float, budget: float, parts: dict[int, float]) -> dict:
    """The content of ``_tierwise/ledger.json``: the spend so far, and per part (every attempt's)."""
    return {"spent": spent, "budget": budget, "by_part": {str(pid): amount for pid, amount in sorted(parts.items())}}


def prior_spend(saved: dict, committed: dict[int, dict], done: dict[int, dict],
                changed: bool) -> tuple[float, dict[int, float]]:
    """What earlier runs on the output spent: in all (everything counts, the spend of parts now
    redone and of attempts lost with a replica or a crashed driver included: it was spent), and per
    part of this job. A part kept ``done`` spent what its rows carry; a part to do (again) spent what
    the saved ledger says (and at least its old rows' cost): its next commit carries that as
    ``lost_cost``. Spend the saved ledger names no part for (an older ledger file, another job's
    parts, side work) stays in the total only."""
    spent = float(saved.get("spent", 0.0))
    committed_cost = sum(float(s.get("cost", 0.0)) for s in committed.values())
    if changed:  # another job's work: its spend counts, its parts are none of this job's
        return max(spent, committed_cost), {}
    saved_parts = {int(k): float(v) for k, v in (saved.get("by_part") or {}).items()}
    parts = dict(saved_parts)
    for pid, summary in committed.items():
        cost = float(summary.get("cost", 0.0))
        parts[pid] = cost if pid in done else max(parts.get(pid, 0.0), cost)
    named = sum(saved_parts.values()) if "by_part" in saved else committed_cost
    return max(spent, sum(parts.values()) + max(0.0, spent - named)), parts


def finish(spec: JobSpec, start: Start, new_summaries: list[dict]) -> None:
    """Records in the manifest the budget at which rows were last skipped for it, so that a
    run with a larger budget redoes the parts whose every row was skipped."""
    if any(s.get("status", {}).get("skipped_budget", 0) for s in new_summaries):
        start.manifest["skipped_at_budget"] = spec.budget.amount
        io.write_json(start.manifest, spec.output.path, manifest.MANIFEST_FILE, spec.output.storage_options)

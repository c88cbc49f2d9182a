"""Job identity: what an output was made from, and which of its parts a re-run may keep.

The first run writes ``_tierwise/manifest.json`` beside its parts: a fingerprint of
everything that determines the output (the input files with their size and the
storage's etag / mtime / version, the row count, a hash of each part's ids, and the
spec fields that change answers). A re-run builds the same fingerprint from its spec
and input; ``diff`` names every difference, and the runner refuses to resume over one.
``budget.amount`` is not part of it: it only limits spending, so raising it continues
the job (nor is the deadline: a resume with a new one continues the rows the old one left).

``classify_parts`` then decides, part by part, which committed parts count as done: a
part whose ids differ from the input part it claims, or whose rows failed for a cause
that was not the row's own (``error_cause == "job"``: the part failed after retries,
a dead engine, storage, configuration), is redone.

Pure functions over plain data: no I/O here (``tierwise.jobs.resume`` does it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MANIFEST_FILE = "_tierwise/manifest.json"
MANIFEST_VERSION = 1

# Spec fields that never change an answer: where the data lives and how it is reached, how
# many replicas run it, what the job is called, how much it may spend, and what is exported after. The input's own
# identity is fingerprinted file by file instead of by its path string.
NOT_IDENTITY = ("name", "input.path", "input.storage_options", "output.path", "output.storage_options",
                "replicas", "budget.amount", "budget.deadline", "budget.max_wall_s", "export")
# vLLM engine arguments that change speed or memory, not what is sampled: tuning them after an
# out-of-memory crash must not orphan the output. Any other engine argument is part of the identity.
ENGINE_TUNING = ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enforce_eager",
                 "swap_space", "enable_prefix_caching", "disable_log_stats", "cpu_offload_gb")


def ids_hash(ids: Iterable[str]) -> str:
    """A hash of an ordered list of string ids (the part's ids, as the output stores them)."""
    return hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode()).hexdigest()[:32]


def identity_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's answer-determining fields, flattened to dotted keys.

    Args:
        spec: the job spec as plain data (``JobSpec.model_dump(mode="json")``).
    """
    flat = _flatten(spec)
    out = {}
    for key, value in flat.items():
        if any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY):
            continue
        if ".engine_kwargs." in f".{key}" and key.rsplit(".", 1)[-1] in ENGINE_TUNING:
            continue
        out[key] = value
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): d}


def build_manifest(spec: dict[str, Any], files: list[dict[str, Any]], rows: int,
                   part_hashes: list[str]) -> dict[str, Any]:
    """The fingerprint of a job.

    Args:
        spec: the job spec as plain data.
        files: one ``{"path", "size", "etag" | "mtime" | "version", ...}`` per input file, in order.
        rows: the input's row count.
        part_hashes: ``ids_hash`` of each planned part's ids, by part id.
    """
    return {"version": MANIFEST_VERSION, "spec": identity_fields(spec), "input": files, "rows": rows,
            "part_rows": spec["output"]["part_rows"], "parts": part_hashes}


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two manifests, one phrase per change (empty: the same job)."""
    changes: list[str] = []
    old_files = {f["path"]: f for f in old.get("input", [])}
    new_files = {f["path"]: f for f in new.get("input", [])}
    for path, f in new_files.items():
        before = old_files.get(path)
        if before is None:
            changes.append(f"input file {_short(path)} is new")
            continue
        what = [f"{k} {_show(before.get(k))} -> {_show(f.get(k))}" for k in sorted((set(before) | set(f)) - {"path"})
                if before.get(k) != f.get(k)]
        if what:
            changes.append(f"input file {_short(path)} changed: {', '.join(what)}")
    changes += [f"input file {_short(p)} is gone" for p in old_files if p not in new_files]
    if old.get("rows") != new.get("rows"):
        changes.append(f"input rows {_show(old.get('rows'))} -> {_show(new.get('rows'))}")
    o, n = old.get("spec", {}), new.get("spec", {})
    for key in sorted(set(o) | set(n)):
        if o.get(key) != n.get(key):
            changes.append(f"{key}: {_show(o.get(key, '(unset)'))} -> {_show(n.get(key, '(unset)'))}")
    if not changes and old.get("parts") != new.get("parts"):
        moved = [i for i, (a, b) in enumerate(zip(old.get("parts", []), new.get("parts", []))) if a != b]
        changes.append(f"the ids of input part(s) {_ids(moved)} changed")
    return changes


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1] if "/" in path else path


def _show(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return f"{v:,}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _ids(ids: list[int], most: int = 8) -> str:
    return ", ".join(str(i) for i in ids[:most]) + (f" (+{len(ids) - most} more)" if len(ids) > most else "")


@dataclass
class PartCheck:
    """Which committed parts a re-run keeps (``done``) and which it redoes, with why."""

    done: dict[int, dict] = field(default_factory=dict)          # part id -> summary
    mismatched: list[int] = field(default_factory=list)          # its ids differ from the input part
    job_errors: list[int] = field(default_factory=list)          # rows failed for a job-level cause
    budget_skipped: list[int] = field(default_factory=list)      # every row skipped; the budget was raised
    deadline_skipped: list[int] = field(default_factory=list)    # rows the last run's deadline left
    orphans: list[int] = field(default_factory=list)             # no such input part

    def redone(self) -> dict[str, list[int]]:
        """The parts not kept, by reason (empty reasons left out)."""
        out = {"ids_mismatch": self.mismatched, "job_errors": self.job_errors,
               "budget_skipped": self.budget_skipped, "deadline_skipped": self.deadline_skipped,
               "orphans": self.orphans}
        return {k: v for k, v in out.items() if v}


def classify_parts(committed: dict[int, dict], found_hashes: dict[int, str], job_error_rows: dict[int, int],
                   part_hashes: list[str], budget_raised: bool) -> PartCheck:
    """Sorts committed parts into kept and redone.

    Args:
        committed: ``{part id: summary}`` read from the output.
        found_hashes: ``ids_hash`` of the ids each committed part actually holds.
        job_error_rows: per committed part, its rows with ``error_cause == "job"``.
        part_hashes: ``ids_hash`` of each input part, by part id.
        budget_raised: the budget is larger than when rows were last skipped for it: parts
            whose every row was skipped (nothing spent on them) run again.

    A part with rows a deadline left (``skipped_deadline``) always runs again: the deadline
    was that run's, and the resume continues its rows (what the part's other rows spent
    stays spent, in the ledger).
    """
    check = PartCheck()
    for pid in sorted(committed):
        s = committed[pid]
        if pid >= len(part_hashes):
            check.orphans.append(pid)
        elif found_hashes.get(pid) != part_hashes[pid]:
            check.mismatched.append(pid)
        elif job_error_rows.get(pid, 0):
            check.job_errors.append(pid)
        elif budget_raised and s.get("rows") and s.get("status", {}).get("skipped_budget", 0) == s["rows"]:
            check.budget_skipped.append(pid)
        elif s.get("status", {}).get("skipped_deadline", 0):
            check.deadline_skipped.append(pid)
        else:
            check.done[pid] = s
    return check

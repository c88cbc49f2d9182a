"""What the ``tierwise`` subcommands share: exit codes, ``--set`` overrides, the job's log file, the
report's summary lines."""

from __future__ import annotations

import logging
import sys

import yaml

# Exit codes (docs/spec.md, "Exit codes").
EXIT_OK, EXIT_JOB_ERROR, EXIT_STRICT, EXIT_EVERY_ROW_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


def set_overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs as ``{dotted key: YAML value}``.

    Raises:
        SpecError: a pair without ``=`` or a key, or a value that is not YAML.
    """
    from tierwise.jobs.spec import SpecError

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


def log_to_file(spec, verbose: bool) -> None:
    """Sends the job's vLLM and Ray lines to its log file (``tierwise.jobs.console``), named on stderr."""
    from tierwise.jobs import console

    path = console.log_path(spec.output.path, spec.name)
    console.setup(verbose, path)
    logging.getLogger("tierwise").info("logs (vLLM, Ray workers): %s", path)


def every_row_failed(report: dict, spec) -> int:
    """``EXIT_EVERY_ROW_FAILED`` (with the most common errors on stderr) when every row of the
    job ended ``error``: a job that produced nothing must not look like a success. Else 0."""
    from tierwise.pipelines.data import io

    rows, errors = report["rows"], report["status"].get("error", 0)
    if not rows or errors < rows:
        return EXIT_OK
    out = io.read_output(report.get("output_path", spec.output.path), spec.output.storage_options, ["error"])
    common = out.group_by("error").len().sort("len", descending=True).head(3).rows() if out.height else []
    print(f"tierwise: error: every row ({errors} of {rows}) ended as an error; most common:", file=sys.stderr)
    for message, count in common:
        print(f"  {count} x {message}", file=sys.stderr)
    return EXIT_EVERY_ROW_FAILED


def load_job_spec(path: str, pairs: list[str], extra: dict | None = None, last: dict | None = None):
    """The spec at ``path`` with ``extra`` overrides, then the ``--set`` pairs, then ``last``, its
    output path resolved (``tierwise.jobs.spec.resolve_output_path``)."""
    from tierwise.jobs.spec import load_spec, resolve_output_path

    return resolve_output_path(load_spec(path, (extra or {}) | set_overrides(pairs) | (last or {})))


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

"""Pre-flight: what the driver can know before any engine starts, checked before anything is spent.

The spec's own validation (``tierwise.jobs.spec``) does no I/O. What needs the driver's file system, its
Python path or the cluster is checked here, on the driver, in seconds:

- ``check_job``: a ``module:function`` verifier imports and is callable (and has a prefix check
  where ``policy.abort_failed_steps`` asks for one); local model directories exist.
- ``wait_for_resources``: the cluster can host ``replicas.count`` replicas of ``replicas.num_cpus``
  / ``num_gpus`` each, every replica on one node. Replicas no node can ever host, on a cluster
  no autoscaler can grow, are refused at once; otherwise the wait for free resources is bounded by
  ``replicas.start_timeout_s``, and SIGINT/SIGTERM stop it.
- ``commit_skipped``: with no budget left, the driver writes every row ``skipped_budget`` itself
  (exactly-once parts, the same output contract) and no engine starts.

Each failure is a ``SpecError`` naming the field (exit 2), never a traceback from a replica.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path

from tierwise.jobs.spec import JobSpec, JudgeSpec, SpecError, aborts_failed_steps
from tierwise.pipelines.data import io

log = logging.getLogger(__name__)

RESOURCE_POLL_S = 1.0


def check_job(spec: JobSpec) -> None:
    """The checks that need the driver's Python path and file system, but no cluster.

    Raises:
        SpecError: naming the field: a verifier that cannot be loaded, a local model
            directory that does not exist or holds no ``config.json``.
    """
    if isinstance(spec.verifier, str):
        from tierwise.pipelines.tiers.verifiers import make_verifier

        try:
            make_verifier(spec.verifier)
        except ValueError as exc:
            raise SpecError(f"verifier: {exc}") from None
    aborts_failed_steps(spec)  # a prefix check asked for and missing
    if spec.structured is not None:
        from tierwise.ray_cluster.engine import check_structured

        kind, _ = constraint = spec.structured.constraint()
        try:
            check_structured(constraint)
        except ValueError as exc:
            raise SpecError(f"structured.{kind}: vLLM's structured outputs (xgrammar) reject it: {exc}") from None
    check_model("model.path", spec.model.path)
    check_chat_template(spec)
    if isinstance(spec.verifier, JudgeSpec) and spec.verifier.model is not None:
        check_model("verifier.model", spec.verifier.model)


def check_model(field: str, model: str) -> None:
    """A model given as a local path (``/...``, ``./...``, ``../...``, ``~...``, or any path that
    exists) must be a model directory here on the driver; anything else is a Hugging Face id,
    fetched by the replicas.

    Raises:
        SpecError: the path does not exist, or is a directory without ``config.json``.
    """
    if model.startswith("embedded:"):
        from tierwise.ray_cluster.engine import resolve_model
        model = resolve_model(model)  # the name is checked by the spec; the shipped directory by the tests
    path = Path(model).expanduser()
    if not (model.startswith(("/", "./", "../", "~")) or path.exists()):
        return
    if not path.exists():
        raise SpecError(f"{field}: local model directory {model!r} does not exist (checked on the driver)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise SpecError(f"{field}: {model!r} is not a model directory (it holds no config.json)")


def check_chat_template(spec: JobSpec) -> None:
    """A job whose rows need a chat template (``input.messages_column``, ``prompt.system_prompt``,
    ``prompt.chat`` true or ``chat_template_kwargs``) on a local model directory without one
    (``chat_template`` in tokenizer_config.json, or chat_template.jinja) and no
    ``prompt.chat_template`` is refused here; a Hugging Face id is checked by the replicas.

    Raises:
        SpecError: naming what needs the template.
    """
    p, inp = spec.prompt, spec.input
    needs = next((f for f, v in (("input.messages_column", inp.messages_column),
                                 ("prompt.system_prompt", p.system_prompt), ("prompt.chat", p.chat),
                                 ("prompt.chat_template_kwargs", p.chat_template_kwargs)) if v), None)
    if needs is None or p.chat_template is not None:
        return
    model = spec.model.path
    if model.startswith("embedded:"):
        from tierwise.ray_cluster.engine import resolve_model
        model = resolve_model(model)
    path = Path(model).expanduser()
    if not path.is_dir():
        return
    config = path / "tokenizer_config.json"
    try:
        has = (path / "chat_template.jinja").is_file() or (
            config.is_file() and "chat_template" in json.loads(config.read_text()))
    except (OSError, ValueError):
        return  # the engine reports an unreadable tokenizer itself
    if not has:
        raise SpecError(f"{needs} needs a chat template, and the model {spec.model.path!r} has none: set "
                        "prompt.chat_template (Jinja text or a file)")


# ---------------------------------------------------------------- the cluster's resources

def replica_demand(spec: JobSpec) -> dict[str, float]:
    """Ray resources one replica asks for (its judge engine shares them)."""
    r = spec.replicas
    return {k: v for k, v in (("CPU", float(r.num_cpus)), ("GPU", float(r.num_gpus))) if v > 0}


def hosts(node: dict[str, float], need: dict[str, float]) -> int:
    """How many replicas needing ``need`` fit in a node's ``node`` resources."""
    if not need:
        return 1 << 30
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items())


def wait_for_resources(spec: JobSpec, ray, poll_s: float = RESOURCE_POLL_S) -> None:
    """Returns once the cluster's free resources can host the spec's replicas.

    Args:
        ray: the connected ``ray`` module.

    Raises:
        SpecError: no node can ever host the replicas and no autoscaler can add one (at
            once), or they were not free within ``replicas.start_timeout_s`` (after it).
        JobInterrupted: SIGINT/SIGTERM while waiting; nothing was spent.
    """
    need, count = replica_demand(spec), spec.replicas.count
    if not need:
        return
    totals = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if sum(hosts(n, need) for n in totals) < count and not _can_add_nodes(ray, need):
        raise SpecError(_shortfall(spec, need, totals, "the cluster can never host them: no autoscaler "
                                   "can add nodes") + "; lower replicas.count / num_cpus / num_gpus or add nodes")
    limit = spec.replicas.start_timeout_s
    deadline, requested = time.monotonic() + limit, False
    try:
        with _stop_on_signal("while waiting for the replicas' resources"):
            while sum(hosts(n, need) for n in _free_per_node(ray)) < count:
                if not requested:  # an autoscaler scales for this request without waiting on its own demand
                    from ray.autoscaler.sdk import request_resources
                    request_resources(bundles=[need] * count)
                    requested = True
                    log.warning("waiting up to %.0f s (replicas.start_timeout_s) for %d x %s to be free", limit, count,
                                _fmt(need))
                if time.monotonic() > deadline:
                    raise SpecError(_shortfall(spec, need, [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                                               f"not free within {limit:g} s (replicas.start_timeout_s)")
                                    + f"; free now: {_fmt(_sum(_free_per_node(ray)))}")
                time.sleep(poll_s)
    finally:
        if requested:
            from ray.autoscaler.sdk import request_resources
            request_resources(bundles=[])  # the replicas' own demand keeps what they got


def _can_add_nodes(ray, need: dict[str, float]) -> bool:
    """Whether an autoscaler could add a node that hosts a replica. A cluster this process started
    (``ray.init`` with no address) has none; Ray's autoscaler v2 publishes its node types; a cluster
    joined by address that publishes none may still run one (v1): assume it can, and let the
    bounded wait decide."""
    from ray._private import state, worker  # no public API says either

    try:
        config = state.state.get_cluster_config()
    except Exception:  # an older GCS: no published config
        config = None
    if config is not None:
        return any(g.max_count != 0 and hosts(dict(g.resources), need) > 0 for g in config.node_group_configs)
    return not getattr(worker._global_node, "head", False)


def _free_per_node(ray) -> list[dict[str, float]]:
    from ray._private import state  # per-node free resources: only the private state API has them

    return list(state.state.available_resources_per_node().values())


def _sum(nodes: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _shortfall(spec: JobSpec, need: dict[str, float], nodes: list[dict[str, float]], why: str) -> str:
    largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    return (f"replicas: {spec.replicas.count} x {_fmt(need)} (replicas.count x num_cpus / num_gpus; each replica "
            f"on one node): {why}; its {len(nodes)} node(s) can host {sum(hosts(n, need) for n in nodes)} "
            f"(largest node {_fmt({k: largest.get(k, 0.0) for k in ('CPU', 'GPU')})}, "
            f"in all {_fmt(_sum(nodes))})")


@contextlib.contextmanager
def _stop_on_signal(what: str):
    """SIGINT/SIGTERM stop the job at once (nothing runs yet, nothing to drain); main thread only."""
    from tierwise.pipelines.data.errors import JobInterrupted

    def stop(signum, frame):
        raise JobInterrupted(f"stopped by signal {signum} {what}; nothing was spent")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- nothing left to spend

def commit_skipped(spec: JobSpec, parts: list[io.Part], lost: dict[int, float] | None = None) -> dict[int, dict]:
    """Commits ``parts`` from the driver, every row ``skipped_budget`` (cost 0, ``correct`` false where
    a gold column grades it, ``prompt_tokens`` null: no tokenizer ran; a prompt that cannot be sent is
    a row error, as on a replica): the budget left is zero, so no engine starts. Each part commits
    atomically as the replicas' do (``tierwise.jobs.skipping.commit_bulk``), carrying what earlier lost attempts
    at it spent (``lost``, by part id: ``lost_cost``); returns their summaries.
    """
    from tierwise.jobs.skipping import commit_bulk

    return commit_bulk(spec, parts, "skipped_budget", lost=lost)

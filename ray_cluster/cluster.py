"""Cluster wiring: join an existing Ray cluster or start a local one, and where its logs go."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

# Set (by ``tierwise run`` / ``plan``: ``tierwise.jobs.console``) to a log file: every Ray worker's stdout and
# stderr (vLLM's and Ray's lines, the C++ libraries' too) is appended to it instead of being echoed on
# the driver's console. Unset: workers' output is echoed to the driver (``log_to_driver``), as Ray does.
LOG_FILE_ENV = "TIERWISE_LOG_FILE"

# Environment passed to every worker: vLLM-CPU's KV cache size in GiB (small on a
# shared 2-core machine; raise it on a big CPU host), and quiet tokenizers.
WORKER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM's INFO lines per engine start drown the progress bar; warnings still show.
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
}


def redirect_worker_output() -> None:
    """Ray's ``worker_process_setup_hook``: points this worker's stdout and stderr (file descriptors
    1 and 2, so C-level writes and subprocesses such as vLLM's engine core follow) at
    ``TIERWISE_LOG_FILE``. A worker that cannot open it (another node without the path) keeps Ray's
    own log files."""
    path = os.environ.get(LOG_FILE_ENV)
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(fd, target)
    os.close(fd)


def init_kwargs(log_file: str | None) -> dict:
    """``ray.init``'s arguments: workers' output to ``log_file`` (not the driver's console) when set."""
    env = dict(WORKER_ENV)
    runtime_env: dict = {"env_vars": env}
    if log_file:
        env[LOG_FILE_ENV] = log_file
        env["VLLM_CONFIGURE_LOGGING"] = "1"  # the workers' vLLM keeps its own format (levels, times) in the file
        runtime_env["worker_process_setup_hook"] = f"{__name__}.redirect_worker_output"
    # Ray's own driver-side logger is left to the process's logging handlers (tierwise.jobs.console).
    return dict(runtime_env=runtime_env, logging_level=logging.INFO if log_file else logging.WARNING,
                configure_logging=not log_file, include_dashboard=False, log_to_driver=not log_file)


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, **ray_kwargs):
    """Connects to ``address`` (or ``RAY_ADDRESS``), else starts a local cluster.

    ``ray_kwargs``: more ``ray.init`` arguments (e.g. ``_metrics_export_port``) for a local cluster.
    Safe to call when Ray is already initialised in this process (tests share one).
    """
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = init_kwargs(os.environ.get(LOG_FILE_ENV))
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # "local": a cluster of its own, never one `ray start` left recorded on this machine
        # (a stale record of a dead one made ray.init fail); joining is explicit, by address.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs | ray_kwargs)
    return ray

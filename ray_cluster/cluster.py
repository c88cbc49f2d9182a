"""Cluster wiring: join an existing Ray cluster or start a local one."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Environment passed to every worker: vLLM-CPU's KV cache size in GiB (small on a
# shared 2-core machine; raise it on a big CPU host), and quiet tokenizers.
WORKER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM's INFO lines per engine start drown the progress bar; warnings still show.
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
}


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Connects to ``address`` (or ``RAY_ADDRESS``), else starts a local cluster.

    Safe to call when Ray is already initialised in this process (tests share one).
    """
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(runtime_env={"env_vars": WORKER_ENV}, logging_level=logging.WARNING,
                  include_dashboard=False, log_to_driver=True)
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # "local": a cluster of its own, never one `ray start` left recorded on this machine
        # (a stale record of a dead one made ray.init fail); joining is explicit, by address.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return ray

"""Where a job's log lines go: tierwise's own warnings on the console, everything else (vLLM, Ray,
the Ray workers' stdout and stderr) in a log file under the output's ``_tierwise/``; with ``-v``
all of it on the console as well."""

from __future__ import annotations

import logging
import os
import tempfile

from tierwise.ray_cluster.cluster import LOG_FILE_ENV

LOG_NAME = "_tierwise/tierwise.log"
OWN = ("jobs", "pipelines", "ray_cluster", "tierwise", "__main__")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(output_path: str, name: str) -> str:
    """The job's log file: ``<output>/_tierwise/tierwise.log`` for a local output; for a remote one
    (s3://) a local file under the temporary folder, named by the job."""
    from tierwise.pipelines.data import io

    fs, path = io.filesystem(output_path)
    if "file" in fs.protocol or "local" in fs.protocol:
        return os.path.join(path, LOG_NAME)
    return os.path.join(tempfile.gettempdir(), "tierwise", name, "tierwise.log")


def _own_or_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or record.name.split(".")[0] in OWN


def setup(verbose: bool, log_file: str | None = None) -> None:
    """Routes the process's logging: the console shows tierwise's own warnings (``verbose``: every
    logger's INFO); ``log_file`` (when given) gets every record at INFO, and the Ray workers' output
    (``tierwise.ray_cluster.cluster.redirect_worker_output``) unless ``verbose`` echoes it on the console."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        console.addFilter(_own_or_error)
    root.addHandler(console)
    logging.captureWarnings(True)  # Python warnings (transformers, torch) are log records too
    if log_file:
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        fh = logging.FileHandler(log_file, delay=True)
        fh.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(fh)
        if not verbose:
            os.environ[LOG_FILE_ENV] = log_file
            os.environ["VLLM_CONFIGURE_LOGGING"] = "0"  # vLLM in this process logs through the root handlers
    import ray  # noqa: F401  (its import installs the "ray" logger's own console handler: routed as the rest)

    ray_logger = logging.getLogger("ray")
    for h in list(ray_logger.handlers):
        ray_logger.removeHandler(h)
    ray_logger.propagate = True

"""tierwise: spend a fixed inference budget wisely over huge offline LLM workloads.

The package is the repository's three folders, installed as sub-packages (``pyproject.toml``'s
``package-dir``): ``tierwise.jobs`` (specs, the command line, job drivers), ``tierwise.ray_cluster``
(Ray actors hosting vLLM replicas, the budget ledger) and ``tierwise.pipelines`` (row data, row
programs, planning math, replay). From a source checkout without an install, the folders beside
this one are the sub-packages.
"""

from pathlib import Path as _Path

_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "jobs").is_dir() and (_root / "jobs" / "cli.py").is_file():
    __path__.append(str(_root))  # a source checkout: tierwise.jobs is <checkout>/jobs

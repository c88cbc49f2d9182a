"""The console: tierwise's own warnings on it, vLLM's and Ray's lines in the job's log file only."""

from __future__ import annotations

import logging
import os

from tierwise.jobs import console
from tierwise.jobs.cli_common import tier_label, tier_lines
from tierwise.jobs.progress import Progress
from tierwise.ray_cluster.cluster import LOG_FILE_ENV, init_kwargs


def test_third_party_lines_go_to_the_file_only(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(LOG_FILE_ENV, raising=False)
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    path = console.log_path(str(tmp_path / "out"), "demo")
    assert path == str(tmp_path / "out" / "_tierwise" / "tierwise.log")
    try:
        console.setup(verbose=False, log_file=path)
        assert os.environ[LOG_FILE_ENV] == path  # the workers' output follows (tierwise.ray_cluster.cluster)
        logging.getLogger("vllm.model_executor").warning("Attempted to load weight x")
        logging.getLogger("ray._private.worker").warning("Token authentication is enabled")
        logging.getLogger("tierwise.jobs.runner").warning("the budget ran out")
        logging.getLogger("vllm.engine").error("engine died")
        err = capsys.readouterr().err
        assert "the budget ran out" in err and "engine died" in err
        assert "Attempted" not in err and "Token authentication" not in err
        for h in logging.getLogger().handlers:
            h.flush()
        text = open(path).read()
        assert all(s in text for s in ("Attempted to load weight", "Token authentication", "budget ran out"))
    finally:
        console.setup(verbose=False)  # no file handler left on the root logger
        os.environ.pop(LOG_FILE_ENV, None)
        os.environ.pop("VLLM_CONFIGURE_LOGGING", None)
        logging.getLogger().handlers[0].close()


def test_verbose_shows_every_logger(capsys, monkeypatch):
    monkeypatch.delenv(LOG_FILE_ENV, raising=False)
    console.setup(verbose=True)
    logging.getLogger("vllm.x").info("vllm says hi")
    assert "vllm says hi" in capsys.readouterr().err
    console.setup(verbose=False)


def test_ray_init_arguments_follow_the_log_file():
    quiet = init_kwargs("/tmp/x/tierwise.log")
    assert quiet["log_to_driver"] is False and quiet["configure_logging"] is False
    assert quiet["runtime_env"]["env_vars"][LOG_FILE_ENV] == "/tmp/x/tierwise.log"
    assert quiet["runtime_env"]["worker_process_setup_hook"] == "tierwise.ray_cluster.cluster.redirect_worker_output"
    loud = init_kwargs(None)
    assert loud["log_to_driver"] is True and "worker_process_setup_hook" not in loud["runtime_env"]


def test_summary_names_what_a_row_got():
    assert tier_label("skip", 1) == "pilot only"
    assert tier_label("best_of_n", 8) == "best_of_n up to 8"
    assert tier_label("calibration", 6) == "calibration"
    assert tier_label(None, None) == "(none)"
    report = {"by_tier": [{"tier": "skip", "bucket": 0, "rows": 5, "mean_samples": 1.0, "max_samples": 1,
                           "cost": 10.0, "accuracy": 1.0}]}
    assert tier_lines(report)[0].split()[:4] == ["pilot", "only", "b0", "5"]


def test_progress_names_its_phase():
    p = Progress(10, 100.0, "tokens", enabled=True)
    p.phase("starting 2 replica(s)")
    assert "starting 2 replica(s)" in p.bar.desc
    p.phase("running")
    p.part_done({"rows": 5, "output_tokens": 50})
    assert p.bar.n == 5 and "running" in p.bar.desc
    p.close()

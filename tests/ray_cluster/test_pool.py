"""How many parts a replica holds (the pure rule; the pool's runs are in tests/jobs)."""

from tierwise.ray_cluster.pool import takes_part


def test_rows_rule_keeps_rows_in_flight_full_beside_the_first_part():
    # 384 rows in flight, parts of 256: three parts, so two (512 rows) stay queued
    # while the first one's last rows finish.
    held: list[int] = []
    while takes_part(held, 384):
        held.append(256)
    assert held == [256, 256, 256]
    assert sum(held[1:]) >= 384 > sum(held[1:-1])  # enough, and one part fewer is not


def test_rows_rule_small_and_large_parts():
    held: list[int] = []
    while takes_part(held, 384):
        held.append(25)
    assert len(held) == 17 and sum(held[1:]) >= 384 > sum(held[1:-1])
    assert takes_part([], 384) and takes_part([2000], 384) and not takes_part([2000, 2000], 384)


def test_rows_not_yet_started_decide_once_the_replica_counts_them():
    """An adaptive part's last rows may run long after the other parts' rows all started: the replica's
    count of rows not yet started (not the parts' lengths) says when to send the next part."""
    from tierwise.ray_cluster.pool import HELD_ROWS_FACTOR

    held = [256, 256, 256]  # the lengths rule would wait for the first part to commit
    assert not takes_part(held, 384)
    assert takes_part(held, 384, unstarted=10)  # every row but 10 has started: the engine would drain
    assert not takes_part(held, 384, unstarted=400)
    # Finished rows wait in their part until its last row is done: what a replica holds stays bounded.
    many = [256] * (1 + HELD_ROWS_FACTOR * 384 // 256)
    assert not takes_part(many, 384, unstarted=0)
    assert takes_part(many[:-1], 384, unstarted=0)
    assert takes_part([], 384, unstarted=0) and not takes_part([5], 384, parts_per_replica=1, unstarted=0)


def test_fixed_parts_per_replica_overrides_the_rows_rule():
    assert takes_part([256], 384, parts_per_replica=2)
    assert not takes_part([256, 256], 384, parts_per_replica=2)
    assert not takes_part([5], 10_000, parts_per_replica=1)


def _held_part(out: str, part_id: int = 3):
    """What a replica returns for a part it finished but could not commit."""
    from tierwise.pipelines.data import records
    from tierwise.ray_cluster.replica import summarize

    table = records.to_table([records.empty_record(f"r{i}", "ok") | {"cost": 2.0} for i in range(4)])
    return {"part_id": part_id, "unwritten": True, "table": table, "summary": summarize(part_id, table, 0.1),
            "error": "cannot write output part: OSError: ...", "permanent": False}


def _bare_pool(**cfg):
    from tierwise.ray_cluster.pool import PoolConfig, ReplicaPool

    pool = ReplicaPool.__new__(ReplicaPool)  # no replicas: only the driver's side of a held part
    pool.cfg = PoolConfig(retry_backoff_s=0.0, **cfg)
    return pool


def _job(out: str, storage: dict):
    from tierwise.pipelines.data.prompts import PromptConfig
    from tierwise.ray_cluster.replica import JobContext

    return JobContext(output_uri=out, id_column="id", prompt=PromptConfig(), gold_column=None, cost_per_token=1.0,
                      output_storage=storage)


def test_a_held_part_is_committed_from_the_driver_without_generating_it_again(s3_bucket, s3_endpoint):
    """Issue 16, point 10: a part whose write failed was generated again on every retry. Now the
    replica hands back the finished table and only the write is retried, from the driver
    (here through the proxy to moto's S3, answering again)."""
    import sys
    from pathlib import Path

    from tierwise.pipelines.data import io

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from flaky_proxy import FlakyProxy

    bucket, so = s3_bucket
    with FlakyProxy(s3_endpoint) as proxy:
        flaky = {**so, "client_kwargs": {**so["client_kwargs"], "endpoint_url": proxy.url}}
        out = f"s3://{bucket}/out"
        done, stopped, stats = [], [], {"unwritten": 0, "unwritten_cost": 0.0}
        _bare_pool(max_part_retries=2)._commit_held(_job(out, flaky), _held_part(out), done.append,
                                                      stopped.append, stats)
    assert [s["part_id"] for s in done] == [3] and not stopped and stats["unwritten"] == 0
    assert io.committed_parts(out, so)[3]["cost"] == 8.0


def test_a_permanent_write_error_stops_the_job_without_retrying(tmp_path):
    from tierwise.pipelines.data.errors import StorageError

    held = _held_part(str(tmp_path)) | {"permanent": True, "error": "cannot write: PermissionError: denied"}
    done, stopped, stats = [], [], {"unwritten": 0, "unwritten_cost": 0.0}
    _bare_pool(max_part_retries=3)._commit_held(_job(str(tmp_path / "out"), {}), held, done.append,
                                                  stopped.append, stats)
    assert not done and len(stopped) == 1 and isinstance(stopped[0], StorageError)
    assert "PermissionError" in str(stopped[0]) and stats == {"unwritten": 1, "unwritten_cost": 8.0}
    assert not (tmp_path / "out").exists()  # not even tried

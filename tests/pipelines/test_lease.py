"""The output lease: one writer per output, on a local directory and on S3 (moto's server)."""

import json
import subprocess
import sys
import threading
import time

import pytest

from tierwise.pipelines.data import io
from tierwise.pipelines.data.lease import LEASE_DIR, OutputLease, OutputLeased


def _contract(out: str, so: dict | None = None) -> None:
    first = OutputLease(out, so, ttl_s=30, renew_s=0.2)
    with first:
        with pytest.raises(OutputLeased, match="one writer per output"):
            OutputLease(out, so).acquire()
        time.sleep(0.5)  # heartbeats happen
        assert first.renew() and not first.lost
    # Released: the next driver takes it at once.
    with OutputLease(out, so) as second:
        assert second.gen == first.gen + 1
    assert io.list_names(out, LEASE_DIR, so) == [f"{second.gen:08d}.json"]  # older numbers are removed


def test_one_writer_per_local_output(tmp_path):
    _contract(str(tmp_path / "out"))


@pytest.mark.slow
def test_one_writer_per_s3_output(s3_bucket):
    """S3: the lease is created with If-None-Match: * (moto answers 412 when it exists)."""
    bucket, so = s3_bucket
    _contract(f"s3://{bucket}/out", so)
    assert io.create_exclusive(f"s3://{bucket}/out", "x", b"1", so)
    assert not io.create_exclusive(f"s3://{bucket}/out", "x", b"2", so)
    fs, _ = io.filesystem(f"s3://{bucket}", so)
    assert fs.cat(f"{bucket}/out/x") == b"1"


def test_exclusive_create_has_one_winner(tmp_path):
    out, wins = str(tmp_path / "out"), []

    def race(i):
        if io.create_exclusive(out, "lock", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and (tmp_path / "out" / "lock").read_text() == str(wins[0])


def test_stale_lease_is_taken_over_and_its_holder_learns_it_lost(tmp_path):
    out = str(tmp_path / "out")
    old = OutputLease(out, ttl_s=0.5, renew_s=60)
    old.acquire()
    with pytest.raises(OutputLeased):
        OutputLease(out).acquire()
    time.sleep(0.7)  # no heartbeat thread: the lease goes stale
    new = OutputLease(out).acquire()
    assert new.gen == old.gen + 1
    assert not old.renew() and old.lost  # the stalled holder stops instead of writing on


def test_a_dead_drivers_lease_on_this_host_is_free_at_once(tmp_path):
    """A driver killed with -9 leaves a fresh lease; on its host a dead pid frees it (the kill -9 resume)."""
    out = str(tmp_path / "out")
    code = (f"from tierwise.pipelines.data.lease import OutputLease; OutputLease({out!r}, ttl_s=3600).acquire(); "
            "import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    held = json.loads((tmp_path / "out" / LEASE_DIR / "00000001.json").read_text())
    assert not held["released"] and held["ttl_s"] == 3600
    assert OutputLease(out).acquire().gen == 2

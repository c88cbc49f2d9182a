"""How many parts a replica holds (the pure rule; the pool's runs are in tests/jobs)."""

from ray_cluster.pool import takes_part


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


def test_fixed_parts_per_replica_overrides_the_rows_rule():
    assert takes_part([256], 384, parts_per_replica=2)
    assert not takes_part([256, 256], 384, parts_per_replica=2)
    assert not takes_part([5], 10_000, parts_per_replica=1)

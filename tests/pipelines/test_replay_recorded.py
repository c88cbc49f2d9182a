"""Replay on samples recorded from the shipped model (bench/data/demo_samples.parquet:
2,000 held-out demo queries x 32 samples at temperature 0.7, by `tierwise sample`)."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.replay.run import replay
from tierwise.pipelines.replay.table import build_table, load_samples

RECORDED = Path(__file__).resolve().parents[2] / "bench" / "data" / "demo_samples.parquet"


@pytest.fixture(scope="module")
def table():
    return build_table(load_samples(str(RECORDED)))


def test_recorded_set_has_the_promised_shape_and_regimes():
    df = load_samples(str(RECORDED))
    per_query = df.group_by("query_id").agg(pl.len().alias("k"), pl.col("correct").mean().alias("p"))
    assert per_query.height >= 2000 and (per_query["k"] >= 32).all()
    p = per_query["p"].to_numpy()
    assert (p >= 0.95).mean() >= 0.4      # easy rows
    assert (p <= 0.05).mean() >= 0.1      # hopeless rows
    assert ((p > 0.05) & (p < 0.95)).mean() >= 0.1  # rows with headroom


@pytest.mark.parametrize("objective", ["accuracy", "coverage"])
def test_adaptive_beats_uniform_at_equal_budget_on_real_samples(table, objective):
    n_queries = table.shape[0]
    for per_query in (2, 4):
        budget = per_query * n_queries
        uni = replay(table, budget, "samples", objective, "uniform", seed=0)
        ada = replay(table, budget, "samples", objective, "adaptive", seed=0)
        assert ada.spent <= budget and uni.spent <= budget
        assert ada.score >= uni.score - 0.005, (per_query, ada.score, uni.score)


def test_adaptive_never_peeks_on_real_samples(table):
    df = load_samples(str(RECORDED))
    base = replay(df, 4 * table.shape[0], "samples", "accuracy", "adaptive", seed=0)
    calib = set(base.decisions.filter(pl.col("calibration"))["query_id"].to_list())
    rng = np.random.default_rng(0)
    shuffled = df.with_columns(
        pl.when(pl.col("query_id").is_in(list(calib))).then(pl.col("correct"))
        .otherwise(pl.Series(rng.permutation(df["correct"].to_numpy()))).alias("correct"))
    again = replay(shuffled, 4 * table.shape[0], "samples", "accuracy", "adaptive", seed=0)
    assert base.decisions.select("query_id", "n_drawn", "selected").equals(
        again.decisions.select("query_id", "n_drawn", "selected"))

"""Calibration: the split hash, bucketing, concave curve fits and knees, the difficulty model, plots."""

import json

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.plan.calibration import (
    BucketCalibration,
    assign_buckets,
    fit_curve,
    fit_difficulty_model,
    plot_curves,
    quantile_edges,
    stable_hash01,
)


def test_stable_hash_is_deterministic_seeded_and_uniform():
    ids = pl.Series([f"q{i}" for i in range(20_000)])
    h = stable_hash01(ids, seed=3)
    assert ((h >= 0) & (h < 1)).all()
    np.testing.assert_array_equal(h, stable_hash01(list(ids), seed=3))
    assert not np.array_equal(h, stable_hash01(ids, seed=4))
    assert abs(h.mean() - 0.5) < 0.01 and len(np.unique(h)) == len(h)
    assert stable_hash01(["ab"], 0)[0] != stable_hash01(["ba"], 0)[0]  # order of bytes matters
    assert stable_hash01([""], 0)[0] != stable_hash01(["\x00"], 0)[0]
    # Pinned value: the split must not move across processes or library versions.
    assert stable_hash01(["q0", "tierwise"], 0).tolist() == [0.7035589519006021, 0.7589307268106917]
    with pytest.raises(ValueError):
        stable_hash01(pl.Series(["a", None]))


def test_hash_below_a_fraction_picks_that_share_of_ids():
    ids = [f"id-{i}" for i in range(10_000)]
    h = stable_hash01(ids, seed=1)
    assert 0.18 < (h < 0.2).mean() < 0.22
    assert not (h < 0.0).any() and (h < 1.0).all()


def bucketize(v, k):
    v = np.asarray(v, dtype=np.float64)
    return assign_buckets(v, quantile_edges(v, k))


def test_quantile_buckets_and_ties():
    assert bucketize(np.arange(10.0), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert bucketize(np.ones(7), 4).tolist() == [0] * 7  # constant input: one bucket
    ids = bucketize(np.array([0, 0, 0, 0, 0, 0, 1.0, 2.0]), 4)  # ties share a bucket, no empty ids
    assert sorted(set(ids.tolist())) == list(range(len(set(ids.tolist()))))
    assert (ids[:6] == ids[0]).all() and ids[7] >= ids[6] > ids[0]
    assert bucketize(np.array([3.0, 1.0, np.nan, 2.0]), 2).tolist()[2] in (0, 1)  # NaNs land somewhere
    assert bucketize(np.array([]), 3).tolist() == []


def test_edges_apply_to_new_values_and_every_bucket_is_non_empty():
    rng = np.random.default_rng(0)
    ref = np.round(rng.exponential(size=500), 1)  # many ties
    edges = quantile_edges(ref, 6)
    counts = np.bincount(assign_buckets(ref, edges), minlength=len(edges) + 1)
    assert (counts > 0).all()
    assert assign_buckets(np.array([-1.0, 1e9]), edges).tolist() == [0, len(edges)]


def test_fit_curve_is_a_concave_majorant_with_downturn():
    x = np.array([0, 1, 2, 4, 8, 16, 32.0])
    y = np.array([0.2, 0.5, 0.62, 0.7, 0.74, 0.75, 0.71])  # saturates, then overthinking
    cv = fit_curve(x, y)
    hx, hy = cv.compute[cv.hull], cv.score[cv.hull]
    slopes = np.diff(hy) / np.diff(hx)
    assert (np.diff(slopes) <= 1e-12).all()  # concave
    assert (cv.value_at(x) >= y - 1e-12).all()  # majorant
    assert cv.peak == 5 and hy[-1] < hy.max()  # the downturn past the peak is kept
    assert cv.knee(price=0.05) == 2  # slope into x=2 is 0.12; into x=4 is 0.04
    assert cv.knee(fraction=0.1) == 3  # 10% of the first slope 0.3 = 0.03
    assert cv.knee(price=0.0) == 5  # any positive gain: go to the peak, never past it
    json.dumps(cv.to_dict())


def test_fit_curve_single_point_and_errors():
    cv = fit_curve([1.0], [0.3])
    assert cv.knee() == 0 and cv.peak == 0
    with pytest.raises(ValueError):
        fit_curve([], [])


def test_difficulty_model_learns_unknown_scale_and_handles_gaps():
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 3000)
    hint = 40 - 30 * p + rng.normal(0, 3, p.size)  # higher = harder, arbitrary scale
    const = np.full(p.size, 7.0)
    noise = rng.normal(size=p.size)
    noise[::10] = np.nan
    feats = np.column_stack([hint, const, noise])
    success = rng.binomial(4, p) / 4
    model = fit_difficulty_model(feats, success, ["hint", "const", "noise"])
    pred = model.predict(feats)
    assert np.corrcoef(pred, p)[0, 1] > 0.9
    assert np.isfinite(pred).all()
    json.dumps(model.to_dict())
    empty = fit_difficulty_model(np.zeros((0, 2)), np.zeros(0), ["a", "b"])
    assert empty.predict(np.ones((3, 2))).tolist() == [0.5] * 3


def test_plot_curves_writes_png(tmp_path):
    cv = fit_curve(np.array([0, 1, 2.0]), np.array([0.1, 0.5, 0.6]), ["skip", "a", "b"])
    path = tmp_path / "curves.png"
    plot_curves([BucketCalibration(0, 10, 100, cv, {"a": 60, "b": 40})], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(BucketCalibration(0, 10, 100, cv, {"a": 60}).to_dict())

"""Calibration: which rows calibrate, how difficulty maps to buckets, and each bucket's score curve.

A calibration run spends part of the budget on a seeded subset of rows where gold answers may be used.
From it we learn (1) how cheap difficulty signals map to success (``fit_difficulty_model``), (2) bucket
edges by quantiles of that difficulty (``quantile_edges``), and (3) per bucket, score vs compute
(``fit_curve``): the least concave majorant of the measured points, which rises, saturates and may
turn down past its peak ("overthinking"); its knee is where marginal score per unit of compute falls
below a price. The allocator (``tierwise.pipelines.plan.allocation``) then spends the budget across buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from tierwise.pipelines.plan.allocation import upper_concave_hull

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stable_hash01(strings: pl.Series | Sequence[str], seed: int = 0) -> np.ndarray:
    """Seeded hash of each string to [0, 1), stable across processes, platforms and library versions.

    A polynomial hash of the UTF-8 bytes (mod 2^64) finished with splitmix64, computed columnar over the
    Arrow buffers (no Python loop over rows).

    Args:
        strings: Non-null strings (e.g. query ids).
        seed: Any integer; different seeds give independent hashes.

    Returns:
        float64 array in [0, 1), one per string.
    """
    series = strings.cast(pl.String) if isinstance(strings, pl.Series) else pl.Series(list(strings), dtype=pl.String)
    arr = series.rechunk().to_arrow()
    arr = (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.large_string())
    if arr.null_count:
        raise ValueError("stable_hash01: strings must not be null")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if n else np.zeros(0, np.uint8)
    starts = offsets[:-1] - offsets[0]
    lengths = np.diff(offsets)
    h = np.zeros(n, dtype=np.uint64)
    if data.size:
        pos = np.arange(data.size, dtype=np.int64) - np.repeat(starts, lengths)
        powers = np.cumprod(np.full(int(lengths.max()), 0x100000001B3, dtype=np.uint64), dtype=np.uint64)
        contrib = (data.astype(np.uint64) + np.uint64(1)) * powers[pos]
        nonempty = lengths > 0
        h[nonempty] = np.add.reduceat(contrib, starts[nonempty])
    seed_mix = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    h = _splitmix64(h ^ seed_mix ^ (lengths.astype(np.uint64) * np.uint64(0x2545F4914F6CDD1D)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def quantile_edges(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """Inner bucket edges at quantiles of ``values``, merged where ties make buckets empty.

    Every bucket is non-empty on ``values`` itself; constant input gives one bucket (no edges).
    NaNs are ignored.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if n_buckets <= 1 or v.size == 0:
        return np.zeros(0)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_buckets + 1)[1:-1], method="lower"))
    return edges[edges < v.max()]  # each edge is a data value, so (e_i-1, e_i] holds at least e_i


def assign_buckets(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket id per value: the number of edges strictly below it (NaN goes to the middle bucket)."""
    v = np.asarray(values, dtype=np.float64)
    ids = np.searchsorted(edges, v, side="left").astype(np.int32)
    return np.where(np.isnan(v), len(edges) // 2, ids).astype(np.int32)


@dataclass
class CurveFit:
    """Score vs compute for one bucket, and its least concave majorant.

    Attributes:
        compute: [n] measured compute per row (budget units: samples or tokens).
        score: [n] measured mean score per row at that compute.
        hull: Indices of the majorant's vertices, by increasing compute (rises, then may fall).
        labels: Optional name per point (e.g. the option that produced it).
    """

    compute: np.ndarray
    score: np.ndarray
    hull: np.ndarray
    labels: list[str] | None = None

    @property
    def peak(self) -> int:
        """Index (into the points) of the cheapest hull vertex with the best score."""
        return int(self.hull[int(np.argmax(self.score[self.hull]))])

    def value_at(self, compute: np.ndarray | float) -> np.ndarray:
        """The majorant's score at ``compute`` (flat outside the measured range)."""
        return np.interp(compute, self.compute[self.hull], self.score[self.hull])

    def knee(self, price: float | None = None, fraction: float = 0.1) -> int:
        """Index of the point where marginal score per unit compute falls below ``price``.

        Args:
            price: Score per unit of compute worth paying; None means ``fraction`` x the first slope.
            fraction: Used only without a price.

        Returns:
            Index into the points of the last rising hull vertex whose incoming slope is >= price.
        """
        rising = self.hull[: int(np.argmax(self.score[self.hull])) + 1]
        if len(rising) < 2:
            return int(rising[0])
        slopes = np.diff(self.score[rising]) / np.diff(self.compute[rising])
        bar = fraction * slopes[0] if price is None else price
        below = np.nonzero(slopes < bar)[0]
        return int(rising[below[0]] if below.size else rising[-1])

    def to_dict(self) -> dict:
        return {"compute": self.compute.tolist(), "score": self.score.tolist(), "hull": self.hull.tolist(),
                "labels": self.labels, "peak": self.peak, "knee": self.knee()}


def fit_curve(compute: np.ndarray, score: np.ndarray, labels: list[str] | None = None) -> CurveFit:
    """Fit a concave, saturating curve to measured (compute, score) points of one bucket.

    The fit is the least concave majorant (upper concave hull). It is concave by construction, keeps
    the measured points that matter for allocation as its vertices (so each maps back to a runnable
    option), and allows a downturn past the peak. It is optimistic by at most the noise of the points.
    """
    c, s = np.asarray(compute, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if c.shape != s.shape or c.size == 0:
        raise ValueError("fit_curve needs equally long, non-empty compute and score arrays")
    return CurveFit(c, s, upper_concave_hull(c, s), labels)


@dataclass
class BucketCalibration:
    """What calibration learned about one bucket, and what the allocator chose for it."""

    bucket_id: int
    n_calibration_rows: int
    n_rows: int
    curve: CurveFit
    chosen: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"bucket_id": self.bucket_id, "n_calibration_rows": self.n_calibration_rows,
                "n_rows": self.n_rows, "curve": self.curve.to_dict(), "chosen": self.chosen}


def plot_curves(buckets: list[BucketCalibration], path: str, x_label: str = "compute per row",
                title: str = "score vs compute per bucket", marked: tuple[str, ...] = ()) -> None:
    """Write a PNG: measured points, the fitted majorant and the chosen operating points per bucket.
    Points labelled with one of ``marked`` (the adaptive ladder's rungs) are drawn as labelled diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in buckets:
        cv = b.curve
        line = ax.plot(cv.compute[cv.hull], cv.score[cv.hull], label=f"bucket {b.bucket_id} (n={b.n_rows})")[0]
        ax.scatter(cv.compute, cv.score, s=6, alpha=0.3, color=line.get_color())
        names = cv.labels or []
        for i, name in enumerate(names):
            if name in marked:
                ax.scatter([cv.compute[i]], [cv.score[i]], s=30, marker="D", color=line.get_color(), zorder=3)
                ax.annotate(name, (cv.compute[i], cv.score[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        for name, rows in b.chosen.items():
            if rows and name in names:
                i = names.index(name)
                ax.scatter([cv.compute[i]], [cv.score[i]], s=60, marker="*", color=line.get_color(), zorder=3)
    ax.set_xlabel(x_label)
    ax.set_ylabel("score per row")
    ax.set_title(title + "  (* = chosen)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class DifficultyModel:
    """Logistic map from cheap difficulty signals to expected success, learned on calibration rows.

    Each feature enters as z and z^2 (z standardized, clipped to +-6), so an unknown or even
    non-monotone scale (e.g. an external ``difficulty_hint``) is learned rather than assumed.
    """

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def _design(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((np.where(np.isnan(x), self.mean, x) - self.mean) / self.scale, -6, 6)
        return np.hstack([z, z * z])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Expected success in (0, 1) per row; ``features`` is [rows, len(names)], NaN = unknown."""
        logit = self._design(np.asarray(features, dtype=np.float64)) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))

    def to_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, m: dict) -> DifficultyModel:
        return cls(list(m["names"]), np.asarray(m["mean"], dtype=np.float64), np.asarray(m["scale"], dtype=np.float64),
                   np.asarray(m["coef"], dtype=np.float64), float(m["intercept"]))


def fit_difficulty_model(features: np.ndarray, success: np.ndarray, names: list[str],
                         l2: float = 1e-2, iterations: int = 30, weights: np.ndarray | None = None) -> DifficultyModel:
    """Fit ``DifficultyModel`` by Newton's method on the (fractional) logistic log-likelihood.

    Args:
        features: [rows, k] signals per calibration row; NaN means unknown.
        success: [rows] target in [0, 1], e.g. the fraction of a row's samples that are correct.
        names: k feature names.
        weights: [rows] weight of each row's term, e.g. its sample count: with ``success`` the share of
            correct samples that is the binomial likelihood, which stays the likelihood when a row's
            sampling stopped on what it saw (a verified sample), where the share alone is biased.
            Normalized to mean 1, so equal weights fit as None does.
        l2: Ridge penalty on the coefficients (per row), keeps collinear or constant features finite.
        iterations: Newton steps (converges in well under 30 on this problem size).
    """
    x = np.asarray(features, dtype=np.float64)
    mean = np.nan_to_num(np.nanmean(x, axis=0)) if len(x) else np.zeros(x.shape[1])
    scale = np.nan_to_num(np.nanstd(x, axis=0)) if len(x) else np.ones(x.shape[1])
    scale = np.where(scale > 1e-12, scale, 1.0)
    model = DifficultyModel(list(names), mean, scale, np.zeros(2 * x.shape[1]), 0.0)
    if len(x) == 0:
        return model
    design = np.hstack([model._design(x), np.ones((len(x), 1))])
    y = np.clip(np.asarray(success, dtype=np.float64), 0.0, 1.0)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.mean() if w.sum() > 0 else np.ones(len(x))
    beta = np.zeros(design.shape[1])
    ridge = l2 * len(x) * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -30, 30)))
        grad = design.T @ (w * (p - y)) + ridge @ beta
        hess = (design * (w * p * (1 - p) + 1e-9)[:, None]).T @ design + ridge
        step = np.linalg.solve(hess, grad)
        beta -= step
        if math.isfinite(step.max()) and np.abs(step).max() < 1e-8:
            break
    model.coef, model.intercept = beta[:-1], float(beta[-1])
    return model

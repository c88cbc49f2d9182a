"""Early stopping for self-consistency, vectorized over many rows.

Two published rules:

* Adaptive-Consistency (arXiv 2305.11860): after each sample, put a uniform prior on the share of the
  two most frequent answers and stop once P(leading answer is the mode) >= threshold (0.95 in the
  paper). Only the top two vote counts enter, as in the paper's Beta criterion; with v1 >= v2 votes,
  P = P(X > 1/2) for X ~ Beta(v1 + 1, v2 + 1) = P(Binomial(v1 + v2 + 1, 1/2) <= v1), which is exact and
  cheap from a small binomial table (normal approximation past 512 votes).
* ESC (arXiv 2401.10480): sample in windows of w; stop at the end of the first window whose samples
  all give the same (parseable) answer.

Arrays are shaped [rows, samples] in generation order. Answers are integer codes with a separate
``valid`` mask (False for unparseable answers and for samples that do not exist).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_EXACT_MAX_N = 512
_CHUNK_ROWS = 65_536


@functools.cache
def _half_binomial_cdf() -> np.ndarray:
    """Table T[n, k] = P(Binomial(n, 1/2) <= k) for 0 <= k <= n <= 512."""
    n = np.arange(_EXACT_MAX_N + 1)
    logfact = np.concatenate([[0.0], np.cumsum(np.log(n[1:]))])
    k = n[None, :]
    nn = n[:, None]
    logpmf = logfact[nn] - logfact[k] - logfact[np.clip(nn - k, 0, None)] - nn * math.log(2.0)
    pmf = np.where(k <= nn, np.exp(logpmf), 0.0)
    return np.minimum(np.cumsum(pmf, axis=1), 1.0)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7); numpy has no erf and scipy is not a dependency.
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def mode_probability(top: np.ndarray, second: np.ndarray) -> np.ndarray:
    """P(the leading answer is the mode), from the two largest vote counts of each row.

    Args:
        top: Vote count of the leading answer per row (any integer shape).
        second: Vote count of the runner-up per row (0 when there is none), same shape.

    Returns:
        float64 array of probabilities in [0.5, 1], same shape; 0.0 where ``top`` is 0 (no vote yet).
    """
    top = np.asarray(top, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    n = top + second + 1
    table = _half_binomial_cdf()
    small = n <= _EXACT_MAX_N
    out = np.empty(np.broadcast(top, second).shape, dtype=np.float64)
    out[small] = table[n[small], top[small]]
    if not small.all():
        big = ~small
        z = (top[big] + 0.5 - n[big] / 2.0) / np.sqrt(n[big] / 4.0)
        out[big] = _normal_cdf(z)
    return np.where(top > 0, out, 0.0)


@dataclass
class PrefixVotes:
    """Vote state after each prefix of samples, for many rows.

    Column k describes the first k + 1 samples of each row.

    Attributes:
        leader: [rows, samples] int16, index of the first sample carrying the selected answer (weighted
            vote when weights are given; ties go to the answer seen first), -1 when no valid answer yet.
        top: [rows, samples] int16, unweighted count of the most frequent answer.
        second: [rows, samples] int16, unweighted count of the runner-up answer.
    """

    leader: np.ndarray
    top: np.ndarray
    second: np.ndarray

    def mode_probability(self) -> np.ndarray:
        """[rows, samples] float32 Adaptive-Consistency stop signal after each prefix."""
        return mode_probability(self.top, self.second).astype(np.float32)


def prefix_votes(codes: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None) -> PrefixVotes:
    """Majority (or weighted) vote after every prefix of each row's samples.

    Cost is O(rows x samples^2) elementwise work, done in row chunks to bound memory.

    Args:
        codes: [rows, samples] integer answer codes; equal codes mean equal answers within a row.
        valid: [rows, samples] bool, False for unparseable or missing samples (they cast no vote).
        weights: Optional [rows, samples] vote weights (e.g. verifier scores); the leader is then the
            answer with the largest weight sum, while ``top``/``second`` stay counts.

    Returns:
        PrefixVotes for all rows.
    """
    rows, width = codes.shape
    leader = np.empty((rows, width), dtype=np.int16)
    top = np.empty((rows, width), dtype=np.int16)
    second = np.empty((rows, width), dtype=np.int16)
    for lo in range(0, rows, _CHUNK_ROWS):
        hi = min(rows, lo + _CHUNK_ROWS)
        c, v = codes[lo:hi], valid[lo:hi]
        w = None if weights is None else weights[lo:hi].astype(np.float32)
        count = np.zeros(c.shape, dtype=np.int16)
        wsum = None if w is None else np.zeros(c.shape, dtype=np.float32)
        ar = np.arange(hi - lo)
        for k in range(width):
            same = (c == c[:, k : k + 1]) & v & v[:, k : k + 1]
            count += same
            if wsum is not None:
                wsum += same * w[:, k : k + 1]
            seen = count[:, : k + 1]
            i_top = seen.argmax(axis=1)  # first index among ties: answer seen first wins
            n_top = seen[ar, i_top]
            other = c[:, : k + 1] != c[ar, i_top][:, None]
            second[lo:hi, k] = np.where(other, seen, 0).max(axis=1)
            top[lo:hi, k] = n_top
            if wsum is not None:
                ws = np.where(v[:, : k + 1], wsum[:, : k + 1], -np.inf)
                i_top = ws.argmax(axis=1)
            leader[lo:hi, k] = np.where(n_top > 0, i_top, -1)
    return PrefixVotes(leader=leader, top=top, second=second)


def first_stop(signal: np.ndarray, threshold: float, min_samples: int, n_available: np.ndarray) -> np.ndarray:
    """Number of samples drawn per row under "stop once signal >= threshold".

    Args:
        signal: [rows, samples] stop signal after each prefix (e.g. ``PrefixVotes.mode_probability``).
        threshold: Stop at the first prefix whose signal reaches this; ``inf`` never stops early.
        min_samples: Never stop before this many samples.
        n_available: [rows] number of samples that exist per row (the row stops there regardless).

    Returns:
        [rows] int16 samples drawn, in [min(min_samples, n_available), n_available].
    """
    rows, width = signal.shape
    hit = signal >= threshold
    hit[:, : max(0, min_samples - 1)] = False
    hit &= np.arange(width)[None, :] < n_available[:, None]
    first = hit.argmax(axis=1) + 1
    return np.where(hit.any(axis=1), first, n_available).astype(np.int16)


def esc_stop(codes: np.ndarray, valid: np.ndarray, window: int, n_available: np.ndarray) -> np.ndarray:
    """ESC: samples drawn per row when stopping after the first unanimous window.

    Args:
        codes: [rows, samples] integer answer codes.
        valid: [rows, samples] bool, False for unparseable or missing samples.
        window: Window size w >= 1; a window is unanimous when all w answers are valid and equal.
        n_available: [rows] samples that exist per row.

    Returns:
        [rows] int16 samples drawn: the end of the first unanimous window, else ``n_available``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, width = codes.shape
    n_win = width // window
    if n_win == 0:
        return n_available.astype(np.int16)
    c = codes[:, : n_win * window].reshape(rows, n_win, window)
    v = valid[:, : n_win * window].reshape(rows, n_win, window)
    unanimous = ((c == c[:, :, :1]) & v).all(axis=2)
    first = (unanimous.argmax(axis=1) + 1) * window
    return np.where(unanimous.any(axis=1), np.minimum(first, n_available), n_available).astype(np.int16)


# The feature a row's first pass sets from its structured choice's label distribution (``label_probs``):
# the top label's probability at the first generated token (``tierwise.ray_cluster.rows``).
LABEL_TOP_PROB = "label_top_prob"


def label_confident(top_prob: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose first pass needs no second sample: the top label's probability (``LABEL_TOP_PROB``,
    NaN where the row has no label distribution) reaches ``threshold``.

    Args:
        top_prob: [rows] top label probability of each row's first pass.
        threshold: in (0, 1]; a row stops when its top label's probability is at least this.

    Returns:
        [rows] bool, False for NaN.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"label confidence threshold must be in (0, 1], got {threshold}")
    top = np.asarray(top_prob, dtype=np.float64)
    return np.nan_to_num(top, nan=-1.0) >= threshold

"""How a row scatters its answers, without labels: a Pitman-Yor answer urn, for coverage without a checker.

A row's samples are draws from an urn of answers. After ``n`` samples showing ``d`` distinct answers,
the next one is new with chance ``(theta + sigma * d) / (n + theta)`` (0 when negative). The grid
``URN`` holds three families: ``sigma < 0`` is a finite urn of ``K = theta / -sigma`` answers (a
symmetric Dirichlet of weight ``-sigma`` each: once all K showed, nothing new comes), ``sigma = 0`` the
Chinese-restaurant process (new answers forever at a rate falling as 1 / n), ``sigma > 0`` a heavy tail
(new answers keep coming at a rate falling slower). A prior over the grid is fitted by EM from rows'
novelty sequences (which samples gave a new answer), so a table whose rows have few distinct answers
teaches the urn to stop expecting new ones, and one with a long tail of wrong answers teaches it not to.

Arrays are [rows, samples] in generation order; invalid samples count as one answer of their own.
"""

from __future__ import annotations

import numpy as np


def _grid() -> tuple[np.ndarray, np.ndarray]:
    finite_k = np.array([1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32], dtype=np.float64)
    finite_a = np.geomspace(0.05, 5.0, 7)
    k, a = np.meshgrid(finite_k, finite_a, indexing="ij")
    crp = np.geomspace(0.02, 50.0, 15)
    py_sigma = np.repeat([0.25, 0.5], 5)
    py_theta = np.tile(np.geomspace(0.05, 5.0, 5), 2)
    theta = np.concatenate([(k * a).ravel(), crp, py_theta])
    sigma = np.concatenate([-a.ravel(), np.zeros(len(crp)), py_sigma])
    return theta, sigma


URN_THETA, URN_SIGMA = _grid()  # the urns the answer prior puts mass on (one column each)
URN_SIZE = len(URN_THETA)


def new_chance(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """[rows, URN_SIZE] chance that the next sample is a new answer after ``n`` samples with ``d``
    distinct answers ([rows] each), under each urn of the grid."""
    n, d = np.asarray(n, np.float64)[:, None], np.asarray(d, np.float64)[:, None]
    return np.clip((URN_THETA + URN_SIGMA * d) / (n + URN_THETA), 0.0, 1.0)


def novelty(codes: np.ndarray, valid: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """[rows, samples] True where a drawn sample (position >= 1) gives an answer the row had not given yet."""
    c = np.where(valid, codes, np.int64(-(2 ** 62)))
    width = c.shape[1]
    seen = (c[:, :, None] == c[:, None, :]) & (np.arange(width)[None, :] < np.arange(width)[:, None])[None]
    return ~seen.any(axis=2) & (np.arange(width)[None, :] < drawn[:, None]) & (np.arange(width)[None, :] >= 1)


def _log_steps(new_j: np.ndarray, j: int, d: np.ndarray) -> np.ndarray:
    """[rows, URN_SIZE] log-chance of sample j being new (or not) after j samples with d distinct."""
    p = new_chance(np.full(len(d), j), d)
    return np.log(np.maximum(np.where(new_j[:, None], p, 1.0 - p), 1e-300))


def loglik(new: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """[rows, URN_SIZE] log-likelihood of each row's novelty sequence (its first ``drawn`` samples)
    under each urn (a stopping rule that reads only the row's own samples leaves it unchanged)."""
    rows, width = new.shape
    ll = np.zeros((rows, URN_SIZE))
    d = np.ones(rows)
    for j in range(1, width):
        live = j < drawn
        if not live.any():
            break
        ll += np.where(live[:, None], _log_steps(new[:, j], j, d), 0.0)
        d += new[:, j]
    return ll


def fit_prior(new: np.ndarray, drawn: np.ndarray, iters: int = 60) -> np.ndarray:
    """[URN_SIZE] a histogram over the urns, by EM from rows' novelty sequences (no gold read)."""
    ll = loglik(new, drawn)
    return mixture_weights(np.exp(ll - ll.max(axis=1, keepdims=True)), np.full(URN_SIZE, 1.0 / URN_SIZE), iters)


def mixture_weights(lik: np.ndarray, start: np.ndarray, iters: int = 60) -> np.ndarray:
    """[components] the weights of a mixture over fixed components, by EM from each row's likelihood
    under each component ([rows, components]); a little of ``start`` keeps every component possible."""
    w = start.copy()
    for _ in range(iters):
        post = lik * w
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
        w = post.mean(axis=0) * 0.98 + 0.02 * start
    return w / w.sum()


def next_new(new: np.ndarray, prior: np.ndarray, right: bool = False) -> np.ndarray:
    """[rows, samples] posterior chance that sample k + 2 is a new answer after the first k + 1
    (column k), each row's urn weighed by ``prior`` and its own novelty so far.

    ``right``: instead, the posterior chance that it is a new answer and the right one, when the right
    answer is drawn from the row's urn by its weight (an answer the model gives more often is more
    likely right): under a Pitman-Yor urn, the new chance times ``(1 - sigma) / (n + theta + 1)``."""
    rows, width = new.shape
    ll = np.broadcast_to(np.log(np.maximum(prior, 1e-300)), (rows, URN_SIZE)).copy()
    d = np.ones(rows)
    out = np.zeros((rows, width))
    for k in range(width):
        if k >= 1:
            ll += _log_steps(new[:, k], k, d)
            d += new[:, k]
        post = np.exp(ll - ll.max(axis=1, keepdims=True))
        p = new_chance(np.full(rows, k + 1), d)
        if right:
            p = p * (1.0 - URN_SIGMA) / (k + 2.0 + URN_THETA)
        out[:, k] = (post * p).sum(axis=1) / post.sum(axis=1)
    return out


def uncovered(codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[rows, samples] chance, after the first k + 1 samples (column k), that none of the row's parsed
    answers so far is the right one: the product over them of ``1 - count / (k + 2)`` (an answer is right
    about as often as it is drawn, with a Laplace share left for an answer not seen)."""
    rows, width = codes.shape
    first = novelty(codes, valid, np.full(rows, width))
    first[:, 0] = True
    first &= valid
    ar = np.arange(width)[None, :]
    counts = np.zeros((rows, width))
    out = np.ones((rows, width))
    for k in range(width):
        counts += (codes == codes[:, k:k + 1]) & valid[:, k:k + 1] & (ar <= k)
        terms = np.where(first & (ar <= k), np.log(np.maximum(1.0 - counts / (k + 2.0), 1e-300)), 0.0)
        out[:, k] = np.exp(terms.sum(axis=1))
    return out


def continue_rows(codes: np.ndarray, valid: np.ndarray, cost: np.ndarray, drawn: np.ndarray, prior: np.ndarray,
                  rng: np.random.Generator, score: np.ndarray | None = None) -> tuple:
    """Rows' samples past ``drawn``, to the arrays' width, drawn from the urn: each row's urn from its
    posterior under ``prior``; a new answer with the urn's chance (costing the row's mean), else an old
    one by the urn's weights (a copy of one of the row's samples, or, in a finite urn, of one of its
    distinct answers). ``score`` (verifier scores or None) goes with the copied sample (NaN for a new
    answer). Returns (codes, valid, cost, score), the drawn samples kept."""
    m, width = codes.shape
    codes, valid, cost = codes.astype(np.int64).copy(), valid.copy(), cost.copy()
    score = None if score is None else score.copy()
    new = novelty(codes, valid, drawn)
    post = np.exp(loglik(new, drawn) + np.log(np.maximum(prior, 1e-300)))
    post /= post.sum(axis=1, keepdims=True)
    pick = np.minimum((np.cumsum(post, axis=1) < rng.random((m, 1))).sum(axis=1), URN_SIZE - 1)
    theta, sigma = URN_THETA[pick], URN_SIGMA[pick]
    first = new.copy()
    first[:, 0] = drawn > 0
    d = first.sum(axis=1).astype(np.float64)
    ar = np.arange(m)
    mean_cost = np.where(np.arange(width)[None, :] < drawn[:, None], cost, 0.0).sum(axis=1) / np.maximum(drawn, 1)
    for j in range(1, width):
        sim = drawn <= j
        if not sim.any():
            continue
        is_new = rng.random(m) < np.clip((theta + sigma * d) / (j + theta), 0.0, 1.0)
        any_sample = np.minimum((rng.random(m) * j).astype(np.int64), j - 1)
        any_answer = np.argmax(rng.random((m, j)) * first[:, :j], axis=1)
        by_answer = rng.random(m) * (j + np.maximum(-sigma, 0.0) * d) >= j
        src = np.where(by_answer, any_answer, any_sample)
        codes[:, j] = np.where(sim, np.where(is_new, np.int64(2 ** 40) + j, codes[ar, src]), codes[:, j])
        valid[:, j] = np.where(sim, is_new | valid[ar, src], valid[:, j])
        cost[:, j] = np.where(sim, np.where(is_new, mean_cost, cost[ar, src]), cost[:, j])
        if score is not None:
            score[:, j] = np.where(sim, np.where(is_new, np.nan, score[ar, src]), score[:, j])
        first[:, j] = np.where(sim, is_new, first[:, j])
        d += sim & is_new
    return codes, valid, cost, score

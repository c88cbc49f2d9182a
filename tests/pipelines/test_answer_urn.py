import numpy as np

from tierwise.pipelines.plan import answer_urn as urn


def _rows(pattern: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(pattern, dtype=np.int64)
    return codes, np.ones(codes.shape, dtype=bool)


def test_new_chance_finite_urn_stops_once_all_answers_showed():
    p = urn.new_chance(np.array([5, 5]), np.array([1, 40]))
    finite = urn.URN_SIGMA < 0
    k = urn.URN_THETA[finite] / -urn.URN_SIGMA[finite]
    assert np.all(p[1, finite][k <= 32] == 0.0)  # 40 distinct: every finite urn of K <= 32 is spent
    assert np.all((p >= 0) & (p <= 1))


def test_prior_from_three_answer_rows_expects_no_fourth():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(300, 24))
    valid = np.ones(codes.shape, dtype=bool)
    drawn = np.full(300, 24)
    prior = urn.fit_prior(urn.novelty(codes, valid, drawn), drawn)
    nxt = urn.next_new(urn.novelty(codes, valid, drawn), prior)
    assert nxt[:, -1].mean() < 0.02  # 24 samples of 3 answers: a fourth is unlikely
    assert nxt[:, 0].mean() > 0.3  # after one sample, a second answer is likely


def test_prior_from_always_new_rows_keeps_expecting_new():
    codes = np.tile(np.arange(16), (100, 1)) + 100 * np.arange(100)[:, None]
    valid = np.ones(codes.shape, dtype=bool)
    drawn = np.full(100, 16)
    prior = urn.fit_prior(urn.novelty(codes, valid, drawn), drawn)
    assert urn.next_new(urn.novelty(codes, valid, drawn), prior)[:, -1].mean() > 0.5


def test_uncovered_falls_with_agreement():
    codes, valid = _rows([[1, 1, 1, 1], [1, 2, 3, 4]])
    u = urn.uncovered(codes, valid)
    assert np.allclose(u[0], [1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert np.all(u[1, 1:] > u[0, 1:])
    valid[1, 1:] = False  # unparsed samples are never right: they leave the row uncovered
    assert urn.uncovered(codes, valid)[1, -1] > u[0, -1]


def test_continue_rows_keeps_drawn_samples_and_their_mean_cost():
    codes, valid = _rows([[1, 2, 9, 9, 9, 9]])
    cost = np.array([[1.0, 3.0, 100.0, 100.0, 100.0, 100.0]])  # recorded, not drawn: not the row's cost
    prior = np.full(urn.URN_SIZE, 1.0 / urn.URN_SIZE)
    c, v, k, s = urn.continue_rows(codes, valid, cost, np.array([2]), prior, np.random.default_rng(0),
                                   np.array([[0.5, 1.0, 0, 0, 0, 0]]))
    assert list(c[0, :2]) == [1, 2] and v.all()
    assert np.all(k[0, 2:] <= 3.0) and np.all(k[0, 2:] >= 1.0)
    assert np.all(np.isnan(s[0, 2:]) | np.isin(s[0, 2:], [0.5, 1.0]))

"""The per-run preference model (dreamdpo/judges/learned.py): its fit, its update and its exact resume."""
import numpy as np
import pytest
import torch

from dreamdpo.judges.learned import Example, PreferenceModel, target


def planted(n: int, dim: int = 8, seed: int = 0):
    """Pairs judged by a hidden linear taste w* on the features; the base judge's score says nothing."""
    w_star = torch.randn(dim, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        df = torch.randn(dim, generator=g, dtype=torch.float64)
        ds = float(torch.randn(1, generator=g)) * 0.01
        out.append(Example(i, df, ds, 1.0 if float(df @ w_star) > 0 else 0.0))
    return out


def test_fit_equals_sklearn_l2_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    ex = planted(60, dim=5, seed=1)
    for e in ex[::7]:  # a few noisy labels so that the optimum is finite
        e.y = 1.0 - e.y
    m = PreferenceModel(dim=5, beta0=0.0, l2=2.0, l2_beta=2.0)
    m.add(ex)
    X = np.stack([np.concatenate([[e.ds], e.df.numpy() / m.scale.numpy()]) for e in ex])  # w is on standardised features
    y = np.array([e.y for e in ex])
    ref = LogisticRegression(C=1 / 2.0, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X, y)
    assert np.allclose(m.theta.numpy(), ref.coef_[0], atol=1e-6)


def test_no_votes_means_the_base_judge_and_votes_teach_a_taste_it_does_not_have():
    m = PreferenceModel(dim=8, beta0=10.0)
    p, sd = m.predict(torch.zeros(8), 0.3)
    assert p > 0.5 and sd > 0  # before any vote: the base judge's side, unsure
    test = planted(400, seed=9)
    acc = lambda: np.mean([(m.predict(e.df, e.ds)[0] >= 0.5) == (e.y == 1.0) for e in test])  # noqa: E731
    before = acc()
    m.add(planted(30, seed=2))
    after = acc()
    assert before < 0.65 < 0.85 < after, (before, after)
    assert m.agreement() > 0.7  # its leave-one-out estimate sees it too


def test_a_decision_is_never_learned_twice():
    ex = planted(20, seed=3)
    once, twice = PreferenceModel(dim=8), PreferenceModel(dim=8)
    assert once.add(ex) == 20
    assert twice.add(ex[:12]) == 12 and twice.add(ex) == 8 and twice.add(ex) == 0
    assert len(twice.examples) == 20 and torch.allclose(once.theta, twice.theta, atol=1e-10)


def test_the_state_resumes_exactly():
    m = PreferenceModel(dim=8, beta0=3.0)
    m.add(planted(15, seed=4))
    copy = PreferenceModel.from_state_dict(torch.load(_roundtrip(m.state_dict()), weights_only=False))
    assert torch.equal(copy.theta, m.theta) and copy.pair_ids == m.pair_ids
    more = planted(40, seed=5)[15:]
    m.add(more)
    copy.add(more)
    assert torch.equal(copy.theta, m.theta)
    df = torch.ones(8, dtype=torch.float64)
    assert copy.predict(df, 0.1) == m.predict(df, 0.1)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("winner, y", [("a", 1.0), ("b", 0.0), ("tie", 0.5)])
def test_targets(winner, y):
    assert target(winner) == y

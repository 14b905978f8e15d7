"""Each loss formula against numbers worked out by hand (docs/method.md)."""
import pytest
import torch

from dreamdpo import losses
from dreamdpo.errors import UserError
from dreamdpo.losses import DPOConfig, Member


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


# win: eps_cfg=[1, 2], eps_cond=[5, 5] (unused), noise=[0.5, 0.5], w=0.5
# lose: eps_cfg=[3, 1], eps_cond=[2, -1], noise=[1, 1], w=0.5
WIN = Member(eps_cfg=t(1.0, 2.0), eps_cond=t(5.0, 5.0), noise=t(0.5, 0.5), w=0.5)
LOSE = Member(eps_cfg=t(3.0, 1.0), eps_cond=t(2.0, -1.0), noise=t(1.0, 1.0), w=0.5)
PULL = t(0.25, 0.75)  # 0.5·([1,2] − [0.5,0.5])
PUSH_COND = t(0.5, -1.0)  # 0.5·([2,−1] − [1,1])
PUSH_CFG = t(1.0, 0.0)  # 0.5·([3,1] − [1,1])


def test_sds_grad_by_hand():
    g = losses.sds_grad(t(1.0, -2.0, 0.5), t(0.5, 0.5, 0.5), 0.2)
    assert torch.allclose(g, t(0.1, -0.5, 0.0))


@pytest.mark.parametrize(
    "gap, expected",
    [(0.0005, PULL), (0.001, PULL - PUSH_COND), (0.5, PULL - PUSH_COND)],
    ids=["gap<tau pulls only", "gap==tau pushes", "gap>tau pushes"],
)
def test_piecewise_branches(gap, expected):
    g = losses.preference_grad(WIN, LOSE, "a", gap, False, DPOConfig(tau=0.001))
    assert torch.allclose(g, expected)


def test_default_push_uses_conditional_prediction():
    g = losses.preference_grad(WIN, LOSE, "a", 1.0, False, DPOConfig())
    assert torch.allclose(g, t(-0.25, 1.75))  # [0.25, 0.75] − [0.5, −1]


def test_push_uses_cfg_flag():
    g = losses.preference_grad(WIN, LOSE, "a", 1.0, False, DPOConfig(push_uses_cfg=True))
    assert torch.allclose(g, t(-0.75, 0.75))  # [0.25, 0.75] − [1, 0]


def test_pull_only_parity_flag_drops_noise():
    g = losses.preference_grad(WIN, LOSE, "a", 0.0, False, DPOConfig(tau=0.01, pull_subtract_noise=False))
    assert torch.allclose(g, t(0.5, 1.0))  # 0.5·[1, 2], no −ε
    # the flag does not touch the push branch
    g_push = losses.preference_grad(WIN, LOSE, "a", 0.02, False, DPOConfig(tau=0.01, pull_subtract_noise=False))
    assert torch.allclose(g_push, PULL - PUSH_COND)


def test_tau_zero_always_pushes():
    assert torch.allclose(losses.preference_grad(WIN, LOSE, "a", 0.0, False, DPOConfig(tau=0.0)), PULL - PUSH_COND)
    assert torch.allclose(
        losses.preference_grad(WIN, LOSE, "a", 0.0, False, DPOConfig(tau=0.0, rule="smooth")), PULL - PUSH_COND
    )


def test_smooth_rule_mixes_branches():
    cfg = DPOConfig(tau=0.01, rule="smooth")
    # λ = 0.0025/0.01 = 0.25 → pull − 0.25·push
    g = losses.preference_grad(WIN, LOSE, "a", 0.0025, False, cfg)
    assert torch.allclose(g, t(0.25 - 0.125, 0.75 + 0.25))
    assert torch.allclose(losses.preference_grad(WIN, LOSE, "a", 0.0, False, cfg), PULL)
    assert torch.allclose(losses.preference_grad(WIN, LOSE, "a", 0.05, False, cfg), PULL - PUSH_COND)  # clamped at 1


def test_smooth_rule_with_parity_pull_mixes_whole_branches():
    cfg = DPOConfig(tau=0.01, rule="smooth", pull_subtract_noise=False)
    g = losses.preference_grad(WIN, LOSE, "a", 0.005, False, cfg)  # λ = 0.5
    expected = 0.5 * (PULL - PUSH_COND) + 0.5 * t(0.5, 1.0)
    assert torch.allclose(g, expected)


def test_each_member_uses_its_own_weight():
    lose = Member(eps_cfg=LOSE.eps_cfg, eps_cond=LOSE.eps_cond, noise=LOSE.noise, w=0.1)
    g = losses.preference_grad(WIN, lose, "a", 1.0, False, DPOConfig())
    assert torch.allclose(g, PULL - 0.1 * t(1.0, -2.0))


def test_broadcast_weight_over_latents():
    shape = (2, 4, 3, 3)
    w = torch.tensor([0.5, 0.25]).reshape(2, 1, 1, 1)
    win = Member(torch.ones(shape), torch.zeros(shape), torch.zeros(shape), w)
    lose = Member(torch.zeros(shape), torch.ones(shape), torch.zeros(shape), w)
    g = losses.preference_grad(win, lose, "a", 1.0, False, DPOConfig())
    assert g.shape == shape
    assert torch.allclose(g[0], torch.zeros(4, 3, 3))  # 0.5·1 − 0.5·1
    g_pull = losses.preference_grad(win, lose, "a", 0.0, False, DPOConfig())
    assert torch.allclose(g_pull[1], torch.full((4, 3, 3), 0.25))


def test_winner_b_swaps_the_roles():
    assert torch.allclose(losses.preference_grad(LOSE, WIN, "b", 1.0, False, DPOConfig()), PULL - PUSH_COND)


@pytest.mark.parametrize("rule", ["piecewise", "smooth"])
def test_a_tie_pulls_only_even_at_tau_zero(rule):
    """A person's tie has no loser: it must not push, even though gap 0 ≥ τ = 0 (the last landing's bug)."""
    cfg = DPOConfig(tau=0.0, rule=rule)
    assert torch.allclose(losses.preference_grad(WIN, LOSE, "tie", 0.0, False, cfg), PULL)
    assert losses.push_fraction("tie", 0.0, False, cfg) == 0.0


def test_a_skip_moves_nothing():
    g = losses.preference_grad(WIN, LOSE, "a", 1.0, True, DPOConfig(tau=0.0))
    assert torch.equal(g, torch.zeros(2)) and losses.push_fraction("a", 1.0, True, DPOConfig()) == 0.0


@pytest.mark.parametrize("bad", [{"tau": -0.1}, {"tau": float("nan")}, {"rule": "soft"}, {"variant": "both"}])
def test_bad_config_is_one_line_user_error(bad):
    with pytest.raises(UserError) as e:
        DPOConfig(**bad)
    assert "\n" not in str(e.value)


def test_surrogate_loss_value_and_gradient():
    z = t(1.0, 2.0, 3.0, 4.0).reshape(2, 2).requires_grad_()
    grad = t(0.5, -1.0, 2.0, 0.0).reshape(2, 2)
    loss = losses.surrogate_loss(z, grad)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0 + 4.0 + 0.0) / 2)
    loss.backward()
    assert torch.allclose(z.grad, grad / 2)


def test_injected_gradient_reaches_theta_through_linear_encoder():
    torch.manual_seed(0)
    W = torch.randn(6, 4)
    theta = torch.randn(3, 4, requires_grad=True)
    z = theta @ W.T  # z_b = W θ_b, B = 3
    grad = torch.randn(3, 6)
    losses.surrogate_loss(z, grad).backward()
    assert torch.allclose(theta.grad, grad @ W / 3, atol=1e-6)  # Wᵀ·grad / B, per row


def test_sparsity_loss_by_hand():
    o = t(0.0, 1.0)
    assert losses.sparsity_loss(o).item() == pytest.approx((0.1 + (1.01) ** 0.5) / 2)


def test_orientation_weight_ramp():
    assert losses.orientation_weight(0) == 10.0
    assert losses.orientation_weight(2500) == pytest.approx(505.0)
    assert losses.orientation_weight(5000) == 1000.0
    assert losses.orientation_weight(9000) == 1000.0
    assert losses.orientation_weight(50, ramp=(0, 100), weights=(0.0, 1.0)) == pytest.approx(0.5)


def test_t_range_annealing():
    assert losses.t_range(0) == pytest.approx((0.98, 0.98))
    assert losses.t_range(4000) == pytest.approx((0.50, 0.74))
    assert losses.t_range(8000) == pytest.approx((0.02, 0.50))
    assert losses.t_range(20000) == pytest.approx((0.02, 0.50))
    assert losses.t_range(5, t_start=(0.5, 1.0), t_end=(0.0, 0.0), anneal_steps=10) == pytest.approx((0.25, 0.5))


def test_sample_timesteps_bounds_and_reproducibility():
    assert losses.sample_timesteps(0, 1000) == (980, 980)  # the range is one value at the start
    draws = [losses.sample_timesteps(8000, 1000, generator=torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(a == b and 20 <= a <= 500 for a, b in draws)
    assert len({a for a, _ in draws}) > 50
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert losses.sample_timesteps(3000, 1000, generator=g1) == losses.sample_timesteps(3000, 1000, generator=g2)


def test_sample_timesteps_distinct_variant():
    draws = [
        losses.sample_timesteps(8000, 1000, distinct=True, generator=torch.Generator().manual_seed(s))
        for s in range(300)
    ]
    assert all(a != b and 20 <= a <= 500 and 20 <= b <= 500 for a, b in draws)
    assert len({b for _, b in draws}) > 100  # spread over the range, not a fixed offset
    t1, t2 = losses.sample_timesteps(0, 1000, distinct=True)  # one-value range → its neighbour
    assert (t1, t2) == (980, 979)
    # a tiny scheduler never leaves [0, T-1]
    for s in range(50):
        a, b = losses.sample_timesteps(0, 10, t_start=(0.0, 0.1), distinct=True,
                                       generator=torch.Generator().manual_seed(s))
        assert 0 <= a <= 9 and 0 <= b <= 9 and a != b

"""SDS and DreamDPO gradients, the surrogate loss that injects them, regularisers and schedules.

Pure torch functions (docs/method.md). Gradients are injected into the prior's input z: the
U-Net Jacobian is omitted, as in SDS, so every function here works on noise predictions only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamdpo.errors import UserError


def sds_grad(eps_cfg: Tensor, noise: Tensor, w: Tensor | float) -> Tensor:
    """Score distillation (DreamFusion): w(t)·(ε̂_cfg − ε)."""
    return w * (eps_cfg - noise)


@dataclass
class DPOConfig:
    """DreamDPO gradient options. Defaults and their reasons: docs/method.md; the two flags give reference-code parity.

    - tau: threshold on the judge's score gap, in the judge's units (paper: 0.001).
    - rule: 'piecewise' (gap ≥ τ → pull win + push lose; gap < τ → pull only) or 'smooth'
      (mix both branches with λ = clamp(gap/τ, 0, 1); τ = 0 → always push).
    - pull_subtract_noise: the pull-only branch is w·(ε̂_cfg^win − ε^win) (True, textbook/SDS) or
      w·ε̂_cfg^win (False: what the reference code computes).
    - push_uses_cfg: the push term uses ε_cond^lose, the conditional prediction without guidance
      (False: the paper's formula (docs/method.md), which is also what the reference code does), or the
      guided ε̂_cfg^lose (True: the symmetric Diffusion-DPO reading).
    - variant: 'noise' (one t, two noises; default) or 'timestep' (one noise, t1 ≠ t2).
    - min_distance: candidates whose 8-bit pixels differ by less than this on average (0–1) are
      indistinct: no judge and no person sees them, and they count as a tie (pull only).
    - redraws: an indistinct pair is drawn again with fresh noises at a higher t (up to the top of
      the schedule), at most this many times, before it is left indistinct. 0 by default: redraws
      steer a taste harder but cost the toy cube its shape (docs/method.md, "Defaults and why").
    - candidates: noises drawn per step (one batched prior call); `pick` says which two are judged.
    - pick: 'most_different' (the two that look most different: informative for any judge, people
      included) or 'best_worst' (a scoring judge scores all N and the pair is its best against its
      worst, as RewardSDS, arXiv 2503.09601; needs a reward-model judge).
    """

    tau: float = 0.001
    rule: Literal["piecewise", "smooth"] = "piecewise"
    pull_subtract_noise: bool = True
    push_uses_cfg: bool = False
    variant: Literal["noise", "timestep"] = "noise"
    min_distance: float = 0.005
    redraws: int = 0
    candidates: int = 2
    pick: Literal["most_different", "best_worst"] = "most_different"

    def __post_init__(self) -> None:
        if not self.tau >= 0:  # also rejects NaN
            raise UserError(f"dpo.tau must be ≥ 0 (in the judge's score units), got {self.tau}")
        if self.rule not in ("piecewise", "smooth"):
            raise UserError(f"dpo.rule must be 'piecewise' or 'smooth', got {self.rule!r}")
        if self.variant not in ("noise", "timestep"):
            raise UserError(f"dpo.variant must be 'noise' or 'timestep', got {self.variant!r}")
        if not 0 <= self.min_distance < 1:
            raise UserError(f"dpo.min_distance must be in [0, 1) (mean pixel difference), got {self.min_distance}")
        if self.candidates < 2:
            raise UserError(f"dpo.candidates must be ≥ 2 (noises drawn per step; the judged pair is the two that "
                            f"differ most), got {self.candidates}")
        if self.pick not in ("most_different", "best_worst"):
            raise UserError(f"dpo.pick must be 'most_different' or 'best_worst', got {self.pick!r}")
        if self.redraws < 0:
            raise UserError(f"dpo.redraws must be ≥ 0, got {self.redraws}")


@dataclass
class Member:
    """One pair member: its guided and conditional predictions, its noise, and w(t) (broadcastable)."""

    eps_cfg: Tensor
    eps_cond: Tensor
    noise: Tensor
    w: Tensor | float


def push_fraction(winner: str, gap: float, skip: bool, cfg: DPOConfig) -> float:
    """λ, how much of the push branch a verdict fires: 0 for a skip or a tie (there is no loser,
    whatever τ); piecewise → 1 if gap ≥ τ else 0 (so gap == τ pushes); smooth → clamp(gap/τ, 0, 1),
    with τ = 0 → 1."""
    if skip or winner == "tie":
        return 0.0
    if cfg.rule == "piecewise":
        return 1.0 if gap >= cfg.tau else 0.0
    if cfg.tau == 0:
        return 1.0
    return min(max(gap / cfg.tau, 0.0), 1.0)


def preference_grad(a: Member, b: Member, winner: str, gap: float, skip: bool, cfg: DPOConfig) -> Tensor:
    """The gradient one judged pair injects into z (docs/method.md, "The step"): the only place
    where a verdict becomes a gradient.

    skip → 0 (no update); otherwise, with win/lose from the verdict (a tie pulls a) and
    λ = push_fraction: λ·(pull win − push lose) + (1 − λ)·pull-only, where
    pull = w·(ε̂_cfg^win − ε^win), push = w·(ε^lose_pred − ε^lose) with ε^lose_pred the guided
    prediction (push_uses_cfg) or the conditional one, and pull-only = pull, or w·ε̂_cfg^win
    without the noise (the reference code's branch, pull_subtract_noise=False)."""
    if skip:
        return torch.zeros_like(a.eps_cfg)
    win, lose = (b, a) if winner == "b" else (a, b)
    lam = push_fraction(winner, gap, skip, cfg)
    pull = win.w * (win.eps_cfg - win.noise)
    pull_only = pull if cfg.pull_subtract_noise else win.w * win.eps_cfg
    if lam == 0.0:
        return pull_only
    lose_eps = lose.eps_cfg if cfg.push_uses_cfg else lose.eps_cond
    both = pull - lose.w * (lose_eps - lose.noise)
    return both if lam == 1.0 else lam * both + (1.0 - lam) * pull_only


def surrogate_loss(z: Tensor, grad: Tensor) -> Tensor:
    """0.5·‖z − sg(z − grad)‖² / B, whose gradient w.r.t. z is grad / B (B = z.shape[0])."""
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


def sparsity_loss(opacity: Tensor) -> Tensor:
    """Smooth L1-like penalty on accumulated opacity (threestudio's `sqrt(o² + 0.01)` mean)."""
    return (opacity**2 + 0.01).sqrt().mean()


def _ramp(step: int, start: int, end: int, a: float, b: float) -> float:
    if end <= start:
        return b if step >= end else a
    frac = min(max((step - start) / (end - start), 0.0), 1.0)
    return a + (b - a) * frac


def orientation_weight(
    step: int, ramp: tuple[int, int] = (0, 5000), weights: tuple[float, float] = (10.0, 1000.0)
) -> float:
    """Orientation-loss weight, linear from weights[0] at ramp[0] to weights[1] at ramp[1]
    (docs/method.md, "Defaults and why")."""
    return _ramp(step, ramp[0], ramp[1], weights[0], weights[1])


def t_range(
    step: int,
    t_start: tuple[float, float] = (0.98, 0.98),
    t_end: tuple[float, float] = (0.02, 0.50),
    anneal_steps: int = 8000,
) -> tuple[float, float]:
    """[t_min, t_max] as fractions of the training timesteps, annealed linearly over anneal_steps."""
    lo = _ramp(step, 0, anneal_steps, t_start[0], t_end[0])
    hi = _ramp(step, 0, anneal_steps, t_start[1], t_end[1])
    return lo, hi


def sample_timesteps(
    step: int,
    num_train_timesteps: int,
    *,
    t_start: tuple[float, float] = (0.98, 0.98),
    t_end: tuple[float, float] = (0.02, 0.50),
    anneal_steps: int = 8000,
    distinct: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Integer timesteps (t1, t2) for the pair, uniform in [int(T·t_min), int(T·t_max)] as in the
    reference code. distinct=False → t1 == t2 (the 'noise' variant: one t per step); distinct=True →
    t2 ≠ t1, uniform over the rest of the range (a one-value range falls back to its neighbour t1 − 1)."""
    T = num_train_timesteps
    lo_f, hi_f = t_range(step, t_start, t_end, anneal_steps)
    lo = min(max(int(T * lo_f), 0), T - 1)
    hi = min(max(int(T * hi_f), lo), T - 1)
    t1 = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    if not distinct:
        return t1, t1
    if hi == lo:
        return t1, t1 - 1 if t1 > 0 else t1 + 1
    t2 = int(torch.randint(lo, hi, (1,), generator=generator))  # hi − lo values: the range without t1
    return t1, t2 + 1 if t2 >= t1 else t2

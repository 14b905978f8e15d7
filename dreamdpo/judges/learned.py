"""A per-run preference model, learned from people's decisions while the run goes on.

People can judge one pair in a few seconds; a run takes thousands of steps. So people's votes
teach a model, and the model judges the steps people do not see (Christiano et al. 2017; HERO,
ICLR 2025). The model is a Bradley–Terry head on the base judge:

    P(a ≻ b) = σ(β·(s_a − s_b) + wᵀ(f_a − f_b))

- s: the base judge's score of each candidate (its prior: with no votes the model is the base judge);
- f: the base judge's image features (the toy reward's image embedding; CLIP/BLIP embeddings for
  HPSv2/ImageReward), each candidate's mean over its views;
- (β, w): the maximum a posteriori fit of a logistic regression on every decision people made in
  this run, with a Gaussian prior centred on (β₀, 0). Feature differences are divided by their
  per-dimension RMS over the training pairs first: candidates of one step differ little, and on
  raw unit-norm embeddings the prior would keep w near 0 however consistent people are (measured:
  leave-one-out agreement 0.52 raw, 0.72–0.80 standardised, 30 votes of a simulated person).
  Newton's method in float64 takes a few ms for hundreds of pairs, so the model is refitted
  whenever a decision lands, on a CPU too.

The prediction integrates over the Laplace posterior (MacKay's probit approximation), so a model
that has seen few votes is unsure exactly where people have not told it anything yet: that is
where the run asks them next. The training set is a list of pair ids and the model's state is a
few hundred floats; both go into the checkpoint, and the log holds the decisions themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Example:
    """One decided pair: feature and score differences (a − b) and the target P(a ≻ b)."""

    pair_id: int
    df: Tensor  # [D] f_a − f_b
    ds: float  # s_a − s_b
    y: float  # 1 (a), 0 (b), 0.5 (tie)


@dataclass
class PreferenceModel:
    dim: int
    beta0: float = 1.0  # weight of the base judge's score difference before any vote
    l2: float = 10.0  # prior precision of w on standardised features (in units of the data's log-likelihood)
    l2_beta: float = 1.0  # prior precision of β around β₀
    examples: list[Example] = field(default_factory=list)
    theta: Tensor = field(init=False)  # [1 + D]: β then w (w on standardised features)
    cov: Tensor = field(init=False)  # posterior covariance (Laplace)
    scale: Tensor = field(init=False)  # [D] per-dimension RMS of the training pairs' feature differences

    def __post_init__(self) -> None:
        self.theta = torch.zeros(1 + self.dim, dtype=torch.float64)
        self.theta[0] = self.beta0
        self.cov = self._prior_precision().inverse()
        self.scale = torch.ones(self.dim, dtype=torch.float64)

    def _x(self, df: Tensor, ds: float) -> Tensor:
        return torch.cat([torch.tensor([ds], dtype=torch.float64), df.double() / self.scale])

    @property
    def pair_ids(self) -> set[int]:
        return {e.pair_id for e in self.examples}

    def _prior_precision(self) -> Tensor:
        return torch.diag(torch.tensor([self.l2_beta] + [self.l2] * self.dim, dtype=torch.float64))

    def add(self, examples: list[Example]) -> int:
        """Add decisions not seen before (a pair is never counted twice) and refit; returns how many were new."""
        seen = self.pair_ids
        new = [e for e in examples if e.pair_id not in seen]
        if new:
            self.examples.extend(new)
            self.fit()
        return len(new)

    def fit(self, iters: int = 25) -> None:
        """MAP by Newton's method: minimise Σ BCE(σ(xᵢ·θ), yᵢ) + ½(θ − θ₀)ᵀ P (θ − θ₀)."""
        P = self._prior_precision()
        theta0 = torch.zeros_like(self.theta)
        theta0[0] = self.beta0
        theta = self.theta.clone()
        if self.examples:
            rms = torch.stack([e.df.double() for e in self.examples]).pow(2).mean(0).sqrt()
            self.scale = rms.clamp(min=0.1 * float(rms.mean()) + 1e-12)
            X = torch.stack([self._x(e.df, e.ds) for e in self.examples])
            y = torch.tensor([e.y for e in self.examples], dtype=torch.float64)
            for _ in range(iters):
                p = torch.sigmoid(X @ theta)
                grad = X.T @ (p - y) + P @ (theta - theta0)
                H = X.T @ (X * (p * (1 - p))[:, None]) + P
                delta = torch.linalg.solve(H, grad)
                theta = theta - delta
                if float(delta.abs().max()) < 1e-9:
                    break
            p = torch.sigmoid(X @ theta)
            H = X.T @ (X * (p * (1 - p))[:, None]) + P
        else:
            theta, H = theta0, P
        self.theta, self.cov = theta, torch.linalg.inv(H)

    def predict(self, df: Tensor, ds: float) -> tuple[float, float]:
        """(P(a ≻ b) integrated over the posterior, posterior std of the logit)."""
        x = self._x(df, ds)
        mu = float(x @ self.theta)
        var = float(x @ self.cov @ x)
        return 1.0 / (1.0 + math.exp(-mu / math.sqrt(1.0 + math.pi * var / 8.0))), math.sqrt(var)

    def agreement(self) -> float | None:
        """Leave-one-out agreement with people's clear decisions (ties left out): an honest held-out
        estimate with the few votes a run has. None before two clear decisions."""
        clear = [e for e in self.examples if e.y != 0.5]
        if len(clear) < 2:
            return None
        hits = 0
        for i, held in enumerate(clear):
            m = PreferenceModel(self.dim, self.beta0, self.l2, self.l2_beta)
            m.examples = [e for e in self.examples if e is not held]
            m.fit()
            hits += (m.predict(held.df, held.ds)[0] >= 0.5) == (held.y == 1.0)
            del i
        return hits / len(clear)

    def state_dict(self) -> dict:
        return {"dim": self.dim, "beta0": self.beta0, "l2": self.l2, "l2_beta": self.l2_beta,
                "examples": [(e.pair_id, e.df.clone(), e.ds, e.y) for e in self.examples],
                "theta": self.theta.clone(), "cov": self.cov.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> PreferenceModel:
        m = cls(state["dim"], state["beta0"], state["l2"], state["l2_beta"])
        m.examples = [Example(pid, df, ds, y) for pid, df, ds, y in state["examples"]]
        m.theta, m.cov, m.scale = state["theta"].clone(), state["cov"].clone(), state["scale"].clone()
        return m


def target(winner: str) -> float:
    """A decision's target P(a ≻ b)."""
    return {"a": 1.0, "b": 0.0}.get(winner, 0.5)

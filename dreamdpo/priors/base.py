"""The diffusion-prior interface every backbone implements (Stable Diffusion, MVDream, the toy prior).

It is about noise predictions, not U-Nets: a prior turns renders into the space it diffuses in
(`encode`), adds noise with its scheduler's ᾱ_t, predicts noise with classifier-free guidance in ONE
batched call, and decodes one-step estimates x̂0 back to images a judge can look at.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dreamdpo.cameras import Cameras


@dataclass
class NoisePrediction:
    eps_cfg: Tensor  # guided prediction ε_neg + s·(ε_cond − ε_neg), shaped like z_t
    eps_cond: Tensor  # conditional-only prediction (the reference code's push term uses it)


class DiffusionPrior(ABC):
    """Frozen prior. Subclasses set the attributes below in __init__."""

    name: str
    n_views: int = 1  # views per camera group the prior expects (4 for MVDream-style priors)
    resolution: int = 64  # render size (H = W) the prior takes
    alphas_cumprod: Tensor  # [num_train_timesteps], float32, on self.device
    device: torch.device = torch.device("cpu")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> Any:
        """Text → the prior's conditioning (opaque to callers; cache it, it is reused every step)."""

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] → z. Differentiable: the DreamDPO gradient flows back through it."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """z → [B,3,H,W] in [0,1], no gradient (judges look at decoded x̂0)."""

    @abstractmethod
    def predict_noise(
        self, z_t: Tensor, t: Tensor, cond: Any, cameras: Cameras, guidance_scale: float
    ) -> NoisePrediction:
        """ε predictions for a batch z_t [N,...] at integer timesteps t [N]; cameras has N entries.
        Implementations make ONE backbone call over [cond; neg] × N. No gradient."""

    # ---- scheduler maths shared by every prior (DDPM) ----
    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        a = self.alphas_cumprod.to(like.device)[t.long()].to(like.dtype)
        return a.reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a = self._abar(t, z)
        return a.sqrt() * z + (1 - a).sqrt() * noise

    def predict_x0(self, z_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        a = self._abar(t, z_t)
        return (z_t - (1 - a).sqrt() * eps) / a.sqrt()

    def weight(self, t: Tensor, like: Tensor) -> Tensor:
        """w(t) = 1 − ᾱ_t, broadcastable against `like`."""
        return 1 - self._abar(t, like)

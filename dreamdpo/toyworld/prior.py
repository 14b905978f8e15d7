"""The toy prior: the exact (closed-form) diffusion denoiser of the toy world's bank of renders.

For a bank {x_i} the MMSE denoiser is x̂0(z_t) = Σ_i w_i x_i with
w_i ∝ exp(−‖z_t − √ᾱ_t·x_i‖² / 2(1−ᾱ_t)), and ε̂ = (z_t − √ᾱ_t·x̂0)/√(1−ᾱ_t). No training.

- Camera-conditioned: only the bank images from the k bank cameras nearest the query camera take
  part (angle between view directions, plus fov), with a Gaussian log-weight on that distance.
- Concept-compositional (composable diffusion): one bank per content word (all scenes with a red
  object, all scenes with a cube, …) and an unconditional bank (all scenes); for a prompt with
  words W, ε̂ = ε_u + Σ_w s_w·(ε_w − ε_u) with s_w = guidance_scale / |W|. The number of objects
  named (one, or two joined by a relation) picks the scene layout every bank is drawn from.
  Words are a bag: "a red cube and a blue sphere" is as happy with a blue cube and a red sphere
  — the attribute-binding ambiguity of real text-to-image models, which preference feedback fixes.
  Relations (left of / right of) do not condition the prior. `binding` (RunConfig.toy_binding, default 0)
  moves that share of the guidance to phrase banks, one per object named ("red cube": the images with a
  red cube in one slot): ε̂ = ε_u + g·[(1 − b)·mean_w(ε_w − ε_u) + b·mean_p(ε_p − ε_u)], a prior that binds.
- Negative prompt: its words' mean prediction replaces ε_u as the branch guidance moves away from.
- eps_cond (the conditional-only prediction) is the mean of the word predictions (with binding, the same
  mix of word and phrase means), i.e. the composed prediction at total guidance 1.
- Exact at full resolution and cheap: renders are linear in colour (render.py), so every
  distance ‖z_t − √ᾱ x_i‖² expands into dot products of z_t with a few geometry maps and a 4×4
  Gram matrix per (camera, layout); 1640 candidate images per bank camera cost one small matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.priors.base import DiffusionPrior, NoisePrediction
from dreamdpo.toyworld.bank import Bank, BankConfig, LayoutBank, build_bank
from dreamdpo.toyworld.render import BACKGROUND
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, Scene, parse_prompt, parse_words


@dataclass
class ToyCondition:
    prompt: str
    scene: Scene
    words: list[str]  # unique content words, prompt order
    negative_words: list[str]
    n_objects: int
    phrases: list[tuple[str | None, str]]  # (colour, shape) of each object named, for binding > 0


class _LayoutTensors:
    """Per-layout constants on the prior's device: maps, Gram matrices, colour combos, labels."""

    def __init__(self, lb: LayoutBank, device: torch.device):
        S = lb.n_slots
        C, G, H, W = lb.background.shape
        self.shapes = lb.shapes
        # maps: [C, G, S+1, HW] = background coverage, then each slot's shaded coverage
        self.maps = torch.cat([lb.background[:, :, None], lb.shaded], dim=2).reshape(C, G, S + 1, H * W).to(device)
        gram = torch.empty(C, G, S + 2, S + 2, dtype=torch.float64)
        for c in range(C):  # Gram of [B, A_1.., A_S, 1] per camera, in float64
            m = self.maps[c].double().cpu()
            m = torch.cat([m, torch.ones(G, 1, H * W, dtype=torch.float64)], dim=1)
            gram[c] = m @ m.transpose(1, 2)
        self.gram = gram.to(device)
        names = list(COLOURS)
        combos = torch.cartesian_prod(*[torch.arange(len(names))] * S).reshape(-1, S)  # [N, S]
        self.combos = combos
        rgb = torch.tensor([COLOURS[n] for n in names], dtype=torch.float64)
        self.slot_rgb = rgb[combos].to(device)  # [N, S, 3]
        bg = torch.tensor(BACKGROUND, dtype=torch.float64)
        # encoded image x = 2·(B·bg + Σ A_s c_s) − 1 = Σ_m v_m · map_m with maps [B, A_s.., 1]
        v = torch.empty(len(combos), 3, S + 2, dtype=torch.float64)
        v[:, :, 0] = 2 * bg
        v[:, :, 1:S + 1] = 2 * rgb[combos].permute(0, 2, 1)
        v[:, :, S + 1] = -1.0
        self.v = v.to(device)
        self.colour_of = [[names[i] for i in row] for row in combos.tolist()]

    def phrase_mask(self, colour: str | None, shape: str) -> Tensor:
        """[G, N] bool: which images hold this shape in this colour, in one slot (the colour bound to it)."""
        G, N = len(self.shapes), len(self.colour_of)
        m = torch.zeros(G, N, dtype=torch.bool)
        for s in range(len(self.shapes[0])):
            g = torch.tensor([row[s] == shape for row in self.shapes])
            c = torch.tensor([colour is None or row[s] == colour for row in self.colour_of])
            m |= g[:, None] & c[None]
        return m

    def word_mask(self, word: str) -> Tensor:
        """[G, N] bool: which (layout, colouring) images contain the word."""
        G, N = len(self.shapes), len(self.colour_of)
        if word in SHAPES:
            g = torch.tensor([word in s for s in self.shapes])
            return g[:, None].expand(G, N)
        c = torch.tensor([word in row for row in self.colour_of])
        return c[None].expand(G, N)


class ToyPrior(DiffusionPrior):
    name = "toy"
    n_views = 1
    resolution = 64

    def __init__(self, bank: Bank, device="cpu", k_cameras: int = 4, camera_sigma: float = 15.0,
                 fovy_weight: float = 0.5, temperature: float = 1.0, binding: float = 0.0):
        from diffusers import DDPMScheduler

        self.binding = binding  # the share of guidance on bound phrases (RunConfig.toy_binding; 0: words only)
        self.device = torch.device(device)
        self.bank = bank
        self.resolution = bank.config.resolution
        self.k_cameras = min(k_cameras, len(bank.cameras))
        self.camera_sigma, self.fovy_weight, self.temperature = camera_sigma, fovy_weight, temperature
        self.alphas_cumprod = DDPMScheduler().alphas_cumprod.float().to(self.device)
        self._layouts = {1: _LayoutTensors(bank.single, self.device), 2: _LayoutTensors(bank.pair, self.device)}
        cams = bank.cameras
        self._bank_dirs = F.normalize(cams.positions(), dim=-1).double().to(self.device)
        self._bank_fovy = cams.fovy.double().to(self.device)

    @classmethod
    def build(cls, device="cpu", cache_dir=None, seed: int = 0, progress: bool = True,
              k_cameras: int = 4, camera_sigma: float = 15.0, temperature: float = 1.0, binding: float = 0.0,
              **bank_opts) -> ToyPrior:
        bank = build_bank(BankConfig(seed=seed, **bank_opts), cache=cache_dir, progress=progress)
        return cls(bank, device, k_cameras=k_cameras, camera_sigma=camera_sigma, temperature=temperature,
                   binding=binding)

    # ---- interface ----
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> ToyCondition:
        scene = parse_prompt(prompt)
        neg = parse_words(negative_prompt) if negative_prompt.strip() else []
        return ToyCondition(prompt, scene, list(dict.fromkeys(scene.words)), neg, len(scene.objects),
                            list(dict.fromkeys((o.colour, o.shape) for o in scene.objects)))

    def encode(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2 - 1

    def decode(self, z: Tensor) -> Tensor:
        return ((z.detach() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Tensor, cond: ToyCondition, cameras: Cameras,
                      guidance_scale: float) -> NoisePrediction:
        eps_cfg, eps_cond = [], []
        for n in range(z_t.shape[0]):
            words_eps, phrase_eps, base_eps = self._bank_eps(z_t[n], int(t[n]), cond, cameras[n])
            if not self.binding:
                s = guidance_scale / max(1, len(cond.words))
                eps_cfg.append(base_eps + s * (words_eps - base_eps[None]).sum(0))
                eps_cond.append(words_eps.mean(0))
                continue
            r = self.binding  # ε_u + g·[(1 − r)·mean_w(ε_w − ε_u) + r·mean_p(ε_p − ε_u)]
            words, phrases = (words_eps - base_eps[None]).mean(0), (phrase_eps - base_eps[None]).mean(0)
            eps_cfg.append(base_eps + guidance_scale * ((1 - r) * words + r * phrases))
            eps_cond.append((1 - r) * words_eps.mean(0) + r * phrase_eps.mean(0))
        out = lambda xs: torch.stack(xs).to(z_t.dtype)  # noqa: E731
        return NoisePrediction(eps_cfg=out(eps_cfg), eps_cond=out(eps_cond))

    # ---- the closed-form denoiser ----
    def nearest_cameras(self, camera: Cameras) -> tuple[Tensor, Tensor]:
        """Indices of the k nearest bank cameras and their log-weights."""
        q = F.normalize(camera.positions().double().to(self.device), dim=-1)[0]
        angle = torch.rad2deg(torch.acos((self._bank_dirs @ q).clamp(-1, 1)))
        dfov = self.fovy_weight * (self._bank_fovy - float(camera.fovy[0]))
        dist2 = angle**2 + dfov**2
        d2, idx = torch.topk(dist2, self.k_cameras, largest=False)
        return idx, -d2 / (2 * self.camera_sigma**2)

    def denoise(self, z: Tensor, t: int, masks: Tensor, layout: int, camera: Cameras) -> Tensor:
        """x̂0 (encoded, [M,3,H,W]) of one noisy image z [3,H,W] for M banks given as masks [M,G,N]."""
        L = self._layouts[layout]
        a = float(self.alphas_cumprod[t])
        cam_idx, cam_logw = self.nearest_cameras(camera)
        maps = L.maps[cam_idx].double()  # [k,G,S+1,P]
        y = z.reshape(3, -1).double().to(self.device)  # [3,P]
        proj = torch.einsum("kgmp,cp->kgcm", maps, y)
        proj = torch.cat([proj, y.sum(-1)[None, None, :, None].expand(*proj.shape[:3], 1)], dim=-1)
        cross = torch.einsum("nca,kgca->kgn", L.v, proj)
        norm = torch.einsum("nca,kgab,ncb->kgn", L.v, L.gram[cam_idx], L.v)
        logits = (2 * math.sqrt(a) * cross - a * norm) / (2 * (1 - a)) / self.temperature
        logits = logits + cam_logw[:, None, None]
        logits = logits[None].expand(masks.shape[0], *logits.shape).masked_fill(~masks[:, None], -math.inf)
        w = torch.softmax(logits.flatten(1), dim=-1).reshape(logits.shape)  # [M,k,G,N]
        S = L.slot_rgb.shape[1]
        img = torch.einsum("mkg,kgp->mp", w.sum(-1), maps[:, :, 0])[:, None] * torch.tensor(
            BACKGROUND, dtype=torch.float64, device=self.device)[None, :, None]
        for s in range(S):
            col = torch.einsum("mkgn,nc->mkgc", w, L.slot_rgb[:, s])
            img = img + torch.einsum("mkgc,kgp->mcp", col, maps[:, :, 1 + s])
        return (2 * img - 1).reshape(masks.shape[0], *z.shape).to(z.dtype)

    def _masks(self, cond: ToyCondition) -> tuple[Tensor, bool]:
        """Word banks, then (binding > 0) phrase banks, then the base (negative words, or every image)."""
        L = self._layouts[cond.n_objects]
        G, N = len(L.shapes), len(L.colour_of)
        masks = [L.word_mask(w) for w in cond.words]
        if self.binding:
            masks += [L.phrase_mask(c, s) for c, s in cond.phrases]
        if cond.negative_words:
            masks += [L.word_mask(w) for w in cond.negative_words]
        else:
            masks.append(torch.ones(G, N, dtype=torch.bool))
        return torch.stack(masks).to(self.device), bool(cond.negative_words)

    def _bank_eps(self, z_t: Tensor, t: int, cond: ToyCondition, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        """ε of each word bank [W,...], of each phrase bank [P,...] (none at binding 0), and of the base."""
        masks, negative = self._masks(cond)
        x0 = self.denoise(z_t, t, masks, cond.n_objects, camera)
        a = self.alphas_cumprod[t].to(z_t.dtype)
        eps = (z_t[None] - a.sqrt() * x0) / (1 - a).sqrt()
        n, p = len(cond.words), len(cond.phrases) if self.binding else 0
        base = eps[n + p:].mean(0)
        return eps[:n], eps[n:n + p], base


@torch.no_grad()
def ddim_sample(prior: ToyPrior, cond: ToyCondition, cameras: Cameras, guidance_scale: float,
                steps: int = 25, generator: torch.Generator | None = None, t_max: int = 999) -> Tensor:
    """Images [B,3,H,W] sampled from pure noise with deterministic DDIM (for checks and benches)."""
    B, R = len(cameras), prior.resolution
    z = torch.randn(B, 3, R, R, generator=generator)
    ts = torch.linspace(t_max, 0, steps + 1).round().long()
    for t, t_next in zip(ts[:-1], ts[1:]):
        eps = prior.predict_noise(z, t.repeat(B), cond, cameras, guidance_scale).eps_cfg
        x0 = prior.predict_x0(z, eps, t.repeat(B)).clamp(-1, 1)
        a_next = prior.alphas_cumprod[t_next] if t_next > 0 else torch.tensor(1.0)
        eps = (z - prior._abar(t.repeat(B), z).sqrt() * x0) / (1 - prior._abar(t.repeat(B), z)).sqrt()
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return prior.decode(z)

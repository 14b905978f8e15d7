"""Volume rendering of the field with nerfacc.

Two paths, one result (FINDINGS.md: nerfacc 0.5.3's marching and packed ops need CUDA):
- CUDA: occupancy-grid ray marching (`OccGridEstimator`), packed samples, packed compositing;
- CPU: stratified dense samples [rays, samples] between the ray's entry and exit of the scene box,
  composited with nerfacc's dense `render_weight_from_density`.
Both composite the same field with the same quadrature, so they agree up to sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import nerfacc
import torch
from torch import Tensor, nn

from dreamdpo.cameras import Cameras
from dreamdpo.field import NeRFField
from dreamdpo.seeding import Stream, step_seed


@dataclass
class RenderConfig:
    n_samples: int = 64  # dense samples per ray (CPU path)
    max_samples: int = 512  # reference: up to 512 samples per ray (CUDA marching step is derived from it)
    grid_resolution: int = 64  # occupancy grid (CUDA path)
    occ_threshold: float = 0.01
    occ_every: int = 16  # steps between occupancy-grid refreshes (nerfacc's default)
    chunk_rays: int = 8192  # rays per chunk, bounds memory
    force_dense: bool = False  # use the CPU path on CUDA too (for comparisons)


@dataclass
class RenderOutput:
    rgb: Tensor  # [B, 3, H, W]
    opacity: Tensor  # [B, 1, H, W]
    depth: Tensor  # [B, 1, H, W]
    normals: Tensor  # [B, 3, H, W], world space, opacity-weighted
    orientation: Tensor  # scalar: threestudio's orientation loss (see orientation_penalty)
    opacity_mean: Tensor  # scalar


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the cube [-bound, bound]^3 (near > far: a miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-bound - origins) * inv, (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def orientation_penalty(weights: Tensor, normals: Tensor, dirs: Tensor) -> Tensor:
    """Σ_i sg(w_i)·relu(n_i·d)² per sample: normals facing away from the camera are penalised
    (Ref-NeRF/DreamFusion's orientation loss). It needs per-sample weights, so it lives here."""
    return weights.detach() * (normals * dirs).sum(-1).clamp_min(0.0) ** 2


class Renderer(nn.Module):
    def __init__(self, field: NeRFField, background: nn.Module, cfg: RenderConfig | None = None):
        super().__init__()
        self.field, self.background, self.cfg = field, background, cfg or RenderConfig()
        b = field.cfg.bound
        self.estimator = nerfacc.OccGridEstimator(
            roi_aabb=[-b, -b, -b, b, b, b], resolution=self.cfg.grid_resolution, levels=1)
        # nerfacc starts with every cell empty: a CUDA render before the first update would be blank.
        # Start all-occupied instead (updates overwrite it; the EMA state `occs` is untouched)
        self.estimator.binaries.fill_(True)
        # marching step: the cube's diagonal in max_samples steps
        self.render_step_size = 2 * b * 3**0.5 / self.cfg.max_samples
        # False until the first occupancy update: a renderer used without one samples everywhere
        self.register_buffer("grid_ready", torch.zeros((), dtype=torch.bool))

    def _use_grid(self, device: torch.device) -> bool:
        return device.type == "cuda" and not self.cfg.force_dense

    def _step_size(self, device: torch.device) -> float:
        """Sample spacing of the active path along the box diagonal (occupancy is σ·step)."""
        if self._use_grid(device):
            return self.render_step_size
        return 2 * self.field.cfg.bound * 3**0.5 / self.cfg.n_samples

    @torch.no_grad()
    def update_occupancy(self, step: int, seed: int = 0) -> None:
        """Refresh the occupancy grid from the field (nerfacc's EMA update). The CUDA path marches
        through it; the dense CPU path skips field queries in cells whose σ·step is below the threshold
        (their samples contribute alpha < 1 %). Its random draws use a generator seeded by (seed, step)
        so a resumed run refreshes the grid exactly as the uninterrupted one."""
        device = next(self.field.parameters()).device
        step_size = self._step_size(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_seed(seed, step, Stream.OCCUPANCY))
            self.estimator.update_every_n_steps(
                step, occ_eval_fn=lambda x: self.field.density(x) * step_size,
                occ_thre=self.cfg.occ_threshold, n=self.cfg.occ_every)
        if step % self.cfg.occ_every == 0:  # the estimator refreshed the grid this step
            self.grid_ready.fill_(True)

    def forward(self, cameras: Cameras, height: int, width: int, *, generator: torch.Generator | None = None,
                need_normals: bool = True) -> RenderOutput:
        origins, dirs = cameras.rays(height, width)
        B = len(cameras)
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        bg = self.background(d, generator=generator)  # one draw per batch (augmentation)
        stratified = self.training
        jitter = None
        if stratified and not self._use_grid(o.device):
            jitter = torch.rand(o.shape[0], self.cfg.n_samples, generator=generator).to(o)
        outs = []
        for s in range(0, o.shape[0], self.cfg.chunk_rays):
            sl = slice(s, s + self.cfg.chunk_rays)
            j = jitter[sl] if jitter is not None else None
            if self._use_grid(o.device):
                outs.append(self._render_packed(o[sl], d[sl], need_normals, stratified))
            else:
                outs.append(self._render_dense(o[sl], d[sl], need_normals, j))
        rgb_fg, opacity, depth, normals, orient = (torch.cat(t) for t in zip(*outs))
        rgb = rgb_fg + (1.0 - opacity) * bg

        def img(t: Tensor) -> Tensor:
            return t.reshape(B, height, width, -1).permute(0, 3, 1, 2)

        return RenderOutput(rgb=img(rgb), opacity=img(opacity), depth=img(depth), normals=img(normals),
                            orientation=orient.sum() / (opacity > 0).sum().clamp_min(1),  # threestudio: per covered ray
                            opacity_mean=opacity.mean())

    def _samples(self, x: Tensor, need_normals: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        if need_normals:
            return self.field.forward_with_normals(x)
        sigma, rgb = self.field(x)
        return sigma, rgb, None

    def _occupied(self, x: Tensor) -> Tensor:
        """Points [N, 3] in occupied grid cells (all of them before the grid's first update)."""
        if not bool(self.grid_ready):
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        b = self.field.cfg.bound
        res = self.estimator.binaries.shape[-1]
        ijk = ((x + b) / (2 * b) * res).long().clamp(0, res - 1)
        return self.estimator.binaries[0, ijk[:, 0], ijk[:, 1], ijk[:, 2]]

    def _render_dense(self, o: Tensor, d: Tensor, need_normals: bool, jitter: Tensor | None):
        R, S = o.shape[0], self.cfg.n_samples
        near, far = ray_box(o, d, self.field.cfg.bound)
        hit = far > near
        far = torch.where(hit, far, near)  # misses get zero-length intervals: no density, no weight
        u = (torch.arange(S, device=o.device, dtype=o.dtype) + (jitter if jitter is not None else 0.5)) / S
        edges = torch.arange(S + 1, device=o.device, dtype=o.dtype) / S
        span = (far - near)[:, None]
        t_starts, t_ends = near[:, None] + span * edges[None, :-1], near[:, None] + span * edges[None, 1:]
        t_mid = near[:, None] + span * u
        x = (o[:, None, :] + d[:, None, :] * t_mid[..., None]).reshape(-1, 3)
        keep = self._occupied(x) & hit.repeat_interleave(S)
        sigma_k, rgb_k, n_k = self._samples(x[keep], need_normals)
        sigma = torch.zeros(R * S, device=o.device, dtype=sigma_k.dtype).masked_scatter(keep, sigma_k)
        rgb = torch.zeros(R * S, 3, device=o.device, dtype=rgb_k.dtype).masked_scatter(keep[:, None], rgb_k)
        n = None
        if n_k is not None:
            n = torch.zeros(R * S, 3, device=o.device, dtype=n_k.dtype).masked_scatter(keep[:, None], n_k)
        sigma, rgb = sigma.reshape(R, S), rgb.reshape(R, S, 3)
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma)
        w = weights[..., None]
        opacity = w.sum(1)
        out_rgb = (w * rgb).sum(1)
        depth = (w * t_mid[..., None]).sum(1)
        if n is None:
            return out_rgb, opacity, depth, torch.zeros_like(out_rgb), torch.zeros(R, device=o.device)
        n = n.reshape(R, S, 3)
        orient = orientation_penalty(weights, n, d[:, None, :]).sum(1)
        return out_rgb, opacity, depth, (w * n).sum(1), orient

    def _render_packed(self, o: Tensor, d: Tensor, need_normals: bool, stratified: bool):
        R = o.shape[0]

        def sigma_fn(t_starts, t_ends, ray_indices):
            x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            return self.field.density(x)

        near, far = ray_box(o, d, self.field.cfg.bound)
        ray_indices, t_starts, t_ends = self.estimator.sampling(
            o, d, sigma_fn=sigma_fn, t_min=near, t_max=torch.maximum(far, near),
            render_step_size=self.render_step_size, stratified=stratified)
        t_mid = (t_starts + t_ends) * 0.5
        x = o[ray_indices] + d[ray_indices] * t_mid[:, None]
        sigma, rgb, n = self._samples(x, need_normals)
        weights, _, _ = nerfacc.render_weight_from_density(
            t_starts, t_ends, sigma, ray_indices=ray_indices, n_rays=R)

        def acc(values):
            return nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_indices, n_rays=R)

        opacity = acc(None)
        out_rgb, depth = acc(rgb), acc(t_mid[:, None])
        if n is None:
            return out_rgb, opacity, depth, torch.zeros_like(out_rgb), torch.zeros(R, device=o.device)
        orient = acc(orientation_penalty(weights, n, d[ray_indices])[:, None])[:, 0]
        return out_rgb, opacity, depth, acc(n), orient

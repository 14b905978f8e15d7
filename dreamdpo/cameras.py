"""Cameras: random training views and orbit test views.

Conventions (shared by the renderer, the priors and the toy world):
- world is z-up; the object lives in the cube [-1, 1]^3 around the origin;
- a camera sits at distance d, elevation el (from the xy-plane), azimuth az (from +x towards +y),
  looking at the origin with +z up;
- camera-to-world matrices use the OpenGL convention (camera looks along -z, x right, y up);
- angles are in degrees in every public field.

Distances are "relative" as in MVDream's configs: d = r / tan(fovy / 2), so the object fills the
same fraction of the image whatever the field of view.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CameraConfig:
    elevation_range: tuple[float, float] = (0.0, 30.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    fovy_range: tuple[float, float] = (15.0, 60.0)
    # half-width of the visible region at the origin (relative radius); see module docstring
    relative_radius_range: tuple[float, float] = (0.8, 1.0)
    n_views: int = 1  # 4 for a multi-view prior: views of a group are 90° apart in azimuth


@dataclass
class Cameras:
    """A batch of pinhole cameras looking at the origin. All fields are [B] tensors."""

    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    fovy: Tensor

    def __len__(self) -> int:
        return self.elevation.shape[0]

    @property
    def device(self) -> torch.device:
        return self.elevation.device

    def to(self, device) -> Cameras:
        return Cameras(*(f.to(device) for f in (self.elevation, self.azimuth, self.distance, self.fovy)))

    def __getitem__(self, idx) -> Cameras:
        return Cameras(*(f[idx].reshape(-1) for f in (self.elevation, self.azimuth, self.distance, self.fovy)))

    def repeat(self, n: int) -> Cameras:
        """[c0, c1, ..] -> [c0, c1, .., c0, c1, ..] (n times): for batching pair members."""
        return Cameras(*(f.repeat(n) for f in (self.elevation, self.azimuth, self.distance, self.fovy)))

    def positions(self) -> Tensor:
        el, az = torch.deg2rad(self.elevation), torch.deg2rad(self.azimuth)
        return torch.stack(
            [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
        ) * self.distance[:, None]

    def c2w(self) -> Tensor:
        """[B, 4, 4] camera-to-world matrices (OpenGL: columns are right, up, back, position)."""
        pos = self.positions()
        back = torch.nn.functional.normalize(pos, dim=-1)  # camera looks along -back = towards origin
        world_up = torch.tensor([0.0, 0.0, 1.0], device=pos.device, dtype=pos.dtype).expand_as(pos)
        right = torch.nn.functional.normalize(torch.cross(world_up, back, dim=-1), dim=-1)
        up = torch.cross(back, right, dim=-1)
        m = torch.zeros(len(self), 4, 4, device=pos.device, dtype=pos.dtype)
        m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = right, up, back, pos
        m[:, 3, 3] = 1.0
        return m

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions, each [B, H, W, 3], through pixel centres."""
        dev, dt = self.device, self.elevation.dtype
        focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(self.fovy))  # [B], square pixels
        j, i = torch.meshgrid(
            torch.arange(height, device=dev, dtype=dt) + 0.5,
            torch.arange(width, device=dev, dtype=dt) + 0.5,
            indexing="ij",
        )
        x = (i[None] - 0.5 * width) / focal[:, None, None]
        y = -(j[None] - 0.5 * height) / focal[:, None, None]
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
        c2w = self.c2w()
        d = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
        d = torch.nn.functional.normalize(d, dim=-1)
        o = c2w[:, None, None, :3, 3].expand_as(d)
        return o, d

    def as_dicts(self) -> list[dict]:
        """JSON-friendly description, one dict per camera (for the log)."""
        return [
            {"elevation": float(e), "azimuth": float(a), "distance": float(d), "fovy": float(f)}
            for e, a, d, f in zip(self.elevation, self.azimuth, self.distance, self.fovy)
        ]

    @classmethod
    def from_dicts(cls, rows: list[dict]) -> Cameras:
        """Inverse of as_dicts (a logged pair's cameras, to regenerate or re-judge it)."""
        return cls(*(torch.tensor([float(r[k]) for r in rows]) for k in ("elevation", "azimuth", "distance", "fovy")))


def _uniform(lo_hi: tuple[float, float], n: int, generator: torch.Generator | None) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def relative_distance(fovy_deg: Tensor, relative_radius: Tensor) -> Tensor:
    return relative_radius / torch.tan(0.5 * torch.deg2rad(fovy_deg))


def random_cameras(
    cfg: CameraConfig, n_groups: int = 1, generator: torch.Generator | None = None
) -> Cameras:
    """n_groups groups of cfg.n_views cameras; a group shares elevation, fov and distance and its
    views are 360/n_views degrees apart in azimuth (MVDream's 4-view layout)."""
    v = cfg.n_views
    el = _uniform(cfg.elevation_range, n_groups, generator)
    az0 = _uniform(cfg.azimuth_range, n_groups, generator)
    fovy = _uniform(cfg.fovy_range, n_groups, generator)
    rr = _uniform(cfg.relative_radius_range, n_groups, generator)
    offsets = torch.arange(v, dtype=torch.float32) * (360.0 / v)
    az = (az0[:, None] + offsets[None]).reshape(-1)
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    rep = lambda t: t[:, None].expand(n_groups, v).reshape(-1)  # noqa: E731
    return Cameras(rep(el), az, rep(relative_distance(fovy, rr)), rep(fovy))


def orbit_cameras(
    n: int, elevation: float = 15.0, fovy: float = 40.0, relative_radius: float = 0.9
) -> Cameras:
    """n test views evenly spaced in azimuth (a turntable), starting at azimuth 0 (front)."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    f = torch.full((n,), fovy)
    return Cameras(
        torch.full((n,), elevation), az, relative_distance(f, torch.full((n,), relative_radius)), f
    )

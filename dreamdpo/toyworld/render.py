"""Analytic renderer of the toy world: sphere tracing of exact signed distance functions.

Shading is Lambertian under one world-fixed white light plus ambient, with no shadows, so a
render is linear in the objects' colours: image = background·B + Σ_s colour_s·A_s, where B is
the background coverage and A_s the shaded coverage of object slot s. `render_geometry` returns
those maps (the bank stores them once per camera and shape layout; any colouring is free),
`colourize` turns them into images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, Scene

LIGHT = (0.4, 0.25, 1.0)  # world direction towards the light (normalised at use)
AMBIENT = 0.45
BACKGROUND = (1.0, 1.0, 1.0)
# radius of a sphere around the origin holding each unscaled shape (rays that miss it are skipped)
SHAPE_RADIUS = {"sphere": 0.43, "cube": 0.53, "cone": 0.53, "cylinder": 0.45, "torus": 0.45}
# a two-object scene: object centres on the world y axis (left = −y), shrunk to fit
SIDE_OFFSET = 0.45
PAIR_SCALE = 0.62


def _sdf_sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.42


def _sdf_cube(p: Tensor) -> Tensor:
    q = p.abs() - 0.30
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def _sdf_cylinder(p: Tensor) -> Tensor:
    d = torch.stack([p[..., :2].norm(dim=-1) - 0.30, p[..., 2].abs() - 0.32], dim=-1)
    return d.max(dim=-1).values.clamp(max=0) + d.clamp(min=0).norm(dim=-1)


def _sdf_cone(p: Tensor, h: float = 0.35, r1: float = 0.38) -> Tensor:
    """Capped cone, base radius r1 at z = −h, apex at z = +h (Quilez's exact capped-cone SDF)."""
    qx, qy = p[..., :2].norm(dim=-1), p[..., 2]
    k1x, k1y = 0.0, h
    k2x, k2y = -r1, 2.0 * h
    cax = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r1), torch.zeros_like(qx)))
    cay = qy.abs() - h
    tt = (((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x**2 + k2y**2)).clamp(0.0, 1.0)
    cbx, cby = qx - k1x + k2x * tt, qy - k1y + k2y * tt
    s = torch.where((cbx < 0) & (cay < 0), -1.0, 1.0)
    return s * torch.minimum(cax**2 + cay**2, cbx**2 + cby**2).sqrt()


def _sdf_torus(p: Tensor) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - 0.30, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - 0.14


SDF = {"sphere": _sdf_sphere, "cube": _sdf_cube, "cone": _sdf_cone, "cylinder": _sdf_cylinder, "torus": _sdf_torus}
assert tuple(SDF) == tuple(sorted(SDF, key=SHAPES.index))


@dataclass(frozen=True)
class Placed:
    shape: str
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def sdf(self, p: Tensor) -> Tensor:
        return SDF[self.shape]((p - p.new_tensor(self.centre)) / self.scale) * self.scale


def layout(shapes: tuple[str, ...]) -> tuple[Placed, ...]:
    """One shape at the origin, or two at the world's left (−y) and right (+y)."""
    if len(shapes) == 1:
        return (Placed(shapes[0]),)
    return (Placed(shapes[0], (0.0, -SIDE_OFFSET, 0.0), PAIR_SCALE),
            Placed(shapes[1], (0.0, SIDE_OFFSET, 0.0), PAIR_SCALE))


def scene_layout(scene: Scene) -> tuple[Placed, ...]:
    return layout(tuple(o.shape for o in scene.by_side()))


@dataclass
class GeometryMaps:
    background: Tensor  # [B,H,W] background coverage
    shaded: Tensor  # [B,S,H,W] shading × coverage of each object slot
    coverage: Tensor  # [B,S,H,W] coverage of each slot (silhouettes)


def _trace(objects: tuple[Placed, ...], o: Tensor, d: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sphere-trace rays [N,3] → hit [N] bool, slot [N] long, normal [N,3]."""
    scene_sdf = lambda p: torch.stack([ob.sdf(p) for ob in objects], dim=-1)  # noqa: E731
    bound = max(math.dist(ob.centre, (0.0, 0.0, 0.0)) + ob.scale * SHAPE_RADIUS[ob.shape] for ob in objects)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - bound**2)
    hit = torch.zeros(o.shape[0], dtype=torch.bool, device=o.device)
    slot = torch.zeros(o.shape[0], dtype=torch.long, device=o.device)
    normal = torch.zeros_like(o)
    idx = (disc > 0).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return hit, slot, normal
    oo, dd = o[idx], d[idx]
    sq = disc[idx].sqrt()
    t, t_exit = -b[idx] - sq, -b[idx] + sq
    live = torch.arange(idx.numel())  # rays still marching; converged or escaped ones drop out
    for i in range(iters):
        tl = t[live]
        dist = scene_sdf(oo[live] + tl[:, None] * dd[live]).min(dim=-1).values
        tl = torch.minimum(tl + dist, t_exit[live] + 1e-2)
        t[live] = tl
        if i % 8 == 7:
            live = live[(dist.abs() > 2e-4) & (tl < t_exit[live])]
            if live.numel() == 0:
                break
    p = oo + t[:, None] * dd
    per_slot = scene_sdf(p)
    dist, which = per_slot.min(dim=-1)
    ok = (dist.abs() < 2e-3) & (t < t_exit)
    e = 1e-3  # tetrahedron finite differences for the normal
    ks = p.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])
    n = sum(k * scene_sdf(p + e * k).min(dim=-1).values[:, None] for k in ks)
    hit[idx], slot[idx], normal[idx] = ok, which, F.normalize(n, dim=-1)
    return hit, slot, normal


def render_geometry(
    objects: tuple[Placed, ...], cameras: Cameras, height: int = 64, width: int = 64,
    supersample: int = 2, iters: int = 48,
) -> GeometryMaps:
    """Coverage and shading maps of the placed objects from every camera (vectorised over all rays)."""
    cams = cameras.to("cpu") if cameras.device.type != "cpu" else cameras
    cams = Cameras(*(f.float() for f in (cams.elevation, cams.azimuth, cams.distance, cams.fovy)))
    H, W, S = height * supersample, width * supersample, len(objects)
    o, d = cams.rays(H, W)
    B = o.shape[0]
    hit, slot, normal = _trace(objects, o.reshape(-1, 3), d.reshape(-1, 3), iters)
    light = F.normalize(torch.tensor(LIGHT), dim=0)
    shade = AMBIENT + (1 - AMBIENT) * (normal @ light).clamp(min=0)
    onehot = F.one_hot(slot, S).float() * hit[:, None].float()  # [N,S]
    cov = onehot.reshape(B, H, W, S).permute(0, 3, 1, 2)
    shaded = (onehot * shade[:, None]).reshape(B, H, W, S).permute(0, 3, 1, 2)
    pool = lambda x: F.avg_pool2d(x, supersample) if supersample > 1 else x  # noqa: E731
    cov, shaded = pool(cov), pool(shaded)
    return GeometryMaps(background=1 - cov.sum(1), shaded=shaded, coverage=cov)


def colour_tensor(names: list[str]) -> Tensor:
    return torch.tensor([COLOURS[n] for n in names], dtype=torch.float32)


def colourize(maps: GeometryMaps, colours: Tensor, background=BACKGROUND) -> Tensor:
    """colours [S,3] or [B,S,3] → images [B,3,H,W] in [0,1]."""
    c = colours if colours.dim() == 3 else colours[None].expand(maps.shaded.shape[0], -1, -1)
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(1, 3, 1, 1)
    img = maps.background[:, None] * bg + torch.einsum("bshw,bsc->bchw", maps.shaded, c.float())
    return img.clamp(0, 1)


def render(scene: Scene, cameras: Cameras, height: int = 64, width: int = 64, supersample: int = 2,
           background=BACKGROUND, default_colour: str = "red") -> Tensor:
    """Images [B,3,H,W] in [0,1] of a parsed scene (objects with no colour use default_colour)."""
    maps = render_geometry(scene_layout(scene), cameras, height, width, supersample)
    names = [o.colour or default_colour for o in scene.by_side()]
    return colourize(maps, colour_tensor(names), background).to(cameras.device)


def light_direction() -> tuple[float, ...]:
    n = math.sqrt(sum(x * x for x in LIGHT))
    return tuple(x / n for x in LIGHT)

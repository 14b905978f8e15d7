"""The 3D representation θ: a NeRF with a multi-resolution hash encoding, and its background.

Plain PyTorch (no tiny-cuda-nn), so it runs and trains the same on CPU and GPU. Defaults are the
reference configs' (docs/method.md, "Defaults and why"): 16 levels × 2 features, base resolution 16, max 4096, the
"blob" density bias 10·(1 − |x|/0.5), softplus density, sigmoid colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's spatial hash


@dataclass
class FieldConfig:
    n_levels: int = 16
    n_features: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 4096
    hidden: int = 64
    density_bias: str = "blob"  # blob | none
    blob_density: float = 10.0
    blob_radius: float = 0.5
    bound: float = 1.0  # the scene is [-bound, bound]^3


class _GatherRows(torch.autograd.Function):
    """table[idx] whose backward is one `index_add_`.

    Autograd's own backward of indexing (index_put with accumulate) is not reproducible on CPU, and
    F.embedding's (sort, then sum) is reproducible but sorting millions of indices made it 36 % of
    a render step; CPU `index_add_` sums in index order (bit-equal to F.embedding's result) in
    a tenth of the time. Once differentiable: the normals' double backward never differentiates
    through the gather twice (corner indices carry no gradient)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, grad.shape[1]).index_add_(0, idx, grad), None


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    return _GatherRows.apply(table, idx)


class HashGrid(nn.Module):
    """Multi-resolution hash encoding (Müller et al. 2022), vectorised over levels.

    A level whose (res+1)^3 grid fits in the table is indexed densely (no collisions);
    finer levels are hashed. Output: [N, n_levels · n_features]."""

    def __init__(self, n_levels=16, n_features=2, log2_hashmap_size=19, base_resolution=16, max_resolution=4096):
        super().__init__()
        table = 2**log2_hashmap_size
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        res = [int(math.floor(base_resolution * growth**lvl)) for lvl in range(n_levels)]
        sizes = [min((r + 1) ** 3, table) for r in res]
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.float32), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.n_levels, self.n_features = n_levels, n_features
        self.n_dense = sum((r + 1) ** 3 <= table for r in res)
        self.table_mask = table - 1
        self.table = nn.Parameter(torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4))

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, u: Tensor) -> Tensor:
        """u: [N, 3] in [0, 1] (normalised positions).

        Corner indices and trilinear weights are built per axis ([N, L, 2] each) and combined by
        broadcasting into [N, L, 2, 2, 2]: 3× less integer work than indexing 8 corners × 3 axes."""
        N, L = u.shape[0], self.n_levels
        res = self.resolution  # [L]
        pos = u.clamp(0, 1)[:, None, :] * res[None, :, None]  # [N, L, 3]
        base = torch.minimum(pos.floor(), (res - 1)[None, :, None])
        frac = pos - base
        c = base.long()[..., None] + torch.arange(2, device=u.device)  # [N, L, 3, 2]
        w = torch.stack([1 - frac, frac], dim=-1)  # [N, L, 3, 2]
        nd = self.n_dense  # levels [0, nd) are dense, the rest hashed (resolution grows with the level)
        cd, ch = c[:, :nd], c[:, nd:]
        r1 = (res[:nd].long() + 1)[None, :, None]
        # dense levels: x + y·(r+1) + z·(r+1)²; hashed levels: (x·p0) ^ (y·p1) ^ (z·p2) mod T (T = 2^k)
        dx, dy, dz = cd[:, :, 0], cd[:, :, 1] * r1, cd[:, :, 2] * r1 * r1
        dense_idx = dx[..., :, None, None] + dy[..., None, :, None] + dz[..., None, None, :]
        hx, hy, hz = ch[:, :, 0] * PRIMES[0], ch[:, :, 1] * PRIMES[1], ch[:, :, 2] * PRIMES[2]
        hashed = (hx[..., :, None, None] ^ hy[..., None, :, None] ^ hz[..., None, None, :]) & self.table_mask
        idx = torch.cat([dense_idx, hashed], dim=1) + self.offset[None, :, None, None, None]
        idx = idx.reshape(N, L, 8)
        weight = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]).reshape(N, L, 8)
        feats = _gather_rows(self.table, idx.reshape(-1)).reshape(N, L, 8, self.n_features)
        return (feats * weight[..., None]).sum(2).reshape(N, L * self.n_features)


def mlp(n_in: int, hidden: int, n_out: int, layers: int = 1) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class NeRFField(nn.Module):
    def __init__(self, cfg: FieldConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FieldConfig()
        self.encoding = HashGrid(cfg.n_levels, cfg.n_features, cfg.log2_hashmap_size,
                                 cfg.base_resolution, cfg.max_resolution)
        self.density_mlp = mlp(self.encoding.out_dim, cfg.hidden, 1)
        self.color_mlp = mlp(self.encoding.out_dim, cfg.hidden, 3)

    def density_bias(self, x: Tensor) -> Tensor:
        if self.cfg.density_bias == "blob":
            return self.cfg.blob_density * (1 - x.norm(dim=-1) / self.cfg.blob_radius)
        return torch.zeros_like(x[..., 0])

    def _features(self, x: Tensor) -> Tensor:
        return self.encoding((x / self.cfg.bound + 1) * 0.5)

    def _sigma(self, h: Tensor, x: Tensor) -> Tensor:
        return F.softplus(self.density_mlp(h)[..., 0] + self.density_bias(x))

    def density(self, x: Tensor) -> Tensor:
        """σ(x) ≥ 0 for points [N, 3]."""
        return self._sigma(self._features(x), x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(σ [N], rgb [N, 3] in [0, 1])."""
        h = self._features(x)
        return self._sigma(h, x), torch.sigmoid(self.color_mlp(h))

    def forward_with_normals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(σ, rgb, n) with n = −∇σ/‖∇σ‖ by autograd (create_graph: the orientation loss trains through it)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sigma, rgb = self(x)
            (grad,) = torch.autograd.grad(sigma.sum(), x, create_graph=self.training)
        return sigma, rgb, -F.normalize(grad, dim=-1, eps=1e-12)

    def param_groups(self, lr_grid: float = 1e-2, lr_mlp: float = 1e-3) -> list[dict]:
        mlps = list(self.density_mlp.parameters()) + list(self.color_mlp.parameters())
        return [{"params": list(self.encoding.parameters()), "lr": lr_grid, "name": "grid"},
                {"params": mlps, "lr": lr_mlp, "name": "mlp"}]


class EnvMapBackground(nn.Module):
    """A neural environment map (MLP on the ray direction). During training, with probability
    `random_solid_prob` the whole batch sees one random solid colour instead, so the object cannot
    hide in the background (threestudio's random augmentation)."""

    def __init__(self, hidden: int = 32, random_solid_prob: float = 0.5):
        super().__init__()
        self.net = mlp(3, hidden, 3, layers=2)
        self.random_solid_prob = random_solid_prob

    def forward(self, dirs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.training and self.random_solid_prob > 0:
            draw = torch.rand(4, generator=generator)
            if float(draw[0]) < self.random_solid_prob:
                return draw[1:].to(dirs).expand(*dirs.shape[:-1], 3)
        return torch.sigmoid(self.net(dirs))


class SolidBackground(nn.Module):
    """A fixed colour (white by default: the toy world's renders are on white)."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32), persistent=False)

    def forward(self, dirs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.color.to(dirs).expand(*dirs.shape[:-1], 3)

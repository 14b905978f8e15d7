"""Renderer: exact on analytic fields (CPU dense path), gradients, occupancy skipping, CUDA vs CPU."""
from __future__ import annotations

import math

import pytest
import torch

from dreamdpo.cameras import Cameras, orbit_cameras
from dreamdpo.export import extract_mesh, read_glb, render_turntable, save_mesh, save_turntable
from dreamdpo.errors import UserError
from dreamdpo.field import FieldConfig, HashGrid, NeRFField, SolidBackground
from dreamdpo.render import RenderConfig, Renderer, ray_box


class AnalyticField(NeRFField):
    """σ(x) given by a function, constant colour: for checking the quadrature."""

    def __init__(self, sigma_fn, color=(0.2, 0.4, 0.6)):
        super().__init__(FieldConfig(n_levels=2, log2_hashmap_size=8, max_resolution=32, hidden=8))
        self.sigma_fn, self.color = sigma_fn, torch.tensor(color)

    def density(self, x):
        return self.sigma_fn(x) + 0 * self.encoding.table.sum()

    def forward(self, x):
        return self.density(x), self.color.expand(x.shape[0], 3)


def front_camera(fovy=20.0):
    return Cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([fovy]))


def test_empty_field_renders_the_background():
    r = Renderer(AnalyticField(lambda x: torch.zeros(x.shape[0])), SolidBackground((0.1, 0.9, 0.3)))
    out = r(orbit_cameras(2), 8, 8, need_normals=False)
    assert torch.allclose(out.opacity, torch.zeros_like(out.opacity))
    assert torch.allclose(out.rgb, torch.tensor([0.1, 0.9, 0.3])[None, :, None, None].expand(2, 3, 8, 8))


def test_constant_density_box_gives_beer_lambert_opacity():
    sigma = 0.7
    r = Renderer(AnalyticField(lambda x: torch.full((x.shape[0],), sigma)), SolidBackground((1.0, 1.0, 1.0)),
                 RenderConfig(n_samples=16)).eval()
    cams = front_camera()
    out = r(cams, 9, 9, need_normals=False)
    o, d = cams.rays(9, 9)
    near, far = ray_box(o.reshape(-1, 3), d.reshape(-1, 3), 1.0)
    expected = (1 - torch.exp(-sigma * (far - near).clamp_min(0))).reshape(1, 1, 9, 9)
    assert torch.allclose(out.opacity, expected, atol=1e-5)
    # composited colour: c·α + background·(1 − α)
    col = torch.tensor([0.2, 0.4, 0.6])[None, :, None, None]
    assert torch.allclose(out.rgb, col * expected + (1 - expected), atol=1e-5)
    # central ray crosses the box along x: entry at distance 3 → depth of the first-moment
    assert abs(float(near[40]) - 3.0) < 1e-4


def test_slab_opacity_and_sampling_noise_small():
    # slab |x| < 0.25 with σ = 8 seen from the front: opacity 1 − exp(−8·0.5) ≈ 0.982 on central rays
    r = Renderer(AnalyticField(lambda x: 8.0 * (x[:, 0].abs() < 0.25).float()), SolidBackground(),
                 RenderConfig(n_samples=256)).train()
    out = r(front_camera(5.0), 4, 4, generator=torch.Generator().manual_seed(0), need_normals=False)
    assert torch.allclose(out.opacity, torch.full_like(out.opacity, 1 - math.exp(-4.0)), atol=0.02)


def test_gradients_reach_every_field_parameter_group():
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=10, max_resolution=64, hidden=16))
    r = Renderer(f, SolidBackground(), RenderConfig(n_samples=16))
    out = r(orbit_cameras(1), 16, 16, generator=torch.Generator().manual_seed(0))
    (out.rgb.mean() + out.orientation).backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_blob_normals_point_outward():
    f = NeRFField(FieldConfig(n_levels=2, log2_hashmap_size=8, max_resolution=32, hidden=8)).eval()
    x = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1) * 0.4
    _, _, n = f.forward_with_normals(x)
    assert ((n * x).sum(-1) > 0).float().mean() > 0.95  # the blob's density falls outward


def test_hash_grid_is_trilinear_on_a_dense_level():
    g = HashGrid(n_levels=1, n_features=2, log2_hashmap_size=19, base_resolution=4, max_resolution=4)
    with torch.no_grad():
        g.table.copy_(torch.randn_like(g.table))
    corner = torch.tensor([[0.25, 0.5, 0.75]])  # grid vertex (1, 2, 3) of a 4³ grid: exact table entry
    assert torch.allclose(g(corner)[0], g.table[1 + 2 * 5 + 3 * 25], atol=1e-6)
    mid = torch.tensor([[0.125, 0.5, 0.75]])  # halfway between vertices (0,2,3) and (1,2,3)
    want = 0.5 * (g.table[0 + 2 * 5 + 3 * 25] + g.table[1 + 2 * 5 + 3 * 25])
    assert torch.allclose(g(mid)[0], want, atol=1e-6)


def test_occupancy_skipping_changes_the_image_by_less_than_its_threshold():
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden=16))
    r = Renderer(f, SolidBackground(), RenderConfig(n_samples=32)).eval()
    cams = orbit_cameras(2)
    full = r(cams, 24, 24, need_normals=False).rgb
    r.train().update_occupancy(0)
    r.eval()
    assert bool(r.grid_ready) and 0 < r.estimator.binaries.float().mean() < 0.5
    skipped = r(cams, 24, 24, need_normals=False).rgb
    # a skipped sample has alpha < 1 %; a ray crosses several such cells in the blob's faint fringe
    assert (full - skipped).abs().max() < 0.05 and (full - skipped).abs().mean() < 0.01


def test_turntable_and_mesh_files(tmp_path):
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden=16))
    r = Renderer(f, SolidBackground(), RenderConfig(n_samples=16))
    frames = render_turntable(r, n_frames=6, resolution=16)
    paths = save_turntable(frames, tmp_path / "tt")
    assert len(list((tmp_path / "tt").glob("frame_*.png"))) == 6
    assert all(Path_exists(p) for p in paths.values())
    v, faces, c = extract_mesh(f, resolution=40, threshold=5.0)
    radius = torch.from_numpy(v).norm(dim=-1)
    # the blob bias 10·(1 − |x|/0.5) crosses σ = 5 near |x| ≈ 0.25–0.35 (softplus, small MLP output)
    assert 0.15 < float(radius.median()) < 0.45 and len(faces) > 100
    assert c.min() >= 0 and c.max() <= 1
    save_mesh(tmp_path / "m.glb", v, faces, c)
    gltf, blob = read_glb(tmp_path / "m.glb")
    assert gltf["accessors"][0]["count"] == len(v) and gltf["accessors"][2]["count"] == faces.size
    assert len(blob) >= v.nbytes + c.nbytes + faces.nbytes
    save_mesh(tmp_path / "m.obj", v, faces, c)
    text = (tmp_path / "m.obj").read_text().splitlines()
    assert sum(t.startswith("v ") for t in text) == len(v) and sum(t.startswith("f ") for t in text) == len(faces)
    with pytest.raises(UserError, match="no surface"):
        extract_mesh(f, resolution=16, threshold=1e9)


def Path_exists(p):
    from pathlib import Path

    return Path(p).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nerfacc's marching is CUDA-only)")
def test_cuda_occupancy_path_matches_cpu_dense_path():
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=8, log2_hashmap_size=15, max_resolution=256, hidden=32)).cuda()
    cams = orbit_cameras(4).to("cuda")
    dense = Renderer(f, SolidBackground(), RenderConfig(n_samples=512, force_dense=True)).cuda().eval()
    grid = Renderer(f, SolidBackground(), RenderConfig(max_samples=512)).cuda().eval()
    grid.train()
    for step in range(0, 256, 16):
        grid.update_occupancy(step)
    grid.eval()
    with torch.no_grad():
        a = dense(cams, 64, 64, need_normals=False)
        b = grid(cams, 64, 64, need_normals=False)
    err = (a.rgb - b.rgb).abs()
    print(f"CUDA vs dense: max |Δrgb| {err.max():.4f}, mean {err.mean():.5f}; "
          f"opacity mean {a.opacity.mean():.4f} vs {b.opacity.mean():.4f}")
    assert err.mean() < 0.01 and err.max() < 0.1
    # the grid skips cells with σ·step < 0.01 (nerfacc's rule): the blob's faint fringe is dropped,
    # measured on an H100: mean opacity 0.2140 dense vs 0.2015 marched
    assert abs(float(a.opacity.mean() - b.opacity.mean())) < 0.02

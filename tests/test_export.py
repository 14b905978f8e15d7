"""Export: turntable files, contact sheet, marching-cubes mesh (radius, winding, the automatic level and its
override), OBJ and GLB round trips through trimesh."""
from __future__ import annotations

from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from dreamdpo.config import load_config
from dreamdpo.errors import UserError
from dreamdpo.export import (
    auto_threshold,
    contact_sheet,
    density_grid,
    extract_mesh,
    render_turntable,
    save_mesh,
    save_turntable,
    turntable_views,
)
from dreamdpo.field import EnvMapBackground, FieldConfig, NeRFField
from dreamdpo.render import RenderConfig, Renderer

SMALL = FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden=16)


class SphereField(torch.nn.Module):
    """What extract_mesh reads of a NeRF field (cfg.bound, density, forward → σ and colour), with an analytic
    σ: `peak` inside a ball of `radius`, falling off over a few hundredths like a trained field's edge."""

    def __init__(self, radius: float = 0.5, peak: float = 100.0, width: float = 0.02, bound: float = 1.0):
        super().__init__()
        self.cfg, self.radius, self.peak, self.width = SimpleNamespace(bound=bound), radius, peak, width
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the field a device

    def density(self, x):
        return self.peak * torch.sigmoid((self.radius - x.norm(dim=-1)) / self.width)

    def forward(self, x):
        return self.density(x), (x * 0.5 + 0.5).clamp(0, 1)

    def radius_at(self, level: float) -> float:
        """Where σ = level: the sphere a correct marching cubes must find."""
        return self.radius - self.width * float(np.log(level / (self.peak - level)))


@pytest.fixture(scope="module")
def blob_field():
    torch.manual_seed(0)
    return NeRFField(SMALL)


@pytest.fixture(scope="module")
def mesh(blob_field):
    return extract_mesh(blob_field, resolution=40, threshold=5.0)


def test_turntable_files_frame_count_and_white_background(tmp_path, blob_field):
    r = Renderer(blob_field, EnvMapBackground(), RenderConfig(n_samples=16)).train()
    frames = render_turntable(r, n_frames=6, resolution=16)
    assert len(frames) == 6 and frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    assert (frames[0][0, 0] == 255).all()  # a corner pixel misses the blob: white, not the env map
    assert r.training and isinstance(r.background, EnvMapBackground)  # restored afterwards
    paths = save_turntable(frames, tmp_path / "tt")
    assert len(list((tmp_path / "tt").glob("frame_*.png"))) == 6
    assert iio.imread(paths["contact_sheet"]).shape == (2 * 16, 4 * 16, 3)
    assert np.array_equal(iio.imread(tmp_path / "tt" / "frame_003.png"), frames[3])


def test_gif_holds_every_frame(tmp_path):
    # distinct frames (Pillow merges identical consecutive GIF frames, as an untrained blob's would be)
    frames = [np.full((8, 8, 3), 20 * i, dtype=np.uint8) for i in range(7)]
    paths = save_turntable(frames, tmp_path)
    gif = iio.imread(paths["gif"], index=None)
    assert gif.shape[0] == 7 and np.array_equal(gif[4][..., :3], frames[4])
    assert "mp4" not in paths or (tmp_path / "turntable.mp4").stat().st_size > 0


def test_contact_sheet_picks_evenly_and_pads_white():
    frames = [np.full((2, 3, 3), i, dtype=np.uint8) for i in range(10)]
    sheet = contact_sheet(frames, n=6, columns=4)
    assert sheet.shape == (4, 12, 3)
    firsts = [int(sheet[r * 2, c * 3, 0]) for r in range(2) for c in range(4)]
    assert firsts == [0, 2, 4, 5, 7, 9, 255, 255]


def test_turntable_views_are_the_contact_sheets_frames_in_a_strip():
    frames = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(10)]
    strip = turntable_views(frames, n=6)
    assert strip.shape == (2, 12, 3)  # square views side by side: the log's candidate layout
    assert [int(strip[0, 2 * k, 0]) for k in range(6)] == [0, 2, 4, 5, 7, 9]  # the contact sheet's picks


def test_mesh_of_the_blob_is_a_closed_outward_sphere(mesh):
    v, faces, c = mesh
    radius = np.linalg.norm(v, axis=1)
    # the blob bias 10·(1 − |x|/0.5) crosses σ = 5 near |x| ≈ 0.25 (plus a small MLP output)
    assert 0.15 < float(np.median(radius)) < 0.4 and radius.std() < 0.05 and len(faces) > 100
    assert c.min() >= 0 and c.max() <= 1 and c.shape == v.shape
    # closed: every edge is shared by exactly two faces; outward winding: positive signed volume ≈ 4/3·π·r³
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()
    a, b, cc = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    volume = float(np.einsum("ij,ij->i", a, np.cross(b, cc)).sum() / 6)
    assert volume > 0 and abs(volume / (4 / 3 * np.pi * np.median(radius) ** 3) - 1) < 0.1


def test_automatic_level_gives_a_closed_sphere_where_the_density_falls():
    sphere = SphereField()
    level = auto_threshold(density_grid(sphere, 48))
    assert 0 < level < sphere.peak
    v, faces, c = extract_mesh(sphere, resolution=48)
    mesh = trimesh.Trimesh(v, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0  # closed, normals outward
    r = np.linalg.norm(v, axis=1)
    assert abs(float(np.median(r)) - sphere.radius_at(level)) < 0.02 and abs(float(np.median(r)) - 0.5) < 0.05
    assert np.allclose(c, v * 0.5 + 0.5, atol=1e-6)  # colours are the field's at each vertex


def test_mesh_is_closed_where_the_object_touches_the_scene_box():
    v, faces, _ = extract_mesh(SphereField(radius=1.3), resolution=24)  # the ball fills the box's corners out
    assert trimesh.Trimesh(v, faces, process=False).is_watertight
    assert np.abs(v).max() <= 1.0 + 1e-5  # the surface closes on the box, not beyond it


def test_threshold_override_is_honoured():
    sphere = SphereField()
    for level in (10.0, 90.0):
        v, _, _ = extract_mesh(sphere, resolution=48, threshold=level)
        assert abs(float(np.median(np.linalg.norm(v, axis=1))) - sphere.radius_at(level)) < 0.02


@pytest.mark.parametrize("suffix", [".glb", ".obj"])
def test_mesh_file_loads_back_with_trimesh(tmp_path, mesh, suffix):
    v, faces, c = mesh
    save_mesh(tmp_path / f"m{suffix}", v, faces, c)
    back = trimesh.load(tmp_path / f"m{suffix}", force="mesh", process=False)
    assert len(back.vertices) == len(v) and np.allclose(back.vertices, v, atol=1e-5)
    assert np.array_equal(back.faces, faces)
    assert np.allclose(back.visual.vertex_colors[:, :3] / 255.0, c, atol=0.5 / 255 + 1e-6)


def test_config_passes_the_threshold_to_the_exported_mesh(tmp_path, blob_field):
    from dreamdpo.optimize import export_outputs

    renderer = Renderer(blob_field, EnvMapBackground(), RenderConfig(n_samples=8))
    small = ["test_views=1", "test_resolution=8", "mesh_resolution=16", "device=cpu"]
    cfg = load_config(None, {}, [*small, "export.mesh_threshold=5.0"])
    outputs, _, _ = export_outputs(cfg, renderer, blob_field, tmp_path / "ok")
    assert len(trimesh.load(outputs["mesh.glb"], force="mesh").vertices) == len(extract_mesh(blob_field, 16, 5.0)[0])
    cfg = load_config(None, {}, [*small, "export.mesh_threshold=1000000.0"])
    with pytest.warns(UserWarning, match=r"no mesh written: .*export\.mesh_threshold=") as w:
        outputs, _, _ = export_outputs(cfg, renderer, blob_field, tmp_path / "none")
    assert "mesh.glb" not in outputs and "\n" not in str(w[0].message)


@pytest.mark.parametrize("value", ["-1", "0", ".nan", ".inf", "dense", "[1, 2]"])
def test_bad_threshold_is_one_line_error(value):
    with pytest.raises(UserError, match="mesh_threshold") as e:
        load_config(None, {}, [f"export.mesh_threshold={value}"])
    assert "\n" not in str(e.value)


def test_bad_input_gives_one_line_errors(tmp_path, blob_field, mesh):
    empty = NeRFField(FieldConfig(n_levels=2, log2_hashmap_size=8, max_resolution=32, hidden=8, density_bias="none"))
    with torch.no_grad():
        for p in empty.density_mlp.parameters():
            p.zero_()
        empty.density_mlp[-1].bias.fill_(-20.0)  # σ ≈ 0 everywhere: nothing to mesh
    for field, threshold in ((empty, None), (blob_field, 1e9)):
        with pytest.raises(UserError, match="no surface.*export.mesh_threshold=") as e:
            extract_mesh(field, resolution=16, threshold=threshold)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="use .obj or .glb"):
        save_mesh(tmp_path / "m.ply", *mesh)
    with pytest.raises(UserError, match="no turntable frames"):
        save_turntable([], tmp_path / "none")

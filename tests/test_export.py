"""Export: turntable files, contact sheet, marching-cubes mesh (radius, winding), OBJ and GLB round trips."""
from __future__ import annotations

import struct

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dreamdpo.errors import UserError
from dreamdpo.export import contact_sheet, extract_mesh, read_glb, render_turntable, save_mesh, save_turntable
from dreamdpo.field import EnvMapBackground, FieldConfig, NeRFField
from dreamdpo.render import RenderConfig, Renderer

SMALL = FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden=16)


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


def test_glb_round_trip(tmp_path, mesh):
    v, faces, c = mesh
    save_mesh(tmp_path / "m.glb", v, faces, c)
    gltf, blob = read_glb(tmp_path / "m.glb")
    acc, views = gltf["accessors"], gltf["bufferViews"]
    assert gltf["asset"]["version"] == "2.0" and gltf["buffers"][0]["byteLength"] <= len(blob)
    assert acc[0]["count"] == len(v) and acc[1]["count"] == len(v) and acc[2]["count"] == faces.size
    assert (np.array(acc[0]["min"]) <= v.min(0) + 1e-6).all() and (np.array(acc[0]["max"]) >= v.max(0) - 1e-6).all()

    def read(i, dtype, width):
        view = views[acc[i]["bufferView"]]
        return np.frombuffer(blob, dtype, acc[i]["count"] * width, view["byteOffset"]).reshape(-1, width)

    assert np.array_equal(read(0, "<f4", 3), v) and np.array_equal(read(1, "<f4", 3), c)
    assert np.array_equal(read(2, "<u4", 1).reshape(-1, 3), faces)
    with open(tmp_path / "m.glb", "rb") as fh:  # chunks are 4-byte aligned, as the spec requires
        _, _, total = struct.unpack("<III", fh.read(12))
    assert total % 4 == 0


def test_obj_round_trip(tmp_path, mesh):
    v, faces, c = mesh
    save_mesh(tmp_path / "m.obj", v, faces, c)
    lines = (tmp_path / "m.obj").read_text().splitlines()
    vs = np.array([[float(t) for t in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
    fs = np.array([[int(t) for t in ln.split()[1:]] for ln in lines if ln.startswith("f ")])
    assert np.allclose(vs[:, :3], v, atol=1e-5) and np.allclose(vs[:, 3:], c, atol=1e-4)
    assert np.array_equal(fs - 1, faces)


def test_bad_input_gives_one_line_errors(tmp_path, blob_field, mesh):
    empty = NeRFField(FieldConfig(n_levels=2, log2_hashmap_size=8, max_resolution=32, hidden=8, density_bias="none"))
    with torch.no_grad():
        for p in empty.density_mlp.parameters():
            p.zero_()
        empty.density_mlp[-1].bias.fill_(-20.0)  # σ ≈ 0 everywhere: nothing to mesh
    for field, threshold in ((empty, None), (blob_field, 1e9)):
        with pytest.raises(UserError, match="no surface") as e:
            extract_mesh(field, resolution=16, threshold=threshold)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="use .obj or .glb"):
        save_mesh(tmp_path / "m.ply", *mesh)
    with pytest.raises(UserError, match="no turntable frames"):
        save_turntable([], tmp_path / "none")
    (tmp_path / "bad.glb").write_bytes(b"not a glb file")
    with pytest.raises(UserError, match="not a glTF"):
        read_glb(tmp_path / "bad.glb")

"""What a finished run leaves behind: a turntable of test views and a coloured mesh.

The mesh comes from marching cubes on the density grid; OBJ and GLB are written by hand (no
trimesh dependency): a GLB is a JSON chunk plus one binary buffer.
"""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from dreamdpo.cameras import orbit_cameras
from dreamdpo.errors import UserError
from dreamdpo.field import SolidBackground
from dreamdpo.images import to_uint8


@torch.no_grad()
def render_turntable(renderer, n_frames: int = 40, resolution: int = 128, elevation: float = 15.0,
                     background: torch.nn.Module | None = None) -> list[np.ndarray]:
    """n_frames views around the object (uint8 [H, W, 3]), in eval mode, on a solid white background
    unless another `background` module is given (the neural environment map is a training aid)."""
    was_training = renderer.training
    trained_background = renderer.background
    renderer.background = background if background is not None else SolidBackground()
    renderer.eval()
    device = next(renderer.field.parameters()).device
    renderer.background.to(device)
    cams = orbit_cameras(n_frames, elevation=elevation).to(device)
    try:
        frames = [to_uint8(renderer(cams[i], resolution, resolution, need_normals=False).rgb)[0]
                  for i in range(n_frames)]
    finally:
        renderer.background = trained_background
        renderer.train(was_training)
    return frames


def contact_sheet(frames: list[np.ndarray], n: int = 8, columns: int = 4) -> np.ndarray:
    """n frames evenly picked from the turntable, in a grid `columns` wide (white padding)."""
    pick = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    cols = min(columns, len(pick))
    rows = -(-len(pick) // cols)
    h, w, _ = frames[0].shape
    sheet = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for k, i in enumerate(pick):
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frames[i]
    return sheet


def has_video_backend() -> bool:
    """An MP4 needs imageio's ffmpeg or PyAV plugin; neither is a dependency (the GIF always works)."""
    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def save_turntable(frames: list[np.ndarray], out_dir: str | Path, fps: int = 12) -> dict[str, str]:
    """Frames as PNGs, an animated GIF, a contact sheet, and an MP4 when a video backend is installed."""
    if not frames:
        raise UserError("no turntable frames to save; render at least one test view")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        iio.imwrite(out / f"frame_{i:03d}.png", f)
    iio.imwrite(out / "turntable.gif", np.stack(frames), duration=round(1000 / fps), loop=0)
    iio.imwrite(out / "contact_sheet.png", contact_sheet(frames))
    paths = {"frames": str(out), "gif": str(out / "turntable.gif"), "contact_sheet": str(out / "contact_sheet.png")}
    if has_video_backend():
        iio.imwrite(out / "turntable.mp4", np.stack(frames), fps=fps)
        paths["mp4"] = str(out / "turntable.mp4")
    return paths


@torch.no_grad()
def extract_mesh(field, resolution: int = 128, threshold: float | None = None, chunk: int = 262_144):
    """Marching cubes on σ over the scene box → (vertices [V,3], faces [F,3], colours [V,3] in [0,1]).
    threshold None → 25 (≈ 1 − exp(−25·Δ) opacity per voxel at 128³), the usual NeRF-to-mesh level."""
    from skimage.measure import marching_cubes

    b = field.cfg.bound
    device = next(field.parameters()).device
    lin = torch.linspace(-b, b, resolution, device=device)
    grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    sigma = torch.cat([field.density(grid[i:i + chunk]) for i in range(0, len(grid), chunk)])
    vol = sigma.reshape(resolution, resolution, resolution).float().cpu().numpy()
    level = 25.0 if threshold is None else threshold
    if not (vol.min() < level < vol.max()):
        raise UserError(f"the density never crosses {level:g} (range {vol.min():.3g}–{vol.max():.3g}): "
                        "the field holds no surface; train longer or pass a lower threshold")
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=(2 * b / (resolution - 1),) * 3)
    verts = verts - b
    v = torch.from_numpy(verts.astype(np.float32)).to(device)
    colors = torch.cat([field(v[i:i + chunk])[1] for i in range(0, len(v), chunk)]).cpu().numpy()
    return verts.astype(np.float32), faces[:, ::-1].astype(np.uint32), colors.astype(np.float32)


def save_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    path = Path(path)
    if path.suffix == ".obj":
        _write_obj(path, vertices, faces, colors)
    elif path.suffix == ".glb":
        _write_glb(path, vertices, faces, colors)
    else:
        raise UserError(f"unknown mesh format '{path.suffix}'; use .obj or .glb")


def _write_obj(path: Path, v: np.ndarray, f: np.ndarray, c: np.ndarray) -> None:
    with open(path, "w") as fh:
        fh.write("# dreamdpo mesh: vertex colours as 'v x y z r g b'\n")
        np.savetxt(fh, np.concatenate([v, c], axis=1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
        np.savetxt(fh, f.astype(np.int64) + 1, fmt="f %d %d %d")


def _write_glb(path: Path, v: np.ndarray, f: np.ndarray, c: np.ndarray) -> None:
    """glTF 2.0 binary: POSITION (float32), COLOR_0 (float32 RGB), indices (uint32), one mesh."""
    pos, col, idx = v.astype("<f4").tobytes(), c.astype("<f4").tobytes(), f.astype("<u4").tobytes()
    views, offset = [], 0
    for blob, target in ((pos, 34962), (col, 34962), (idx, 34963)):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        offset += len(blob)
    gltf = {
        "asset": {"version": "2.0", "generator": "dreamdpo"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2}]}],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(v), "type": "VEC3",
             "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": len(c), "type": "VEC3"},
            {"bufferView": 2, "componentType": 5125, "count": f.size, "type": "SCALAR"},
        ],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = pos + col + idx
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<III", 0x46546C67, 2, total))
        fh.write(struct.pack("<II", len(js), 0x4E4F534A) + js)
        fh.write(struct.pack("<II", len(binary), 0x004E4942) + binary)


def read_glb(path: str | Path) -> tuple[dict, bytes]:
    """(glTF JSON, binary buffer) of a GLB file: enough to check what save_mesh wrote."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != 0x46546C67 or version != 2 or total != len(data):
        raise UserError(f"{path} is not a glTF 2.0 binary file")
    jlen, _ = struct.unpack_from("<II", data, 12)
    gltf = json.loads(data[20:20 + jlen])
    blen, _ = struct.unpack_from("<II", data, 20 + jlen)
    return gltf, data[28 + jlen:28 + jlen + blen]

"""What a finished run leaves behind: a turntable of test views and a coloured mesh.

The mesh comes from marching cubes on the density grid, at a level chosen from the grid's opacity
histogram (or export.mesh_threshold); trimesh writes it as OBJ and GLB.
"""
from __future__ import annotations

import importlib.util
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


def turntable_picks(count: int, n: int = 8) -> np.ndarray:
    """Indices of n frames evenly picked from a turntable of `count` frames (the contact sheet's and
    the arena's views)."""
    return np.linspace(0, count - 1, min(n, count)).round().astype(int)


def turntable_views(frames: list[np.ndarray], n: int = 8) -> np.ndarray:
    """The contact sheet's frames as one strip of square views side by side: the log's candidate
    layout (dreamdpo.images.views_png), so an arena pair shows both runs' views in the same grid and
    zooms them view by view (db/arena.py)."""
    return np.concatenate([frames[i] for i in turntable_picks(len(frames), n)], axis=1)


def contact_sheet(frames: list[np.ndarray], n: int = 8, columns: int = 4) -> np.ndarray:
    """n frames evenly picked from the turntable, in a grid `columns` wide (white padding)."""
    pick = turntable_picks(len(frames), n)
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


MIN_OPACITY = 0.05  # a grid whose most opaque voxel is fainter than this holds no surface
OPACITY_STEP = 1 / 64  # length (scene units) over which voxel opacity is measured: one voxel at 128³ in [-1, 1]³


@torch.no_grad()
def density_grid(field, resolution: int, chunk: int = 262_144) -> np.ndarray:
    """σ sampled on a resolution³ lattice over the scene box [-bound, bound]³ (float32, ij-indexed)."""
    b = field.cfg.bound
    device = next(field.parameters()).device
    lin = torch.linspace(-b, b, resolution, device=device)
    grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    sigma = torch.cat([field.density(grid[i:i + chunk]) for i in range(0, len(grid), chunk)])
    return sigma.reshape(resolution, resolution, resolution).float().cpu().numpy()


def auto_threshold(sigma: np.ndarray) -> float | None:
    """The density level of the surface, from the opacity histogram of the grid; None if it holds no surface.

    Rule: map σ to the opacity of a fixed step, α = 1 − exp(−σ·OPACITY_STEP) (saturating, so a few very
    dense voxels do not drag the level up, and independent of the mesh resolution); split the α histogram
    into "empty" and "object" with Otsu's method (the level that best separates the two modes); return the
    σ of that α. A fuzzy toy field whose σ never reaches the old fixed level 25 still gets a surface at its
    own halo/core boundary. If the most opaque voxel is below MIN_OPACITY, there is nothing to mesh."""
    from skimage.filters import threshold_otsu

    alpha = -np.expm1(-np.clip(sigma, 0, None) * OPACITY_STEP)
    if alpha.max() < MIN_OPACITY:
        return None
    level = float(threshold_otsu(alpha, nbins=256))
    return float(-np.log1p(-level) / OPACITY_STEP)


@torch.no_grad()
def extract_mesh(field, resolution: int = 128, threshold: float | None = None, chunk: int = 262_144):
    """Marching cubes on σ over the scene box → (vertices [V,3], faces [F,3], colours [V,3] in [0,1]).

    threshold None → `auto_threshold` (Otsu on the opacity histogram); a number (export.mesh_threshold)
    is used as it is. The grid is padded with one empty voxel on each side, so the surface is always
    closed (watertight), even where the object touches the scene box: there it is capped on the box."""
    from skimage.measure import marching_cubes

    b = field.cfg.bound
    device = next(field.parameters()).device
    vol = density_grid(field, resolution, chunk)
    level = auto_threshold(vol) if threshold is None else threshold
    if level is None or not (vol.min() < level < vol.max()):
        shown = "the automatic level" if level is None else f"{level:g}"
        raise UserError(f"the density never crosses {shown} (range {vol.min():.3g}–{vol.max():.3g}): no surface; "
                        f"train longer or pass export.mesh_threshold=<a value inside that range>")
    step = 2 * b / (resolution - 1)
    vol = np.pad(vol, 1, constant_values=0.0)
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=(step,) * 3)
    verts = np.clip(verts - b - step, -b, b).astype(np.float32)  # the padding's wall lies on the box
    v = torch.from_numpy(verts).to(device)
    colors = torch.cat([field(v[i:i + chunk])[1] for i in range(0, len(v), chunk)]).cpu().numpy()
    return verts, faces[:, ::-1].astype(np.uint32), colors.astype(np.float32)


def save_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """OBJ (vertex colours as 'v x y z r g b') or GLB (glTF 2.0 binary, COLOR_0), written by trimesh."""
    import trimesh

    path = Path(path)
    if path.suffix not in (".obj", ".glb"):
        raise UserError(f"unknown mesh format '{path.suffix}'; use .obj or .glb")
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=np.round(colors * 255).astype(np.uint8),
                           process=False)  # process=False: keep vertices and faces exactly as extracted
    mesh.export(path)

"""The bank of renders the toy prior denoises with, built once and cached on disk.

Renders are linear in the objects' colours (see render.py), so the bank stores geometry only:
for each bank camera (drawn like `cameras.random_cameras`) and each shape layout (5 single
shapes, 25 ordered left/right pairs) the background-coverage map B and the shaded-coverage map
A_s of every object slot. Any colouring is then exact and free: image = B·white + Σ_s A_s·colour_s.
So the bank holds every (colour, shape) single object and every ordered two-object scene
(8·5 + 64·25 = 1640 images per camera) in 30 geometry renders per camera. The per-word banks
(all scenes containing "red", all containing "cube", …) and the unconditional bank are views
(masks) of it; see prior.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from dreamdpo.cameras import CameraConfig, Cameras, random_cameras
from dreamdpo.toyworld.render import AMBIENT, LIGHT, PAIR_SCALE, SIDE_OFFSET, layout, render_geometry
from dreamdpo.toyworld.vocab import COLOURS, SHAPES

BANK_VERSION = 2  # bump when rendering changes, so old caches are not reused


@dataclass(frozen=True)
class BankConfig:
    n_cameras: int = 96
    resolution: int = 64
    supersample: int = 2
    seed: int = 0
    camera: CameraConfig = field(default_factory=CameraConfig)

    def key(self) -> str:
        blob = json.dumps({"v": BANK_VERSION, "cfg": dataclasses.asdict(self), "light": LIGHT, "ambient": AMBIENT,
                           "colours": COLOURS, "shapes": SHAPES, "pair": (SIDE_OFFSET, PAIR_SCALE)},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def single_layouts() -> list[tuple[str, ...]]:
    return [(s,) for s in SHAPES]


def pair_layouts() -> list[tuple[str, ...]]:
    return list(product(SHAPES, SHAPES))


@dataclass
class LayoutBank:
    """Geometry of one layout kind at every bank camera."""

    shapes: list[tuple[str, ...]]  # G layouts, each 1 or 2 shape names (left, right)
    background: Tensor  # [C,G,H,W] float16
    shaded: Tensor  # [C,G,S,H,W] float16

    @property
    def n_slots(self) -> int:
        return self.shaded.shape[2]


@dataclass
class Bank:
    config: BankConfig
    cameras: Cameras  # C bank cameras (the camera params of every stored image)
    single: LayoutBank
    pair: LayoutBank
    path: Path | None = None
    build_seconds: float = 0.0
    loaded_from_cache: bool = False

    def layout_bank(self, n_objects: int) -> LayoutBank:
        return self.single if n_objects == 1 else self.pair

    def images(self, n_objects: int, camera: int, layout_index: int, colours: list[str]) -> Tensor:
        """One stored image, materialised: [3,H,W] in [0,1] (for inspection and tests)."""
        lb = self.layout_bank(n_objects)
        c = torch.tensor([COLOURS[n] for n in colours])
        img = lb.background[camera, layout_index].float()[None] + torch.einsum(
            "shw,sc->chw", lb.shaded[camera, layout_index].float(), c)
        return img.clamp(0, 1)


def cache_dir(explicit: str | Path | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    home = os.environ.get("DREAMDPO_HOME")
    return Path(home) / "toyworld" if home else Path.home() / ".cache" / "dreamdpo" / "toyworld"


def _render_layouts(shapes: list[tuple[str, ...]], cams: Cameras, cfg: BankConfig, bar) -> LayoutBank:
    bgs, shaded = [], []
    for s in shapes:
        maps = render_geometry(layout(s), cams, cfg.resolution, cfg.resolution, cfg.supersample)
        bgs.append(maps.background.half())
        shaded.append(maps.shaded.half())
        bar.update(1)
    return LayoutBank(shapes, torch.stack(bgs, 1), torch.stack(shaded, 1))


def build_bank(config: BankConfig | None = None, cache: str | Path | None = None, progress: bool = True) -> Bank:
    """Load the bank for `config` from the cache, or render it (deterministic from config.seed) and save it."""
    cfg = config or BankConfig()
    path = cache_dir(cache) / f"bank-{cfg.key()}.pt"
    if path.exists():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return Bank(cfg, Cameras(*data["cameras"]), LayoutBank(single_layouts(), *data["single"]),
                        LayoutBank(pair_layouts(), *data["pair"]), path, data["build_seconds"], True)
        except Exception:  # damaged or partial cache file: rebuild it
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    cams = random_cameras(dataclasses.replace(cfg.camera, n_views=1), cfg.n_cameras,
                          torch.Generator().manual_seed(cfg.seed))
    singles, pairs = single_layouts(), pair_layouts()
    with tqdm(total=len(singles) + len(pairs), desc="toy bank", unit="layout", disable=not progress) as bar:
        single = _render_layouts(singles, cams, cfg, bar)
        pair = _render_layouts(pairs, cams, cfg, bar)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"cameras": [cams.elevation, cams.azimuth, cams.distance, cams.fovy],
                "single": [single.background, single.shaded], "pair": [pair.background, pair.shaded],
                "build_seconds": seconds}, tmp)
    os.replace(tmp, path)  # atomic: concurrent builders never see a half-written file
    return Bank(cfg, cams, single, pair, path, seconds, False)

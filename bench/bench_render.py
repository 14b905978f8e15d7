"""Renderer timings: one training render (forward + backward into θ) per configuration.

    python bench/bench_render.py [--device cpu|cuda] [--repeats 10] [--threads N]

Field: the small CPU config (8 levels × 2 features, 2^14 table, max resolution 256, hidden 32) and,
on CUDA, also the paper's (16 levels, 2^19 table, max 4096, hidden 64). One camera, a random
training view, the blob-initialised field (what the first steps of a run see). Each row is the
median (min) in ms over `--repeats` runs after 2 warm-ups, for:
- fwd+bwd: render, then `rgb.mean().backward()` (the normals are not asked for);
- fwd+bwd+normals: also the normals and the orientation loss (autograd normals with create_graph,
  so the backward is a double backward), `(rgb.mean() + orientation).backward()`;
- fwd no-grad: an eval render (turntable frames).
The dense CPU path is measured before and after an occupancy-grid update (skipping empty cells).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dreamdpo.cameras import CameraConfig, random_cameras
from dreamdpo.field import FieldConfig, NeRFField, SolidBackground
from dreamdpo.render import RenderConfig, Renderer

SMALL = FieldConfig(n_levels=8, log2_hashmap_size=14, max_resolution=256, hidden=32)
PAPER = FieldConfig()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out), min(out)


def bench(field_cfg: FieldConfig, render_cfg: RenderConfig, res: int, device: torch.device, repeats: int,
          occupancy: bool) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    field = NeRFField(field_cfg).to(device)
    renderer = Renderer(field, SolidBackground(), render_cfg).to(device).train()
    if occupancy:
        for step in range(0, 64, 16):
            renderer.update_occupancy(step)
    cams = random_cameras(CameraConfig(), 1, torch.Generator().manual_seed(0)).to(device)

    def train(normals: bool):
        def run():
            field.zero_grad(set_to_none=True)
            out = renderer(cams, res, res, generator=torch.Generator().manual_seed(1), need_normals=normals)
            (out.rgb.mean() + (out.orientation if normals else 0)).backward()
        return run

    def render_eval():
        renderer.eval()
        with torch.no_grad():
            renderer(cams, res, res, need_normals=False)
        renderer.train()

    return {"fwd+bwd": timed(train(False), device, repeats),
            "fwd+bwd+normals": timed(train(True), device, repeats),
            "fwd no-grad": timed(render_eval, device, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    rows = []
    if device.type == "cpu":
        for res, samples in ((64, 32), (64, 64), (128, 64)):
            for occ in (False, True):
                rows.append((f"small field, {res}×{res}, {samples} dense samples"
                             + (", occupancy skipping" if occ else ""),
                             bench(SMALL, RenderConfig(n_samples=samples), res, device, args.repeats, occ)))
    else:
        for label, fcfg in (("small field", SMALL), ("paper field", PAPER)):
            for res in (64, 128, 256):
                rows.append((f"{label}, {res}×{res}, occupancy grid (512 max samples)",
                             bench(fcfg, RenderConfig(), res, device, args.repeats, True)))
        rows.append(("small field, 64×64, dense 512 samples (force_dense)",
                     bench(SMALL, RenderConfig(n_samples=512, force_dense=True), 64, device, args.repeats, True)))
    keys = list(rows[0][1])
    print("| configuration | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, r in rows:
        print(f"| {label} | " + " | ".join(f"{r[k][0]:.0f} ({r[k][1]:.0f})" for k in keys) + " |")


if __name__ == "__main__":
    main()

"""Is the finished object as crisp as the candidates that were judged? One default toy run, measured.

    python bench/bench_sharpness.py [--prompt "a red cube"] [--out DIR] [--every 5]

Runs the toy world's default run (the settings `dreamdpo run --prompt ...` uses, without the log),
keeps every `every`-th judged pair with its cameras, and scores with the evaluator (never the judge):
the finished turntable, the candidates people/judges saw (a and b), and the renders of those steps.
scene_iou and edge_sharpness are against the analytic render of the intended scene (evaluate.py).
Then times the mesh export of the finished field at the run's mesh resolution and at 128³.
Prints markdown rows for bench/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from dreamdpo import export
from dreamdpo.cameras import Cameras
from dreamdpo.config import load_config
from dreamdpo.field import NeRFField
from dreamdpo.optimize import optimize
from dreamdpo.recording import Recorder
from dreamdpo.toyworld.evaluate import evaluate_views


class KeepCandidates(Recorder):
    """Keeps (step, images a, images b, render, cameras) of every `every`-th judged pair."""

    def __init__(self, every: int):
        self.every, self.kept = every, []

    def record(self, judgement, images_a, images_b, context):
        if context.step % self.every == 0:
            self.kept.append((context.step, images_a.detach().cpu(), images_b.detach().cpu(),
                              context.render.detach().cpu(), Cameras.from_dicts(context.cameras)))


def scores(kept: list, pick: int, prompt: str) -> dict:
    """Mean evaluator scores of member `pick` (1 = a, 2 = b, 3 = the render) over the kept steps."""
    evs = [evaluate_views(k[pick], k[4], prompt) for k in kept]
    return {key: sum(e[key] for e in evs) / len(evs) for key in ("scene_iou", "edge_sharpness", "alignment")}


def row(name: str, ev: dict) -> str:
    return f"| {name} | {ev['scene_iou']:.3f} | {ev['edge_sharpness']:.3f} | {ev['alignment']:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--out", default="outputs/bench-sharpness")
    ap.add_argument("--every", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(None, {"prompt": args.prompt, "out": args.out, "device": "cpu"}, [])
    keep = KeepCandidates(args.every)
    t0 = time.perf_counter()
    res = optimize(cfg, recorder=keep, progress=False)
    wall = time.perf_counter() - t0
    late = [k for k in keep.kept if k[0] >= cfg.steps * 2 // 3]
    print(f"run: {cfg.steps} steps in {wall:.0f} s (test views {cfg.test_views} × {cfg.test_resolution} px, "
          f"mesh {'written' if 'mesh.glb' in res.outputs else 'NOT written'})")
    print("| views | scene IoU | edge sharpness | alignment |\n|---|---|---|---|")
    print(row(f"finished turntable ({cfg.test_resolution} px)", evaluate_views(res.test_views, res.test_cameras,
                                                                               args.prompt)))
    for name, kept in ((f"all judged steps (every {args.every}th)", keep.kept), ("last third of the run", late)):
        print(row(f"candidates a, {name}", scores(kept, 1, args.prompt)))
        print(row(f"candidates b, {name}", scores(kept, 2, args.prompt)))
        print(row(f"renders, {name}", scores(kept, 3, args.prompt)))
    field = NeRFField(cfg.field)
    state = torch.load(res.out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    field.load_state_dict({k[6:]: v for k, v in state["renderer"].items() if k.startswith("field.")})
    for r in sorted({cfg.mesh_resolution, 128}):
        t = time.perf_counter()
        mesh = export.extract_mesh(field, resolution=r, threshold=cfg.export.mesh_threshold)
        for suffix in (".obj", ".glb"):
            export.save_mesh(res.out_dir / f"bench-mesh{suffix}", *mesh)
        print(f"mesh {r}³: {time.perf_counter() - t:.1f} s, {len(mesh[0])} vertices")


if __name__ == "__main__":
    main()

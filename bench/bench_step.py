"""Time per optimization step, SDS vs DreamDPO, side by side in one process, with the breakdown.

    python bench/bench_step.py [--device cpu|cuda] [--steps 30] [--resolution 64]

Same tiny random-weight latent SD prior (dreamdpo/priors/tiny.py), same field, same cameras. Prints:
- whole-step medians for SDS and DreamDPO (runs interleaved in blocks so machine load hits both);
- the parts measured on their own: render fwd+bwd, one batched prior call for the pair, decode of
  both x̂0, the judge's compare (toy reward), and their sum;
- the ratios the issue asks for: DreamDPO / sum of parts, DreamDPO / SDS.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench_render import timed  # bench/ is on sys.path when run as a script
from dreamdpo.cameras import CameraConfig, random_cameras
from dreamdpo.config import load_config
from dreamdpo.optimize import build_scene, load_prior, optimize
from dreamdpo.priors.tiny import make_tiny_sd
from dreamdpo.toyworld.reward import ToyRewardJudge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp())
    model = make_tiny_sd(tmp / "sd", latent=True, resolution=args.resolution)
    small = ["field.n_levels=8", "field.log2_hashmap_size=15", "field.max_resolution=256", "field.hidden=32",
             "render.n_samples=32", f"schedule.resolution={args.resolution}", "schedule.resolution_milestones=[]",
             "schedule.orientation_weights=[0,0]", "export_mesh=false", "test_views=2",
             f"test_resolution={args.resolution}", f"checkpoint_every={10**6}", f"device={args.device}"]

    def cfg(judge, out):
        return load_config(flags={"prompt": "a red cube", "backbone": model, "judge": judge, "steps": args.steps,
                                  "out": str(out)}, overrides=small)

    prior = load_prior(cfg("none", tmp / "x"), device)
    judge = ToyRewardJudge.load(device=device)
    step_ms = {"sds": [], "dreamdpo": []}
    parts = {"sds": [], "dreamdpo": []}
    for block in range(2):  # interleave: SDS, DreamDPO, SDS, DreamDPO
        for name, j in (("sds", None), ("dreamdpo", judge)):
            res = optimize(cfg("none" if j is None else "toy-reward", tmp / f"{name}{block}"),
                           prior=prior, judge=j, progress=False)
            rows = res.metrics[3:]  # skip warm-up steps
            step_ms[name] += [sum(r[k] for k in r if k.endswith("_ms")) for r in rows]
            parts[name] += rows

    # the parts on their own
    c = cfg("toy-reward", tmp / "parts")
    nerf, bg, renderer = build_scene(c, device)
    renderer.train().update_occupancy(0)  # as in the loop: empty cells skipped from step 0 on
    cams = random_cameras(CameraConfig(), 1, torch.Generator().manual_seed(0)).to(device)
    cond = prior.encode_prompt(c.prompt)
    R = args.resolution

    def render_fb():
        out = renderer(cams, R, R, need_normals=False)
        z = prior.encode(out.rgb)
        (z.float() ** 2).mean().backward()

    with torch.no_grad():
        z = prior.encode(renderer(cams, R, R, need_normals=False).rgb)
        z2 = torch.cat([z, z])
        t2 = torch.full((2,), 500, device=device)
        cams2 = cams.repeat(2)
        pred = prior.predict_noise(z2, t2, cond, cams2, 7.5)
        imgs = prior.decode(prior.predict_x0(z2, pred.eps_cfg, t2)).float()
    iso = {
        "render fwd+bwd (incl. encode)": timed(render_fb, device, 10)[0],
        "prior call (pair, cond+neg)": timed(lambda: prior.predict_noise(z2, t2, cond, cams2, 7.5), device, 10)[0],
        "decode x̂0 (pair)": timed(lambda: prior.decode(prior.predict_x0(z2, pred.eps_cfg, t2)), device, 10)[0],
        "judge (toy reward)": timed(lambda: judge.compare(imgs[:1], imgs[1:], c.prompt), device, 10)[0],
    }
    total = sum(iso.values())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {R}×{R}; {len(step_ms['sds'])} steps each after warm-up")
    print("| part (isolated) | median ms |\n|---|---|")
    for k, v in iso.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| sum of parts | {total:.1f} |")
    sds, dpo = statistics.median(step_ms["sds"]), statistics.median(step_ms["dreamdpo"])
    print("\n| loop | step median ms | render | prior | judge | backward |\n|---|---|---|---|---|---|")
    for nm, med in (("SDS", sds), ("DreamDPO", dpo)):
        rows = parts[nm.lower()]
        ph = [statistics.median(r[k] for r in rows) for k in ("render_ms", "prior_ms", "judge_ms", "backward_ms")]
        print(f"| {nm} | {med:.1f} | " + " | ".join(f"{p:.1f}" for p in ph) + " |")
    print(f"\nDreamDPO / sum of parts = {dpo / total:.2f} (goal ≤ 1.15); DreamDPO / SDS = {dpo / sds:.2f} (goal ≤ 2)")


if __name__ == "__main__":
    main()

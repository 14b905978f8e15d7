"""Time the toy world: bank build and size, prior cost of a DreamDPO pair, reward judge, evaluator.

    python bench/bench_toyworld.py [--cache DIR] [--threads N]

The bank is built into a fresh temp cache (so its build time is measured), then loaded again.
Prints a markdown table for bench/BENCHMARKS.md; reward training metrics come from the shipped
dreamdpo/assets/toy-reward/config.json (written by `dreamdpo toyworld train-reward`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from dreamdpo.cameras import CameraConfig, orbit_cameras, random_cameras
from dreamdpo.toyworld.bank import BankConfig, build_bank
from dreamdpo.toyworld.evaluate import evaluate_views
from dreamdpo.toyworld.prior import ToyPrior
from dreamdpo.toyworld.render import render
from dreamdpo.toyworld.reward import ASSET_DIR, ToyRewardJudge
from dreamdpo.toyworld.vocab import parse_prompt


def timed(fn, repeats: int = 20, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), min(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", help="bank cache (default: a fresh temp dir, so the build is timed)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        t = time.perf_counter()
        bank = build_bank(BankConfig(), cache=cache, progress=False)
        build = time.perf_counter() - t
        t = time.perf_counter()
        build_bank(BankConfig(), cache=cache, progress=False)
        load = time.perf_counter() - t
        size = bank.path.stat().st_size / 1e6
        rows.append(("bank build (96 cameras × 30 shape layouts, 64 px, 2×2 supersampling)",
                     f"{build:.1f} s" + (" (from cache)" if bank.loaded_from_cache else "")))
        rows.append(("bank file size / load from cache", f"{size:.1f} MB / {load * 1000:.0f} ms"))
        prior = ToyPrior(bank)
        cams = random_cameras(CameraConfig(), 1, torch.Generator().manual_seed(0)).repeat(2)
        z = torch.randn(2, 3, 64, 64)
        tt = torch.tensor([500, 500])
        for prompt in ("a red cube", "a red cube and a blue sphere"):
            cond = prior.encode_prompt(prompt)
            med, mn = timed(lambda cond=cond: prior.predict_noise(z, tt, cond, cams, 7.5))
            rows.append((f"prior predict_noise, DreamDPO pair (N=2), '{prompt}'", f"{med:.1f} ms (min {mn:.1f})"))
        x = torch.rand(1, 3, 64, 64, requires_grad=True)
        med, mn = timed(lambda: prior.encode(x).sum().backward())
        rows.append(("prior encode fwd+bwd (N=1)", f"{med:.2f} ms (min {mn:.2f})"))
    judge = ToyRewardJudge.load()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    med, mn = timed(lambda: judge.compare(a, b, "a red cube"))
    rows.append(("toy-reward judge compare (1 view per candidate)", f"{med:.1f} ms (min {mn:.1f})"))
    orbit = orbit_cameras(8)
    med, mn = timed(lambda: render(parse_prompt("a red cube and a blue sphere"), orbit), repeats=5)
    rows.append(("analytic render, 8 views, two objects, 64 px (2×2 supersampled)", f"{med:.0f} ms (min {mn:.0f})"))
    views = render(parse_prompt("a red cube"), orbit)
    evaluate_views(views, orbit, "a red cube")  # fills the silhouette cache for these cameras
    med, mn = timed(lambda: evaluate_views(views, orbit, "a red cube"), repeats=5)
    rows.append(("evaluator, 8 views, one object (silhouettes cached)", f"{med:.0f} ms (min {mn:.0f})"))
    cfg = json.loads((ASSET_DIR / "config.json").read_text())["training"]
    rows.append(("toy reward training (shipped weights)",
                 f"{cfg['steps']} steps × batch {cfg['batch']}, {cfg['threads']} thread: data {cfg['data_seconds']} s "
                 f"+ total {cfg['train_seconds']} s"))
    h = cfg["held_out"]
    rows.append(("toy reward held-out ranking (true caption > each hard negative)",
                 f"clean {h['pairwise_clean']:.3f} (swapped binding {h['swapped_binding_clean']:.3f}); "
                 f"x̂0 {h['pairwise_x0']:.3f} (swapped {h['swapped_binding_x0']:.3f}); "
                 f"all 6 at once {h['all_negatives']:.3f}"))
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()

"""Steerability: does a person's hidden taste end up in the object, and at what cost in votes and waiting?

    python bench/bench_steer.py [--tastes green blue] [--seeds 0] [--methods sds blocking async]
                                [--prompt "a cube"] [--steps 300] [--think 1.0] [--json rows.json]

A simulated annotator (annotator/simulated.py) prefers one colour the prompt does not name and votes
through the log, like a person in the app. Each method runs `dreamdpo run` as its own process on a
fresh SQLite log, with the annotator voting beside it:
- sds: no judge (what the prompt alone gives);
- model: DreamDPO with the toy reward alone (the run "without people", for wall time);
- blocking: people judge every 10th step and the run waits for them (30 votes in 300 steps);
- async: the run never waits; the learned preference model judges every step and posts at most
  30 pairs where it is unsure;
- every_step: the person judges every step at once, in-process (dreamdpo.toyworld.taste.TasteJudge: 300
  votes, no log, no waiting, no learned model). Not a mode a person could keep up: the upper bound of
  what votes can do through the loss, and deterministic (the same run every time).
The share is the evaluator's colour_correct on the finished turntable for "a <taste> <shape>"
(evaluate.py: not the judge, not the taste's own score). Results go in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

METHODS = {
    "sds": ["--judge", "none"],
    "model": ["--judge", "toy-reward"],
    "blocking": ["--judge", "human", "human.mode=blocking", "human.every_k=10", "human.timeout_s=60"],
    "async": ["--judge", "human", "human.mode=async", "human.max_pairs=30"],
    "every_step": [],  # in-process: run_every_step
}


def _share(views, cameras, taste: str, prompt: str) -> dict:
    from dreamdpo.toyworld.evaluate import evaluate_views

    ev = evaluate_views(views, cameras, f"a {taste} {prompt.split()[-1]}")
    return {"share": ev["colour_correct"], "shape_ok": ev["shape_correct"], "predicted": ev["predicted"]}


def run_every_step(taste: str, seed: int, prompt: str, steps: int, work: Path, overrides: list[str] = ()) -> dict:
    """The simulated person as the run's judge, at every step (the module doc's `every_step`)."""
    from dreamdpo.config import load_config
    from dreamdpo.optimize import optimize
    from dreamdpo.toyworld.taste import Taste, TasteJudge

    cfg = load_config(flags={"prompt": prompt, "backbone": "toy", "judge": "toy-reward", "steps": steps,
                             "seed": seed, "out": str(work / f"every_step-{taste}-{seed}")},
                      overrides=["test_views=8", *overrides])
    t0 = time.monotonic()
    result = optimize(cfg, judge=TasteJudge(Taste(colour=taste)), progress=False)
    wall = time.monotonic() - t0
    votes = sum(1 for r in result.metrics if r.get("source") == "taste")
    return {"method": "every_step", "taste": taste, "seed": seed, "wall_s": round(wall, 1), "votes": votes,
            **_share(result.test_views, result.test_cameras, taste, prompt)}


def run_one(method: str, taste: str, seed: int, prompt: str, steps: int, think: float, work: Path,
            overrides: list[str] = ()) -> dict:
    from annotator.simulated import annotate
    from db import accounts
    from db.engine import connect
    from dreamdpo.cameras import orbit_cameras
    from dreamdpo.images import images_from_png
    from dreamdpo.toyworld.taste import Taste

    if method == "every_step":
        return run_every_step(taste, seed, prompt, steps, work, overrides)
    log = f"sqlite:///{work / f'{method}-{taste}-{seed}.sqlite'}"
    out = work / f"{method}-{taste}-{seed}"
    engine = connect(log)
    who = accounts.authenticate(engine, accounts.add_annotator(engine, f"sim-{method}-{taste}-{seed}"))["id"]
    cmd = [sys.executable, "-m", "dreamdpo.cli", "run", "--prompt", prompt, "--seed", str(seed), "--steps", str(steps),
           "--db", log, "--out", str(out), "--quiet", *METHODS[method], "test_views=8", *overrides]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result: dict = {}
    stop = threading.Event()
    voter = threading.Thread(target=lambda: result.update(annotate(
        engine, who, Taste(colour=taste), think_s=think, stop=stop.is_set)), daemon=True)
    voter.start()
    output, _ = proc.communicate()
    wall = time.monotonic() - t0
    stop.set()
    voter.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{output[-2000:]}")
    frames = sorted((out / "turntable").glob("frame_*.png"))
    import torch

    views = torch.cat([images_from_png(p.read_bytes()) for p in frames])
    return {"method": method, "taste": taste, "seed": seed, "wall_s": round(wall, 1),
            **_share(views, orbit_cameras(len(frames)), taste, prompt), **result}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tastes", nargs="+", default=["green", "blue"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--prompt", default="a cube")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--think", type=float, default=1.0, help="seconds the simulated person looks at a pair")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    p.add_argument("--json")
    p.add_argument("--keep", help="keep each run's folder and log here (default: a temporary folder)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for taste in args.tastes:
                for m in args.methods:
                    rows.append(run_one(m, taste, seed, args.prompt, args.steps, args.think, Path(tmp),
                                        args.set))
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\n| method | share of the taste (mean) | shape ok | votes | idle p95 s | wall s |")
    print("|---|---|---|---|---|---|")
    for m in args.methods:
        rs = [r for r in rows if r["method"] == m]
        def mean(k: str, rs: list[dict] = rs) -> float:
            return sum((r.get(k) or 0) for r in rs) / len(rs)
        print(f"| {m} | {mean('share'):.2f} | {mean('shape_ok'):.2f} | {mean('votes'):.0f} | "
              f"{max((r.get('idle_s_p95') or 0) for r in rs):.2f} | {mean('wall_s'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

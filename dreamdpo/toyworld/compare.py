"""SDS vs DreamDPO in the toy world: the toy-scale version of the paper's Table 1 and its τ ablation.

Every method optimizes the same prompts from the same seeds with the toy prior; alignment is
measured on the finished object's turntable by the evaluator (evaluate.py), never by the toy
reward that DreamDPO optimizes against. Runs are independent, so `workers` > 1 runs them in
parallel processes (one thread each).
"""
from __future__ import annotations

import time
from pathlib import Path

TAU_SMALL = 0.01  # in the toy reward's units (cosine similarity)
TAU_LARGE = 0.1
METHODS: dict[str, dict] = {
    "sds": {"judge": "none"},
    "dreamdpo τ=0": {"judge": "toy-reward", "dpo": {"tau": 0.0}},
    f"dreamdpo τ={TAU_SMALL}": {"judge": "toy-reward", "dpo": {"tau": TAU_SMALL}},
    f"dreamdpo τ={TAU_LARGE}": {"judge": "toy-reward", "dpo": {"tau": TAU_LARGE}},
    f"dreamdpo timestep τ={TAU_SMALL}": {"judge": "toy-reward", "dpo": {"tau": TAU_SMALL, "variant": "timestep"}},
}
PROMPTS = ["a red cube", "a green cone", "a yellow torus", "a red cube and a blue sphere",
           "a purple cylinder and an orange cone"]

_CACHE: dict = {}


def run_one(job: dict) -> dict:
    """One (method, prompt, seed) run → the evaluator's metrics of its finished turntable."""
    import torch

    from dreamdpo.config import load_config
    from dreamdpo.optimize import optimize
    from dreamdpo.toyworld.evaluate import evaluate_views
    from dreamdpo.toyworld.prior import ToyPrior
    from dreamdpo.toyworld.reward import ToyRewardJudge

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = job["device"]
    if device not in _CACHE:  # one prior and judge per process
        _CACHE[device] = (ToyPrior.build(device=device, progress=False), ToyRewardJudge.load(device=device))
    prior, judge = _CACHE[device]
    m, prompt, seed = job["method"], job["prompt"], job["seed"]
    slug = "".join(c if c.isalnum() else "-" for c in f"{m}-{prompt}-s{seed}")
    flags = {"prompt": prompt, "seed": seed, "device": device, "steps": job.get("steps"),
             "out": str(Path(job["out_dir"]) / slug), "test_views": job["test_views"], **METHODS[m]}
    cfg = load_config(None, flags, list(job.get("overrides", ())))
    t0 = time.perf_counter()
    res = optimize(cfg, prior=prior, judge=judge if cfg.judge != "none" else None, progress=False)
    ev = evaluate_views(res.test_views, res.test_cameras, prompt)
    pushes = [r.get("push", 0) for r in res.metrics]
    return {"method": m, "prompt": prompt, "seed": seed, "steps": cfg.steps,
            "seconds": round(time.perf_counter() - t0, 1), "alignment": ev["alignment"],
            "colour": ev["colour_correct"], "shape": ev["shape_correct"], "binding": ev["binding_correct"],
            "predicted": ev["predicted"],
            "push_fraction": sum(pushes) / max(1, len(pushes)) if cfg.judge != "none" else None}


def run_comparison(prompts: list[str] = PROMPTS, seeds: list[int] = (0, 1), steps: int | None = None,
                   methods: list[str] | None = None, out_dir: str | Path = "outputs/compare-toy",
                   device: str = "cpu", test_views: int = 8, overrides: list[str] = (), workers: int = 1,
                   log=lambda msg: print(msg, flush=True)) -> list[dict]:
    """One row per (method, prompt, seed), in that order."""
    from dreamdpo.errors import UserError
    from dreamdpo.toyworld.prior import ToyPrior
    from dreamdpo.toyworld.vocab import parse_prompt

    names = list(methods or METHODS)
    for m in names:
        if m not in METHODS:
            raise UserError(f"unknown method '{m}'; choose from: {', '.join(METHODS)}")
    for p in prompts:
        parse_prompt(p)
    ToyPrior.build(progress=True)  # build the bank once, before workers load it from the cache
    jobs = [{"method": m, "prompt": p, "seed": s, "steps": steps, "device": device, "out_dir": str(out_dir),
             "test_views": test_views, "overrides": list(overrides), "threads": 1 if workers > 1 else None}
            for p in prompts for s in seeds for m in names]
    rows = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap_unordered(run_one, jobs):
                rows.append(row)
                _log_row(row, log)
    else:
        for job in jobs:
            rows.append(run_one(job))
            _log_row(rows[-1], log)
    order = {(j["method"], j["prompt"], j["seed"]): i for i, j in enumerate(jobs)}
    return sorted(rows, key=lambda r: order[(r["method"], r["prompt"], r["seed"])])


def _log_row(row: dict, log) -> None:
    log(f"{row['method']:28s} {row['prompt']:38s} seed {row['seed']}: alignment {row['alignment']:.2f} "
        f"({row['predicted']}) {row['seconds']} s")


def table(rows: list[dict]) -> str:
    """Markdown: mean evaluator alignment per method × prompt (over seeds), plus single/two-object means."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    head = "| method | " + " | ".join(prompts) + " | single | two (binding) | all |"
    lines = [head, "|" + "---|" * (len(prompts) + 4)]
    for m in methods:
        mr = [r for r in rows if r["method"] == m]
        cells = [f"{mean([r['alignment'] for r in mr if r['prompt'] == p]):.2f}" for p in prompts]
        single = [r["alignment"] for r in mr if " and " not in r["prompt"] and " of " not in r["prompt"]]
        two = [r for r in mr if " and " in r["prompt"] or " of " in r["prompt"]]
        two_cell = (f"{mean([r['alignment'] for r in two]):.2f} ({mean([r['binding'] for r in two]):.2f})"
                    if two else "–")
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | {mean(single):.2f} | {two_cell} | {mean([r['alignment'] for r in mr]):.2f} |")
    return "\n".join(lines)

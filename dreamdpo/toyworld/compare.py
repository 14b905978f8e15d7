"""SDS vs DreamDPO in the toy world: the toy-scale version of the paper's Table 1 and its τ ablation.

Every method optimizes the same fixed prompt suite (SUITE: single objects, two objects joined by
"and", left/right relations) from the same seeds with the toy prior; alignment is measured on the
finished object's turntable by the evaluator (evaluate.py), never by the toy reward that DreamDPO
optimizes against. Runs are independent, so `workers` > 1 runs them in parallel processes (one
thread each). `report` writes the table (mean and 95 % bootstrap CI per method × prompt group) and
a picture: turntable thumbnails, prompts × methods.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

TAU_SMALL = 0.01  # in the toy reward's units (cosine similarity)
TAU_LARGE = 0.1
N_CANDIDATES = 8
METHODS: dict[str, dict] = {
    "sds": {"judge": "none"},
    "dreamdpo τ=0": {"judge": "toy-reward", "dpo": {"tau": 0.0}},
    f"dreamdpo τ={TAU_SMALL}": {"judge": "toy-reward", "dpo": {"tau": TAU_SMALL}},
    f"dreamdpo τ={TAU_LARGE}": {"judge": "toy-reward", "dpo": {"tau": TAU_LARGE}},
    f"dreamdpo timestep τ={TAU_SMALL}": {"judge": "toy-reward", "dpo": {"tau": TAU_SMALL, "variant": "timestep"}},
    # N noises per step, the two that look most different are judged (dpo.candidates, losses.DPOConfig)
    f"dreamdpo N={N_CANDIDATES} τ={TAU_SMALL}": {"judge": "toy-reward",
                                                 "dpo": {"tau": TAU_SMALL, "candidates": N_CANDIDATES}},
}

GROUPS: tuple[str, ...] = ("single", "two", "relation")  # one object; two joined by "and"; left/right


@dataclass(frozen=True)
class SuitePrompt:
    text: str
    group: str  # one of GROUPS
    binding: bool = False  # attribute binding is the difficulty (colours swapped elsewhere, or one shape twice)


SUITE: tuple[SuitePrompt, ...] = (
    SuitePrompt("a red cube", "single"),
    SuitePrompt("a green cone", "single"),
    SuitePrompt("a yellow torus", "single"),
    SuitePrompt("a blue cylinder", "single"),
    SuitePrompt("a red cube and a blue sphere", "two", binding=True),
    SuitePrompt("a blue cube and a red sphere", "two", binding=True),  # the same words, colours swapped
    SuitePrompt("a red sphere and a blue sphere", "two", binding=True),  # one shape: only colour tells them apart
    SuitePrompt("a purple cylinder and an orange cone", "two"),
    SuitePrompt("a green cube and a green cone", "two"),  # one colour: only shape matters
    SuitePrompt("a red cube to the left of a blue sphere", "relation", binding=True),
    SuitePrompt("a blue cube to the left of a red sphere", "relation", binding=True),
    SuitePrompt("a red sphere to the right of a blue sphere", "relation", binding=True),
    SuitePrompt("a yellow cone to the right of a cyan cylinder", "relation"),
    SuitePrompt("a pink torus to the left of a green cube", "relation"),
)
PROMPTS: list[str] = [p.text for p in SUITE]


def suite_prompt(prompt: str | SuitePrompt) -> SuitePrompt:
    """The suite's entry for a prompt, or a new one grouped by its parsed scene (one object / "and" / relation)."""
    from dreamdpo.toyworld.vocab import parse_prompt

    if isinstance(prompt, SuitePrompt):
        return prompt
    for p in SUITE:
        if p.text == prompt:
            return p
    scene = parse_prompt(prompt)
    group = "single" if len(scene.objects) == 1 else ("two" if scene.relation == "and" else "relation")
    return SuitePrompt(prompt, group)


def suite(groups: list[str] | None = None) -> list[SuitePrompt]:
    from dreamdpo.errors import UserError

    for g in groups or ():
        if g not in GROUPS:
            raise UserError(f"unknown prompt group '{g}'; choose from: {', '.join(GROUPS)}")
    return [p for p in SUITE if not groups or p.group in groups]


_CACHE: dict = {}


def run_one(job: dict) -> dict:
    """One (method, prompt, seed) run → the evaluator's metrics of its finished turntable, and the path of a
    thumbnail strip of that turntable (so no image tensor crosses the process pool)."""
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
    out = Path(job["out_dir"]) / slug
    flags = {"prompt": prompt, "seed": seed, "device": device, "steps": job.get("steps"),
             "out": str(out), "test_views": job["test_views"], **METHODS[m]}
    cfg = load_config(None, flags, list(job.get("overrides", ())))
    prior.binding = cfg.toy_binding  # the cached prior serves every job of this process
    t0 = time.perf_counter()
    res = optimize(cfg, prior=prior, judge=judge if cfg.judge != "none" else None, progress=False)
    ev = evaluate_views(res.test_views, res.test_cameras, prompt)
    thumb = save_thumbnail(res.test_views, out / "thumb.png", frames=job.get("thumb_frames", 4),
                           size=job.get("thumb_size", 64))
    pushes = [r.get("push", 0) for r in res.metrics]
    return {"method": m, "prompt": prompt, "group": job.get("group") or suite_prompt(prompt).group,
            "seed": seed, "steps": cfg.steps,
            "seconds": round(time.perf_counter() - t0, 1), "alignment": ev["alignment"],
            "colour": ev["colour_correct"], "shape": ev["shape_correct"], "binding": ev["binding_correct"],
            "position": ev["position_correct"], "predicted": ev["predicted"],
            "scene_iou": ev["scene_iou"], "edge_sharpness": ev["edge_sharpness"], "thumb": str(thumb),
            "push_fraction": sum(pushes) / max(1, len(pushes)) if cfg.judge != "none" else None}


def save_thumbnail(views, path: Path, frames: int = 4, size: int = 64) -> Path:
    """A strip of `frames` turntable views (evenly spaced in azimuth) of `size` px each, as one PNG."""
    import numpy as np
    from PIL import Image

    n = views.shape[0]
    k = max(1, min(frames, n))
    strip = Image.new("RGB", (k * size, size), "white")
    for i in range(k):
        v = views[(i * n) // k].detach().float().cpu().clamp(0, 1)
        img = Image.fromarray((v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        strip.paste(img.resize((size, size), Image.LANCZOS), (i * size, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return path


def run_comparison(prompts: list[str | SuitePrompt] = SUITE, seeds: list[int] = (0, 1), steps: int | None = None,
                   methods: list[str] | None = None, out_dir: str | Path = "outputs/compare-toy",
                   device: str = "cpu", test_views: int = 8, overrides: list[str] = (), workers: int = 1,
                   progress: bool = True, log=None) -> list[dict]:
    """One row per (method, prompt, seed), in that order; a progress bar over runs while they finish."""
    from tqdm import tqdm

    from dreamdpo.errors import UserError
    from dreamdpo.toyworld.prior import ToyPrior

    names = list(methods or METHODS)
    for m in names:
        if m not in METHODS:
            raise UserError(f"unknown method '{m}'; choose from: {', '.join(METHODS)}")
    entries = [suite_prompt(p) for p in prompts]  # parses every prompt before any run starts
    ToyPrior.build(progress=progress)  # build the bank once, before workers load it from the cache
    jobs = [{"method": m, "prompt": p.text, "group": p.group, "seed": s, "steps": steps, "device": device,
             "out_dir": str(out_dir), "test_views": test_views, "overrides": list(overrides),
             "threads": 1 if workers > 1 else None}
            for p in entries for s in seeds for m in names]
    rows = []
    with tqdm(total=len(jobs), desc="toy compare", unit="run", disable=not progress) as bar:
        say = log or (bar.write if progress else (lambda msg: print(msg, flush=True)))

        def done(row: dict) -> None:
            rows.append(row)
            bar.update(1)
            say(_row_line(row))

        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for row in pool.imap_unordered(run_one, jobs):
                    done(row)
        else:
            for job in jobs:
                done(run_one(job))
    order = {(j["method"], j["prompt"], j["seed"]): i for i, j in enumerate(jobs)}
    return sorted(rows, key=lambda r: order[(r["method"], r["prompt"], r["seed"])])


def _row_line(row: dict) -> str:
    return (f"{row['method']:28s} {row['prompt']:46s} seed {row['seed']}: alignment {row['alignment']:.2f} "
            f"({row['predicted']}) {row['seconds']} s")


# ----------------------------------------------------------------------------- statistics and the table
def bootstrap_ci(values: list[float], level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap CI of the mean, resampling `values` with replacement.
    Deterministic (its own RNG from `seed`). One value gives (v, v, v); none gives NaNs."""
    xs = [float(x) for x in values]
    if not xs:
        return (math.nan, math.nan, math.nan)
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return (mean, mean, mean)
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(resamples))
    alpha = (1 - level) / 2

    def at(q: float) -> float:  # linear interpolation between order statistics
        pos = q * (resamples - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, resamples - 1)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    return (mean, min(at(alpha), mean), max(at(1 - alpha), mean))


def _groups_of(rows: list[dict]) -> list[str]:
    present = {r["group"] for r in rows}
    return [g for g in GROUPS if g in present] + sorted(present - set(GROUPS))


def table(rows: list[dict], metric: str = "alignment") -> str:
    """Markdown: per method × prompt group, the mean of `metric` over the group's runs (prompts × seeds) and
    its 95 % bootstrap CI; the last column pools every run of the method. Runs carry their group."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = _groups_of(rows)

    def cell(rs: list[dict]) -> str:
        if not rs:
            return "–"
        m, lo, hi = bootstrap_ci([r[metric] for r in rs])
        return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"

    heads = [f"{g} (n={len([r for r in rows if r['group'] == g and r['method'] == methods[0]])})" for g in groups]
    lines = ["| method | " + " | ".join(heads) + " | all |", "|" + "---|" * (len(groups) + 2)]
    for m in methods:
        mr = [r for r in rows if r["method"] == m]
        cells = [cell([r for r in mr if r["group"] == g]) for g in groups]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {cell(mr)} |")
    return "\n".join(lines)


def prompt_table(rows: list[dict]) -> str:
    """Markdown: prompts as rows (with their group), methods as columns: mean alignment over seeds, and for
    two-object prompts the evaluator's binding score in parentheses."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    lines = ["| prompt | group | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for p in prompts:
        pr = [r for r in rows if r["prompt"] == p]
        cells = []
        for m in methods:
            rs = [r for r in pr if r["method"] == m]
            c = f"{mean([r['alignment'] for r in rs]):.2f}"
            if rs and rs[0]["group"] != "single":
                c += f" ({mean([r['binding'] for r in rs]):.2f})"
            cells.append(c)
        lines.append(f"| {p} | {pr[0]['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the picture
def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(), False


def draw_grid(rows: list[dict], path: str | Path, seed: int | None = None) -> Path:
    """PNG: one turntable thumbnail strip per prompt (rows, with its group) × method (columns), from `seed`
    (default: the first seed in `rows`). A run without a thumbnail leaves its cell grey."""
    from PIL import Image, ImageDraw

    seed = rows[0]["seed"] if seed is None else seed
    methods = list(dict.fromkeys(r["method"] for r in rows))
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    thumbs = {(r["method"], r["prompt"]): r.get("thumb") for r in rows if r["seed"] == seed}
    group = {r["prompt"]: r["group"] for r in rows}
    font, unicode_ok = _font(13)
    text = (lambda s: s) if unicode_ok else (lambda s: s.replace("τ", "tau"))
    images = {k: Image.open(v).convert("RGB") for k, v in thumbs.items() if v and Path(v).exists()}
    cw, ch = max([im.size for im in images.values()], default=(256, 64))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda s: int(measure.textlength(s, font=font))  # noqa: E731
    labels = [text(f"{p}  [{group[p]}]") for p in prompts]
    lw = max([width(s) for s in labels], default=0) + 16
    cw = max(cw, max([width(text(m)) for m in methods], default=0) + 8)
    top, pad = 40, 4
    grid = Image.new("RGB", (lw + len(methods) * (cw + pad), top + len(prompts) * (ch + pad)), "white")
    d = ImageDraw.Draw(grid)
    d.text((8, 4), text(f"seed {seed}"), fill="black", font=font)
    for j, m in enumerate(methods):
        d.text((lw + j * (cw + pad) + 2, top - 20), text(m), fill="black", font=font)
    for i, p in enumerate(prompts):
        y = top + i * (ch + pad)
        d.text((8, y + ch // 2 - 8), labels[i], fill="black", font=font)
        for j, m in enumerate(methods):
            x = lw + j * (cw + pad)
            im = images.get((m, p))
            if im is None:
                d.rectangle((x, y, x + cw - 1, y + ch - 1), fill=(200, 200, 200))
            else:
                grid.paste(im, (x, y))
            d.rectangle((x - 1, y - 1, x + cw, y + ch), outline=(225, 225, 225))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def report(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write `table.md` (the group table with CIs, then per-prompt means), `grid.png` beside it, and
    `rows.json` (every run's metrics) into out_dir."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "table.md"
    md.write_text("Evaluator alignment, mean [95 % bootstrap CI] over runs (prompts × seeds) per group:\n\n"
                  + table(rows) + "\n\nPer prompt (mean over seeds; binding in parentheses):\n\n"
                  + prompt_table(rows) + "\n\n![turntables, prompts × methods](grid.png)\n")
    rj = out / "rows.json"
    rj.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    return {"table": md, "grid": draw_grid(rows, out / "grid.png"), "rows": rj}

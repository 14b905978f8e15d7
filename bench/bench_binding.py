"""Can the DreamDPO loss bind two colours to two objects at all? A judge that makes no mistake, against
the toy reward and SDS, on two-object prompts of the toy world.

    python bench/bench_binding.py [key=value ...] [--prompts "a red cube and a blue sphere"] [--seeds 0]
                                  [--methods sds toy oracle] [--steps 300] [--json rows.json]

The oracle judge knows the intended scene: it scores each candidate view by how well the pixels where each
object should be (its analytic silhouette from the view's camera, the other object's left out) match that
object's colour, by the simulated person's hue score (dreamdpo/toyworld/taste.py). It is a diagnosis, not a
method: if the oracle binds where the toy reward does not, the judge is what fails; if it does not, the loss,
the prior or the field does. Every run is scored by the evaluator (evaluate_views on the 16-view turntable),
which is neither judge. Results go in BENCHMARKS.md ("Two objects").
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dreamdpo.cameras import Cameras
from dreamdpo.config import load_config
from dreamdpo.judges.base import Judge, JudgeContext, Judgement, judgement_from_scores
from dreamdpo.optimize import optimize
from dreamdpo.recording import Recorder
from dreamdpo.toyworld.evaluate import EVAL_RES, _silhouettes, evaluate_views
from dreamdpo.toyworld.render import scene_layout
from dreamdpo.toyworld.taste import hue_score
from dreamdpo.toyworld.vocab import parse_prompt


class OracleBindingJudge(Judge):
    """Scores each view by the mean hue score of every intended object's own pixels (see the module doc)."""

    name = "oracle"

    def score_views(self, images: torch.Tensor, prompt: str, cameras: Cameras) -> torch.Tensor:
        scene = parse_prompt(prompt)
        objects = scene.by_side()
        imgs = images.detach().float().cpu().clamp(0, 1)
        if imgs.shape[-1] != EVAL_RES:
            imgs = torch.nn.functional.interpolate(imgs, size=(EVAL_RES, EVAL_RES), mode="area")
        sil = _silhouettes(list(scene_layout(scene)), cameras.to("cpu"))  # [S,V,H,W]
        out = []
        for v in range(len(imgs)):
            pix = imgs[v].permute(1, 2, 0)
            own = [sil[i, v] & ~sil[:i, v].any(0) & ~sil[i + 1:, v].any(0) for i in range(len(objects))]
            out.append(sum(hue_score(pix[m], o.colour) for m, o in zip(own, objects) if o.colour) / len(objects))
        return torch.tensor(out)

    def compare(self, images_a, images_b, prompt: str, context: JudgeContext | None = None) -> Judgement:
        cams = Cameras.from_dicts(context.cameras)
        return judgement_from_scores(self.name, self.score_views(images_a, prompt, cams),
                                     self.score_views(images_b, prompt, cams))


class TraceRecorder(Recorder):
    """What the object looks like as the run goes: the evaluator's reading of the step's render every
    `every` judged steps (the render and its cameras come with each judged pair)."""

    def __init__(self, prompt: str, every: int = 20):
        self.prompt, self.every, self.trace = prompt, every, []

    def record(self, judgement, images_a, images_b, context) -> None:
        if context.step % self.every == 0 and context.render is not None:
            cams = Cameras.from_dicts(context.cameras)
            ev = evaluate_views(context.render, cams, self.prompt)
            oracle = float(OracleBindingJudge().score_views(context.render, self.prompt, cams).mean())
            self.trace.append(f"{context.step}:{ev['predicted']}:{oracle:.2f}")


def run(method: str, prompt: str, seed: int, steps: int, overrides: list[str], work: Path) -> dict:
    judge_name = {"sds": "none", "toy": "toy-reward", "oracle": "toy-reward"}[method]
    cfg = load_config(flags={"prompt": prompt, "backbone": "toy", "judge": judge_name, "steps": steps, "seed": seed,
                             "out": str(work / f"{method}-{seed}-{abs(hash(prompt)) % 10**6}")},
                      overrides=overrides)
    t0 = time.monotonic()
    recorder = TraceRecorder(prompt)
    result = optimize(cfg, judge=OracleBindingJudge() if method == "oracle" else None, recorder=recorder,
                      progress=False)
    ev = evaluate_views(result.test_views, result.test_cameras, prompt)
    pushes = sum(float(r.get("push") or 0) for r in result.metrics) / max(1, len(result.metrics))
    return {"method": method, "prompt": prompt, "seed": seed, "wall_s": round(time.monotonic() - t0, 1),
            "push_share": round(pushes, 3), **{k: ev[k] for k in ("alignment", "colour_correct", "shape_correct",
                                                                  "binding_correct", "scene_iou", "predicted")},
            "trace": recorder.trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", nargs="+", default=["a red cube and a blue sphere"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=["sds", "toy", "oracle"], choices=["sds", "toy", "oracle"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in args.prompts:
            for seed in args.seeds:
                for method in args.methods:
                    rows.append(run(method, prompt, seed, args.steps, args.overrides, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

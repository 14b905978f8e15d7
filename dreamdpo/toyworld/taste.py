"""A simulated person with a hidden taste: the steerability benchmark's annotator.

The taste is something the prompt does not name: a colour for a shape-only prompt ("a cube"), or a
shape for a colour-only prompt ("a red object"). The person prefers the candidate whose visible
object is closer to it, and says "tie" when the two are equally close, as a person would. The
score uses the evaluator's foreground and analytic silhouettes, but its own notion of colour (hue),
and never the toy reward, so a run steered by this person is measured by something that is not its
judge.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.judges.base import Judge, JudgeContext, Judgement
from dreamdpo.toyworld.evaluate import EVAL_RES, _iou, _silhouettes, foreground
from dreamdpo.toyworld.render import Placed
from dreamdpo.toyworld.vocab import COLOURS, SHAPES

TIE_BELOW = 0.01  # score differences a person cannot see (hue miss, or IoU)
DULL_COST = 0.1  # a pixel with half the colour's chroma (dark red) loses 0.05: below any other hue


@dataclass(frozen=True)
class Taste:
    colour: str | None = None
    shape: str | None = None

    def __post_init__(self) -> None:
        if (self.colour is None) == (self.shape is None):
            raise ValueError("a taste is one colour or one shape")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; one of {', '.join(COLOURS)}")
        if self.shape is not None and self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; one of {', '.join(SHAPES)}")

    @property
    def word(self) -> str:
        return self.colour or self.shape or ""

    def score(self, images: Tensor, cameras: Cameras | None = None) -> Tensor:
        """[V,3,H,W] in [0,1] → [V]: higher is closer to the taste (colour: minus the object's mean hue miss;
        shape: silhouette IoU from the same camera).

        A pixel's hue miss is the angle between its chroma (the pixel minus its grey level) and the taste
        colour's, over π; a pixel with little chroma (grey, black, white) misses by 90°, so a person who
        likes blue prefers blue, then navy, cyan or purple, and only then black. Within the colour's hue a
        vivid pixel beats a dull one (DULL_COST): red before dark red, dark red before orange. (The
        evaluator's distance to the colour's shading line, which this used before, put black second for
        every colour: a simulated blue lover drove the cube dark, and the dark cube turned cyan; without
        the dull cost a red lover let the cube go dark red, which the prior's last steps read as brown
        orange; measured in bench/BENCHMARKS.md, "Steerability".)"""
        imgs = images.detach().float().cpu().clamp(0, 1)
        if imgs.shape[-1] != EVAL_RES:
            imgs = torch.nn.functional.interpolate(imgs, size=(EVAL_RES, EVAL_RES), mode="area")
        fg = foreground(imgs)
        if self.shape is not None:
            if cameras is None:
                raise ValueError("a shape taste needs the cameras of the views")
            sil = _silhouettes([Placed(self.shape)], cameras.to("cpu"))[0]
            return _iou(sil, fg)
        return torch.tensor([hue_score(imgs[v].permute(1, 2, 0)[fg[v]], self.colour) for v in range(len(imgs))])

    def choose(self, images_a: Tensor, images_b: Tensor, cameras: Cameras | None = None) -> str:
        """'a', 'b' or 'tie', comparing the mean score over views."""
        d = float(self.score(images_a, cameras).mean() - self.score(images_b, cameras).mean())
        if abs(d) < TIE_BELOW:
            return "tie"
        return "a" if d > 0 else "b"


def hue_score(pixels: Tensor, colour: str) -> float:
    """Pixels [P,3] in [0,1] → minus their mean miss of the colour (Taste.score); −1 with no pixels."""
    if not len(pixels):
        return -1.0
    c = torch.tensor(COLOURS[colour])
    c = c - c.mean()  # the colour's chroma
    q = pixels - pixels.mean(-1, keepdim=True)
    sat = q.norm(dim=-1)
    miss = torch.arccos((q @ c / (sat * c.norm()).clamp(min=1e-6)).clamp(-1, 1)) / torch.pi
    coloured = (sat / (0.5 * c.norm())).clamp(max=1)  # a grey pixel misses by 90°
    dull = (1 - sat / c.norm()).clamp(0, 1)  # chroma short of the colour's own
    return float(-(coloured * (miss + DULL_COST * dull) + (1 - coloured) * 0.5).mean())


class TasteJudge(Judge):
    """The simulated person judging in-process, mapped as the human judge maps one clear vote:
    a winner with gap 1 (push-pull), or a tie with gap 0 (pull only)."""

    name = "taste"

    def __init__(self, taste: Taste):
        self.taste = taste

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        cams = Cameras.from_dicts(context.cameras) if context is not None and context.cameras else None
        choice = self.taste.choose(images_a, images_b, cams)
        return Judgement(winner=choice, gap=0.0 if choice == "tie" else 1.0, judge=self.name,  # type: ignore[arg-type]
                         extra={"source": self.name})

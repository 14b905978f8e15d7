"""The judge interface: two candidate image batches + prompt → per-view scores, winner, gap.

Winner 'tie' exists for people ("can't tell"); a tie maps to gap 0, so the loss pulls only.
Model judges never return 'tie': equal scores go to candidate 'a', as in the reference code.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

Winner = Literal["a", "b", "tie"]


@dataclass
class JudgeContext:
    """What a judge may want besides the images (the human judge logs all of it)."""

    step: int = 0
    t: tuple[int, int] = (0, 0)  # timestep of candidate a, b
    seeds: tuple[int, int] = (0, 0)  # noise seeds of candidate a, b
    cameras: list[dict] = field(default_factory=list)
    render: Tensor | None = None  # [V,3,H,W] the current render, for context
    run_id: int | None = None
    distance: float | None = None  # how different the candidates look (images.pixel_distance)
    steps: int = 0  # the run's number of steps (0: unknown)


@dataclass
class Judgement:
    winner: Winner
    gap: float  # ≥ 0, in the judge's score units (compare with τ in the same units)
    judge: str  # judge name, as logged
    scores_a: list[float] | None = None  # per view
    scores_b: list[float] | None = None
    raw: str | None = None  # raw model answer or vote summary
    skip: bool = False  # the step is skipped (human timeout with fallback 'skip', or 'both bad')
    pair_id: int | None = None  # set when the judge already wrote the pair to the log
    extra: dict[str, Any] = field(default_factory=dict)

    def mean_scores(self) -> tuple[float | None, float | None]:
        """Mean score of each candidate over its views (None where the judge gave no scores)."""
        def mean(xs):
            return sum(xs) / len(xs) if xs else None

        return mean(self.scores_a), mean(self.scores_b)


@dataclass
class LateDecision:
    """People's verdict on a pair of an earlier step, which the run did not wait for (human.mode=async):
    what it takes to make that pair again at the current parameters (docs/method.md, "Late decisions")."""

    pair_id: int
    step: int
    t: tuple[int, int]
    seeds: tuple[int, int]
    cameras: list[dict]
    verdict: Judgement


def judgement_from_scores(name: str, scores_a: Tensor, scores_b: Tensor, raw: str | None = None) -> Judgement:
    """Per-view scores → winner by mean score (ties → 'a'), gap = |mean_a − mean_b|."""
    sa, sb = float(scores_a.float().mean()), float(scores_b.float().mean())
    return Judgement(
        winner="a" if sa >= sb else "b",
        gap=abs(sa - sb),
        judge=name,
        scores_a=[float(x) for x in scores_a.flatten()],
        scores_b=[float(x) for x in scores_b.flatten()],
        raw=raw,
    )


class Judge(ABC):
    name: str

    @abstractmethod
    def compare(
        self, images_a: Tensor, images_b: Tensor, prompt: str, context: JudgeContext | None = None
    ) -> Judgement:
        """images_*: [V,3,H,W] in [0,1], the V views of each candidate."""

    def score(self, images: Tensor, prompt: str) -> Tensor:
        """[V,3,H,W] in [0,1] → [V] scores, higher is better (dpo.pick=best_worst ranks N candidates with
        it). Only a judge with a reward model scores single images; the others only compare pairs."""
        raise NotImplementedError(f"the {self.name} judge scores no single images")

    def scores_images(self) -> bool:
        """Whether score() works (checked before a run starts, not at its first step)."""
        return type(self).score is not Judge.score

    def features(self, images: Tensor) -> Tensor:
        """[V,3,H,W] → [V,D] image features, for a preference model learned on top of this judge."""
        raise NotImplementedError(f"the {self.name} judge has no image features to learn people's taste on")

    def end_of_run(self, run_id: int | None) -> None:  # noqa: B027 (optional hook; most judges need nothing)
        """Called once after the last step, before the final checkpoint: a judge that waits on
        people closes what it still has open."""

    def late_decisions(self) -> list[LateDecision]:
        """Verdicts on earlier steps' pairs that arrived since the last call, to be replayed as gradients
        at the current parameters; a judge that decides at its own step has none."""
        return []

    def parts(self) -> list[Judge]:
        """The judges this one is made of (ensemble members, a guarded judge and its fallback, the
        model judge beside people); none for a plain judge."""
        return []

    def sync(self, context: JudgeContext | None) -> None:
        """Before a comparison: read what the judge takes from the log (an LMM judge: an admin's
        questions). Plain judges pass it on to their parts."""
        for part in self.parts():
            part.sync(context)

    def state_dict(self) -> dict:
        """What a judge learns during a run (saved in the checkpoint, so --resume continues it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (optional hook)
        pass

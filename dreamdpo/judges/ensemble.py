"""Judges made of judges: an ensemble ('hpsv2+imagereward+lmm:...') and the cost guard.

The ensemble's rule is a majority of its members' verdicts, counted by the rule people's votes on a
pair follow (db/consensus.py): the verdict with the most members among a, b and tie wins; a draw at
the top, or most members saying tie, is a tie with gap 0 (pull only). A member's tie is a vote
for tie (an LMM judge ties when its two orders disagree), so one member for a and one tying is a
draw, not a win for a. A clear winner's gap = |n_a − n_b| / n_voting in [0, 1]. Why a vote and
not a mean of scores: the members' scores live in different units (HPSv2 ≈ 0.25 ± 0.01,
ImageReward z-scores, LMM probabilities), and any fixed rescaling would let the widest-scaled judge
decide; a vote needs no calibration, carries no state across steps (so `--resume` is exact) and
treats no member, nor either candidate, first (the reference code ORed two verdicts, which favours
candidate 1). τ for an ensemble is in vote-margin units, as for people. A member that skips
abstains. Every member's own Judgement rides along in `extra["votes"]`, and the recorder logs each
as that member's vote on the same pair.

The cost guard (`BudgetJudge`): after `max_calls` model calls (an LMM request counts 1; a reward
model's batched compare counts 1) the judge stops and the fallback judge takes over; with no
fallback the steps are pull-only. The calls spent are in the judge's state, which the checkpoint
keeps, so a run continued with --resume goes on counting from there; only the calls of steps done
after the last checkpoint of a process that died (kill -9, a lost machine) are paid twice, as those
steps are done again (at most checkpoint_every steps' worth). Each start's one probe request of an
lmm-api judge is not counted. A judge whose end-point is down after its retries
(lmm.JudgeUnavailable) also hands that step to the fallback, when there is one.
"""
from __future__ import annotations

import math
import warnings

from torch import Tensor

from dreamdpo.judges.base import Judge, JudgeContext, Judgement


def model_calls(judge) -> int | None:
    """Model calls a judge has made so far, when it counts them (LMM back-ends, ensembles of them)."""
    return getattr(judge, "calls", None)


def calls_per_compare(judge, prompt: str, n_views: int) -> int:
    fn = getattr(judge, "calls_per_compare", None)
    return fn(prompt, n_views) if fn is not None else 1


class EnsembleJudge(Judge):
    """Majority of the members' verdicts (module docstring); every member's verdict kept."""

    def __init__(self, members: list[Judge], name: str):
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two judges")
        self.members, self.name = members, name
        self._compares = 0

    @property
    def calls(self) -> int:
        return sum(c if (c := model_calls(m)) is not None else self._compares for m in self.members)

    def calls_per_compare(self, prompt: str, n_views: int) -> int:
        return sum(calls_per_compare(m, prompt, n_views) for m in self.members)

    def parts(self) -> list[Judge]:
        return list(self.members)

    def state_dict(self) -> dict:
        return {"members": [m.state_dict() for m in self.members], "compares": self._compares}

    def load_state_dict(self, state: dict) -> None:
        for m, s in zip(self.members, state.get("members") or [{}] * len(self.members), strict=False):
            m.load_state_dict(s or {})
        self._compares = int(state.get("compares", self._compares))

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        votes = [m.compare(images_a, images_b, prompt, context) for m in self.members]
        self._compares += 1
        return combine(votes, self.name)


def combine(votes: list[Judgement], name: str) -> Judgement:
    """Majority rule over member verdicts (pure; see the module docstring)."""
    from db.consensus import outcome  # a pure function: the one rule people's votes follow too

    voting = [v for v in votes if not v.skip]
    counts = {k: sum(v.winner == k for v in voting) for k in ("a", "b", "tie")}
    n_a, n_b, n = counts["a"], counts["b"], len(voting)
    summary = ", ".join(f"{v.judge}={'skip' if v.skip else v.winner}" for v in votes)
    if n == 0:
        return Judgement(winner="tie", gap=0.0, judge=name, skip=True, raw=f"majority: {summary}",
                         extra={"votes": votes})
    winner, _rule, margin = outcome({**counts, "both_bad": 0})
    return Judgement(winner=winner, gap=0.0 if winner == "tie" else margin, judge=name, scores_a=[n_a / n],
                     scores_b=[n_b / n], raw=f"majority {n_a}:{n_b} of {n}: {summary}", extra={"votes": votes})


def member_votes(judgement: Judgement) -> list[Judgement]:
    """Every sub-verdict a judgement carries (ensemble members, an LMM's two orders), flattened."""
    out = []
    for v in judgement.extra.get("votes", []):
        out.append(v)
        out.extend(member_votes(v))
    return out


class BudgetJudge(Judge):
    """The cost guard around a judge (module docstring)."""

    def __init__(self, judge: Judge, max_calls: int | None = None, fallback: Judge | None = None):
        self.judge, self.max_calls, self.fallback = judge, max_calls, fallback
        self.name = judge.name
        self.used = 0  # model calls spent, kept in the checkpoint: a resumed run goes on from there
        self.handed_over = False

    def parts(self) -> list[Judge]:
        return [self.judge] + ([self.fallback] if self.fallback is not None else [])

    def state_dict(self) -> dict:
        """The calls spent so far (so the budget holds across --resume) and what the judges learned."""
        return {"used": self.used, "handed_over": self.handed_over, "judge": self.judge.state_dict(),
                "fallback": self.fallback.state_dict() if self.fallback is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.used = int(state.get("used", 0))
        self.handed_over = bool(state.get("handed_over", False))
        self.judge.load_state_dict(state.get("judge") or {})
        if self.fallback is not None:
            self.fallback.load_state_dict(state.get("fallback") or {})

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        from dreamdpo.judges.lmm import JudgeUnavailable

        self.judge.sync(context)  # an admin's new questions change the calls this comparison needs
        need = calls_per_compare(self.judge, prompt, images_a.shape[0])
        if self.max_calls is not None and self.used + need > self.max_calls:
            if not self.handed_over:
                self.handed_over = True
                warnings.warn(f"judge {self.name} reached judge_max_calls={self.max_calls} ({self.used} calls); "
                              f"{self.fallback.name if self.fallback else 'pull-only steps'} from now on",
                              stacklevel=2)
            return self._fallback(images_a, images_b, prompt, context, "budget")
        before = model_calls(self.judge)
        try:
            verdict = self.judge.compare(images_a, images_b, prompt, context)
        except JudgeUnavailable as e:
            if self.fallback is None:
                raise
            warnings.warn(f"{e}; {self.fallback.name} judges this step", stacklevel=2)
            return self._fallback(images_a, images_b, prompt, context, "unavailable")
        finally:
            after = model_calls(self.judge)
            self.used += (after - before) if before is not None and after is not None else need
        return verdict

    def _fallback(self, images_a, images_b, prompt, context, why: str) -> Judgement:
        if self.fallback is None:
            return Judgement(winner="tie", gap=0.0, judge="fallback:pull", raw=f"{self.name}: {why}",
                             extra={"source": "fallback:pull"})
        verdict = self.fallback.compare(images_a, images_b, prompt, context)
        verdict.extra["source"] = f"fallback:{self.fallback.name}"
        return verdict


def estimate(judge: Judge, prompt: str, n_compares: int, n_views: int, resolution: int,
             max_calls: int | None = None) -> str:
    """One line printed before a run: compares, model calls and (for LMM judges) tokens, and where
    judge_max_calls would stop the judge."""
    inner = judge.judge if isinstance(judge, BudgetJudge) else judge
    members = inner.members if isinstance(inner, EnsembleJudge) else [inner]
    calls = tokens = 0
    for m in members:
        est = getattr(m, "estimate", None)
        if est is not None:
            e = est(prompt, n_compares, n_views, resolution)
            calls, tokens = calls + e["calls"], tokens + e["tokens"]
        else:
            calls += n_compares
    line = f"judge {inner.name}: {n_compares} comparisons, about {calls} model calls"
    if tokens:
        line += f" and {tokens / 1e6:.1f}M tokens" if tokens >= 1e5 else f" and {tokens:,} tokens"
    if max_calls is not None and calls > max_calls:
        per = calls / max(n_compares, 1)
        line += (f"; judge_max_calls={max_calls} hands over after about {math.floor(max_calls / per)} comparisons"
                 if per else "")
    return line


def run_estimate(judge: Judge, cfg) -> str:
    """estimate() for a RunConfig, before the prior is loaded: MVDream backbones judge 4 views a
    comparison, others 1; one comparison per camera group and step."""
    views = 4 if str(cfg.backbone).startswith("mvdream") else 1
    groups = max(1, (cfg.batch_size or views) // views)
    resolution = cfg.prior_resolution or cfg.schedule.resolution
    return estimate(judge, cfg.prompt, cfg.steps * groups, views, resolution, cfg.judge_max_calls)

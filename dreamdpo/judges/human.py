"""People as the judge: post the pair to the preference log and wait for their decision.

Which steps people judge (the cadence, `HumanPolicy`):
- `every_k`: steps with step % every_k == 0 go to people (1 = every step);
- `uncertain_below`: of those, only the ones where the model judge's gap is below this
  ("ask people when the model is unsure"); needs a model judge;
- every other step is judged by the model judge (pull-only if there is none), and with
  probability `audit_rate` its pair is also posted as an 'audit' pair with the model's vote
  logged on that same pair, without waiting (judge–human agreement is then a join).

How a decision becomes (winner, gap) for the loss (db.queue.outcome writes the decision):
- clear majority for a or b → winner a|b, gap = vote margin |n_a − n_b| / n_votes in [0, 1];
  unanimous votes give gap 1, which is ≥ any τ < 1: push-pull;
- tie (people said "tie", or the top outcomes drew) → winner 'tie', gap 0: pull only;
- both bad on top → the step is skipped (no parameter update): people said neither sample is
  a target, so pulling towards either would teach the wrong thing.

On timeout the pair is expired (late votes refused) and `fallback` applies: 'model' (the model
judge decides), 'pull' (pull only) or 'skip' (no update). The fallback is logged as a judge vote
named 'fallback:<what>' on the same pair, and the Judgement carries that pair's id, so the
recorder does not post it twice. Left/right shuffling is the app's business, not the judge's.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta

from torch import Tensor

from dreamdpo.errors import UserError
from dreamdpo.images import views_png
from dreamdpo.judges.base import Judge, JudgeContext, Judgement
from dreamdpo.seeding import Stream, rng

FALLBACKS = ("model", "pull", "skip")
CONTROL_POLL_S = 0.5  # how often a waiting judge checks whether the run was cancelled


@dataclass
class HumanPolicy:
    votes_needed: int = 1  # k annotators per pair
    timeout_s: float = 300.0
    fallback: str = "model"  # model | pull | skip
    every_k: int = 1  # people judge every k-th step
    uncertain_below: float | None = None  # ask people only when the model judge's gap is below this
    audit_rate: float = 0.0  # fraction of model-judged pairs also sent to people, without waiting
    lease_seconds: float = 120.0
    question: str = "Which one matches the prompt better?"
    # quality control mixed into the queue after each live pair (db/qc.py): a copy of a gold pair
    # (known answer) and a swapped duplicate of an earlier live pair, each with this probability
    gold_rate: float = 0.0
    duplicate_rate: float = 0.0

    def check(self, has_model_judge: bool) -> None:
        """One-line errors for settings that cannot work."""
        if self.votes_needed < 1:
            raise UserError(f"human.votes_needed must be ≥ 1, got {self.votes_needed}")
        if self.timeout_s <= 0:
            raise UserError(f"human.timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.fallback not in FALLBACKS:
            raise UserError(f"human.fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if self.every_k < 1:
            raise UserError(f"human.every_k must be ≥ 1, got {self.every_k}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise UserError(f"human.audit_rate must be in [0, 1], got {self.audit_rate}")
        for name in ("gold_rate", "duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"human.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lease_seconds <= 0:
            raise UserError(f"human.lease_seconds must be > 0, got {self.lease_seconds}")
        if not has_model_judge and self.fallback == "model":
            raise UserError("human.fallback=model needs a model judge beside people; set assist_judge "
                            "or human.fallback=pull (or skip)")
        if not has_model_judge and self.uncertain_below is not None:
            raise UserError("human.uncertain_below needs a model judge beside people; set assist_judge")


def decision_to_judgement(decision: dict, pair_id: int) -> Judgement:
    """People's decision (db.queue decision dict) → Judgement, by the mapping in the module doc."""
    counts = {k: int(decision.get(f"n_{k}", 0) or 0) for k in ("a", "b", "tie", "both_bad")}
    extra = {"source": "human", "rule": decision.get("rule"), "counts": counts}
    raw = json.dumps({"rule": decision.get("rule"), **counts})
    if decision.get("rule") == "both_bad":
        return Judgement(winner="tie", gap=0.0, judge="human", raw=raw, skip=True, pair_id=pair_id, extra=extra)
    winner = decision["winner"]
    gap = 0.0 if winner == "tie" else float(decision["gap"])
    return Judgement(winner=winner, gap=gap, judge="human", raw=raw, pair_id=pair_id, extra=extra)


class HumanJudge(Judge):
    name = "human"

    def __init__(self, engine, policy: HumanPolicy, model_judge: Judge | None = None, seed: int = 0):
        policy.check(model_judge is not None)
        self.engine = engine
        self.policy = policy
        self.model_judge = model_judge
        self.seed = seed

    # ---- cadence ----
    def _audit_draw(self, step: int) -> bool:
        """Seeded per step, so a resumed run audits the same steps."""
        return self.policy.audit_rate > 0 and rng(self.seed, step, Stream.AUDIT).random() < self.policy.audit_rate

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str, context: JudgeContext | None = None) -> Judgement:
        ctx = context or JudgeContext()
        if ctx.run_id is None:
            raise UserError("the human judge needs a run in the preference log (JudgeContext.run_id)")
        people = ctx.step % self.policy.every_k == 0
        model = None
        if people and self.policy.uncertain_below is not None:
            model = self.model_judge.compare(images_a, images_b, prompt, ctx)
            people = model.gap < self.policy.uncertain_below
        if people:
            return self._ask_people(images_a, images_b, prompt, ctx)
        if model is None:
            model = self._model_or_pull(images_a, images_b, prompt, ctx)
        model.extra.setdefault("source", model.judge)
        if self._audit_draw(ctx.step):
            pair_id = self._post(images_a, images_b, ctx, kind="audit", deadline=False)
            self._log(pair_id, model)
            model.pair_id = pair_id
            model.extra["audit"] = True
        return model

    def _model_or_pull(self, images_a, images_b, prompt, ctx) -> Judgement:
        if self.model_judge is not None:
            return self.model_judge.compare(images_a, images_b, prompt, ctx)
        return Judgement(winner="tie", gap=0.0, judge="pull-only", extra={"source": "pull-only"})

    # ---- the log ----
    def _post(self, images_a, images_b, ctx: JudgeContext, kind: str, deadline: bool) -> int:
        from db import queue
        from db.models import utcnow

        render = views_png(ctx.render) if ctx.render is not None else None
        return queue.post_pair(
            self.engine, ctx.run_id, ctx.step, views_png(images_a), views_png(images_b), render_image=render,
            t=ctx.t[0], t_b=ctx.t[1], seed_a=ctx.seeds[0], seed_b=ctx.seeds[1], cameras=ctx.cameras,
            votes_needed=self.policy.votes_needed,
            deadline=utcnow() + timedelta(seconds=self.policy.timeout_s) if deadline else None, kind=kind,
        )

    def _log(self, pair_id: int, j: Judgement, name: str | None = None) -> None:
        from db import queue

        choice = "skip" if j.skip else j.winner
        queue.log_judge(self.engine, pair_id, name or j.judge, choice, *j.mean_scores(),
                        raw=j.raw)

    def _ask_people(self, images_a, images_b, prompt: str, ctx: JudgeContext) -> Judgement:
        pair_id = self._post(images_a, images_b, ctx, kind="live", deadline=True)
        if self.policy.gold_rate or self.policy.duplicate_rate:
            from db import qc

            qc.mix_in(self.engine, ctx.run_id,
                      qc.QCConfig(self.policy.gold_rate, self.policy.duplicate_rate, self.policy.votes_needed),
                      rng=rng(self.seed, ctx.step, Stream.QC))
        t0 = time.monotonic()
        decision, cancelled = self._wait(pair_id, ctx.run_id)
        waited = time.monotonic() - t0
        if cancelled:
            j = Judgement(winner="tie", gap=0.0, judge="cancelled", skip=True, pair_id=pair_id,
                          extra={"source": "cancelled"})
        elif decision is not None:
            j = decision_to_judgement(decision, pair_id)
        else:
            j = self._fallback(images_a, images_b, prompt, ctx, pair_id)
        j.extra["wait_s"] = waited
        return j

    def _wait(self, pair_id: int, run_id: int) -> tuple[dict | None, bool]:
        """Poll for the decision until the deadline; stop early if the run is cancelled."""
        from db import queue

        end = time.monotonic() + self.policy.timeout_s
        next_control = time.monotonic() + CONTROL_POLL_S
        while time.monotonic() < end:
            d = queue.get_decision(self.engine, pair_id)
            if d is not None:
                return d, False
            if time.monotonic() >= next_control:
                next_control = time.monotonic() + CONTROL_POLL_S
                if (queue.get_run(self.engine, run_id) or {}).get("status") == "cancelled":
                    return None, True
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        # atomically: the decision if it landed at the last moment, else the pair is expired
        return queue.wait_for_decision(self.engine, pair_id, 0.0), False

    def _fallback(self, images_a, images_b, prompt: str, ctx: JudgeContext, pair_id: int) -> Judgement:
        how = self.policy.fallback
        if how == "model":
            j = self.model_judge.compare(images_a, images_b, prompt, ctx)
            name = f"fallback:{j.judge}"
        elif how == "pull":
            j = Judgement(winner="tie", gap=0.0, judge="fallback:pull")
            name = j.judge
        else:
            j = Judgement(winner="tie", gap=0.0, judge="fallback:skip", skip=True)
            name = j.judge
        self._log(pair_id, j, name)
        j.pair_id = pair_id
        j.extra["source"] = name
        return j

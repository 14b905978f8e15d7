"""People as the judge: post the pair to the preference log and wait for their decision.

Which steps people judge (the cadence, `HumanPolicy`):
- `every_k`: steps with step % every_k == 0 go to people (1 = every step);
- `uncertain_below`: of those, only the ones where the model judge's gap is below this
  ("ask people when the model is unsure"); needs a model judge;
- every other step is judged by the model judge (pull-only if there is none), and with
  probability `audit_rate` its pair is also posted as an 'audit' pair with the model's vote
  logged on that same pair, without waiting (judge–human agreement is then a join).

How a decision becomes (winner, gap) for the loss (db.votes writes the decision by db.consensus.outcome):
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
import math
import time
from dataclasses import dataclass
from datetime import timedelta

from torch import Tensor

from dreamdpo.errors import UserError
from dreamdpo.images import images_from_png, quantize, views_png
from dreamdpo.judges.base import Judge, JudgeContext, Judgement, LateDecision
from dreamdpo.judges.learned import Example, PreferenceModel, target
from dreamdpo.seeding import Stream, rng

FALLBACKS = ("model", "pull", "skip")
MODES = ("blocking", "async")
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
    # blocking: the run waits for people at every k-th step (every_k, uncertain_below, timeout_s).
    # async: the run never waits; a preference model learned from people's decisions (learned.py)
    # judges every step, and a pair goes to people only where that model is unsure
    mode: str = "blocking"
    max_pairs: int = 30  # async: pairs posted to people per run, at most
    # async: the budget is spread over the first pace_until of the run's steps: by step s at most
    # ⌈max_pairs·(s + 1) / (pace_until·steps)⌉ pairs are posted (0: post while budget is left). Counted in
    # steps, not seconds, so what people teach the model does not depend on how fast the machine is
    # (0.8: bench/BENCHMARKS.md, "Steerability, session 8")
    pace_until: float = 0.8
    waiting_per_annotator: int = 2  # async: pairs kept waiting per annotator online (and with nobody online)
    ask_uncertainty: float = 0.5  # async: ask people when 1 − |2p − 1| ≥ this (p: the model's P(a ≻ b))
    prior_weight: float = 1.0  # async: β₀, the weight of the assist judge's score gap before any vote
    # async: a decision that lands after its step also pushes at the current parameters, with the pair's
    # own seeds, t and cameras (optimize.replayed_loss), besides teaching the learned model
    replay_late: bool = True

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
        if self.mode not in MODES:
            raise UserError(f"human.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "async":
            if not has_model_judge:
                raise UserError("human.mode=async learns from people on top of a model judge; set assist_judge "
                                "(toy-reward, hpsv2 or imagereward)")
            if self.max_pairs < 0 or self.waiting_per_annotator < 1:
                raise UserError("human.max_pairs must be ≥ 0 and human.waiting_per_annotator ≥ 1")
            if not 0.0 <= self.ask_uncertainty <= 1.0:
                raise UserError(f"human.ask_uncertainty must be in [0, 1], got {self.ask_uncertainty}")
            if not 0.0 <= self.pace_until <= 1.0:
                raise UserError(f"human.pace_until must be in [0, 1] (a share of the run's steps; 0: no pacing), "
                                f"got {self.pace_until}")


def paced_budget(max_pairs: int, pace_until: float, step: int, steps: int) -> int:
    """Pairs a run may have posted to people by `step` (HumanPolicy.pace_until): the budget spread evenly over
    the first pace_until·steps steps; all of it with no pacing or an unknown number of steps."""
    if pace_until <= 0 or steps <= 0:
        return max_pairs
    return min(max_pairs, math.ceil(max_pairs * (step + 1) / (pace_until * steps)))


def decision_to_judgement(decision: dict, pair_id: int) -> Judgement:
    """People's decision (db.votes decision dict) → Judgement, by the mapping in the module doc."""
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

    def __init__(self, engine, policy: HumanPolicy, model_judge: Judge | None = None, seed: int = 0,
                 outage_s: float = 300.0):
        policy.check(model_judge is not None)
        self.engine = engine
        self.outage_s = outage_s
        self.policy = policy
        self.model_judge = model_judge
        self.seed = seed
        self.learned: PreferenceModel | None = None  # async mode: built on the first step
        self.agreement: float | None = None  # the learned model's leave-one-out agreement with people
        self._posted: int | None = None  # async: live pairs this run has posted (read from the log once)
        self._prompt = ""
        self._late: list[LateDecision] = []  # async: decisions learned since the loop last asked

    def parts(self) -> list[Judge]:
        return [self.model_judge] if self.model_judge is not None else []

    def late_decisions(self) -> list[LateDecision]:
        late, self._late = self._late, []
        return late

    def state_dict(self) -> dict:
        return {"learned": None if self.learned is None else self.learned.state_dict(), "agreement": self.agreement}

    def end_of_run(self, run_id: int | None) -> None:
        """Pairs still waiting expire (no vote on them would be used), then the model learns every
        decision that landed before that, so the final checkpoint holds all of them. Retried through
        a log outage of up to outage_s, like every step."""
        from db.engine import retry

        if run_id is not None:
            retry(lambda: self._end_of_run(run_id), timeout_s=self.outage_s)

    def _end_of_run(self, run_id: int) -> None:
        from db import pairs

        pairs.expire_waiting(self.engine, run_id)
        if self.learned is not None:
            self._learn(run_id, self._prompt)

    def load_state_dict(self, state: dict) -> None:
        self.learned = None if state.get("learned") is None else PreferenceModel.from_state_dict(state["learned"])
        self.agreement = state.get("agreement")

    # ---- cadence ----
    def _audit_draw(self, step: int) -> bool:
        """Seeded per step, so a resumed run audits the same steps."""
        return self.policy.audit_rate > 0 and rng(self.seed, step, Stream.AUDIT).random() < self.policy.audit_rate

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        """Through a log outage of up to outage_s the step is retried with back-off; a retried step
        finds the pair it already posted (by step and seeds), so nothing is posted twice."""
        from db.engine import retry

        return retry(lambda: self._compare(images_a, images_b, prompt, context), timeout_s=self.outage_s)

    def _compare(self, images_a: Tensor, images_b: Tensor, prompt: str, context: JudgeContext | None) -> Judgement:
        from db.errors import RunCancelled

        try:
            return self._judge(images_a, images_b, prompt, context)
        except RunCancelled:  # cancelled between the last control check and this post: the loop stops next
            return Judgement(winner="tie", gap=0.0, judge="cancelled", skip=True, extra={"source": "cancelled"})

    def _judge(self, images_a: Tensor, images_b: Tensor, prompt: str, context: JudgeContext | None) -> Judgement:
        ctx = context or JudgeContext()
        if ctx.run_id is None:
            raise UserError("the human judge needs a run in the preference log (JudgeContext.run_id)")
        if self.policy.mode == "async":
            return self._learned_verdict(images_a, images_b, prompt, ctx)
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

    # ---- async: the learned model judges, people teach it ----
    def _learned_verdict(self, images_a, images_b, prompt: str, ctx: JudgeContext) -> Judgement:
        from db import feedback

        self._prompt = prompt
        base = self.model_judge.compare(images_a, images_b, prompt, ctx)
        fa, fb = (self.model_judge.features(quantize(x)).mean(0) for x in (images_a, images_b))
        if self.learned is None:
            self.learned = PreferenceModel(dim=fa.numel(), beta0=self.policy.prior_weight)
        self._learn(ctx.run_id, prompt)
        sa, sb = base.mean_scores()
        p, sd = self.learned.predict(fa - fb, (sa or 0.0) - (sb or 0.0))
        winner = "a" if p >= 0.5 else "b"
        j = Judgement(winner=winner, gap=abs(2 * p - 1), judge="learned", scores_a=[p], scores_b=[1 - p],
                      raw=json.dumps({"p_a": round(p, 4), "logit_sd": round(sd, 4), "base": base.winner,
                                      "votes": len(self.learned.examples)}),
                      extra={"source": "learned", "learned_from": len(self.learned.examples),
                             "agreement": self.agreement})
        unsure = 1 - abs(2 * p - 1) >= self.policy.ask_uncertainty or base.winner != winner
        if unsure and self._room_for_a_pair(ctx.run_id, ctx.step, ctx.steps):
            existing = feedback.find_pair(self.engine, ctx.run_id, ctx.step, *ctx.seeds)  # a resumed step
            j.pair_id = existing["pair_id"] if existing else self._post(images_a, images_b, ctx, "live", True)
            if not existing:
                self._posted = (self._posted or 0) + 1
                self._log(j.pair_id, j)  # the model's vote on the same pair: agreement with people is a join
            j.extra["asked"] = True
        return j

    def _room_for_a_pair(self, run_id: int, step: int, steps: int) -> bool:
        from db import feedback

        if self._posted is None:
            self._posted = feedback.posted_pairs(self.engine, run_id)
        if self._posted >= paced_budget(self.policy.max_pairs, self.policy.pace_until, step, steps):
            return False
        target = self.policy.waiting_per_annotator * max(1, feedback.annotators_online(self.engine))
        return feedback.waiting_pairs(self.engine, run_id) < target

    def _learn(self, run_id: int, prompt: str) -> None:
        """Add every decision people made on this run's pairs since the last step (none twice)."""
        from db import feedback

        rows = feedback.people_decisions(self.engine, run_id, exclude=self.learned.pair_ids)
        examples, late = [], []
        for r in rows:
            a, b = images_from_png(r["png_a"]), images_from_png(r["png_b"])
            sa, sb = self.model_judge.compare(a, b, prompt).mean_scores()
            df = self.model_judge.features(a).mean(0) - self.model_judge.features(b).mean(0)
            examples.append(Example(r["pair_id"], df, (sa or 0.0) - (sb or 0.0), target(r["winner"])))
            if self.policy.replay_late and r["winner"] in ("a", "b") and r["seed_a"] is not None and r["cameras"]:
                verdict = Judgement(winner=r["winner"], gap=float(r["gap"]), judge="human", pair_id=r["pair_id"],
                                    extra={"source": "late"})
                t = (r["t"], r["t"] if r["t_b"] is None else r["t_b"])
                late.append(LateDecision(r["pair_id"], r["step"], t, (r["seed_a"], r["seed_b"]), r["cameras"], verdict))
        if self.learned.add(examples):
            self._late += late  # only once the model holds them: a retried step finds none of them again
            self.agreement = self.learned.agreement()

    # ---- the log ----
    def _post(self, images_a, images_b, ctx: JudgeContext, kind: str, deadline: bool) -> int:
        from db import pairs
        from db.models import utcnow

        render = views_png(ctx.render) if ctx.render is not None else None
        return pairs.post_pair(
            self.engine, ctx.run_id, ctx.step, views_png(images_a), views_png(images_b), render_image=render,
            t=ctx.t[0], t_b=ctx.t[1], seed_a=ctx.seeds[0], seed_b=ctx.seeds[1], cameras=ctx.cameras,
            votes_needed=self.policy.votes_needed,
            deadline=utcnow() + timedelta(seconds=self.policy.timeout_s) if deadline else None, kind=kind,
            distance=ctx.distance,
        )

    def _log(self, pair_id: int, j: Judgement, name: str | None = None) -> None:
        from db import votes

        choice = "skip" if j.skip else j.winner
        votes.log_judge(self.engine, pair_id, name or j.judge, choice, *j.mean_scores(),
                        raw=j.raw)

    def _ask_people(self, images_a, images_b, prompt: str, ctx: JudgeContext) -> Judgement:
        from db import feedback
        from db.models import utcnow

        existing = feedback.find_pair(self.engine, ctx.run_id, ctx.step, *ctx.seeds)
        if existing is not None:  # a resumed run: this step's pair was posted before the crash; never twice
            pair_id = existing["pair_id"]
            left = (existing["deadline"] - utcnow()).total_seconds() if existing["deadline"] else 0.0
            decision, cancelled = self._wait(pair_id, ctx.run_id, max(0.0, left))
            j = (decision_to_judgement(decision, pair_id) if decision is not None
                 else self._fallback(images_a, images_b, prompt, ctx, pair_id))
            j.extra["resumed"] = True
            return j
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

    def _wait(self, pair_id: int, run_id: int, timeout_s: float | None = None) -> tuple[dict | None, bool]:
        """The decision, or None at the deadline (the pair is then expired); (None, True) if the run
        was cancelled meanwhile."""
        from db import feedback, runs, votes

        was_cancelled = []

        def stop_waiting() -> bool:
            """The run was cancelled, or the pair expired early (skipped with nobody else online)."""
            if (runs.get_run(self.engine, run_id) or {}).get("status") == "cancelled":
                was_cancelled.append(True)
                return True
            return feedback.pair_status(self.engine, pair_id) == "expired"

        timeout = self.policy.timeout_s if timeout_s is None else timeout_s
        d = votes.wait_for_decision(self.engine, pair_id, timeout, cancelled=stop_waiting, check_every=CONTROL_POLL_S)
        return d, bool(was_cancelled)

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

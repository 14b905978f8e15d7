"""How the loop reports what it does, without knowing where it goes.

The optimizer is handed a Recorder. The CLI passes a DbRecorder (the preference log); tests pass
a ListRecorder; a bare run uses the no-op base class. This keeps torch code free of SQL.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dreamdpo.images import views_png
from dreamdpo.judges.base import JudgeContext, Judgement

HISTORY_LIMIT = 2000  # points of loss/gap curve kept in the log's run row


class Recorder:
    """No-op recorder; subclasses override what they keep."""

    run_id: int | None = None

    def start(self, config: dict, prompt: str, question: str, backbone: str, judge: str,
              fingerprint: str | None = None) -> None:
        pass

    def record(self, judgement: Judgement, images_a: Tensor, images_b: Tensor, context: JudgeContext) -> None:
        """A judged pair. Judges that already wrote the pair (judgement.pair_id set) are not re-posted."""

    def progress(self, step: int, metrics: dict, preview: Tensor | None = None) -> None:
        pass

    def control(self) -> str:
        """'running', 'paused' or 'cancelled' (an admin may pause or cancel a run from the app)."""
        return "running"

    def checkpoint_saved(self, path) -> None:
        """The run's checkpoint was just written to path (a queued run copies it to its storage URL)."""

    def finish(self, status: str, outputs: dict | None = None) -> None:
        pass


@dataclass
class ListRecorder(Recorder):
    judgements: list[tuple[int, Judgement]] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    status: str | None = None

    def record(self, judgement, images_a, images_b, context):
        self.judgements.append((context.step, judgement))

    def progress(self, step, metrics, preview=None):
        self.metrics.append({"step": step, **metrics})

    def finish(self, status, outputs=None):
        self.status = status


class DbRecorder(Recorder):
    """Writes the run, every model-judged pair and progress into the preference log (db/)."""

    def __init__(self, engine, run_id: int | None = None, outage_s: float = 300.0):
        self.engine = engine
        self.run_id = run_id
        self.outage_s = outage_s
        self._history: list[dict] = []
        self._extra: dict[str, Any] = {}
        self._last_beat = float("-inf")  # time.monotonic() of the last heartbeat written (db/liveness.py)
        self._step: tuple[int, bool] | None = None  # (step, logged before) once its first group is in the log

    def _retry(self, fn):
        """Every write survives a log outage of up to outage_s (back-off); a transient error never ends a run."""
        from db.engine import retry

        def say(error, wait):
            warnings.warn(f"the log is unreachable ({type(error).__name__}); retrying in {wait:.0f} s", stacklevel=3)

        return retry(fn, timeout_s=self.outage_s, on_retry=say)

    def start(self, config, prompt, question, backbone, judge, fingerprint=None):
        """The one place a run's row is created (after every check of the run has passed), or the
        resumed run's row, which must be this run's: same fingerprint (prompt, prior, judge, seed, folder)."""
        from db import runs
        from dreamdpo.errors import UserError

        if self.run_id is None:
            self.run_id = runs.create_run(
                self.engine, prompt, question=question, config=config, backbone=backbone, fingerprint=fingerprint,
                judge_policy={"judge": judge, "assist_judge": config.get("assist_judge"), **config.get("human", {})},
            )
        else:
            run = runs.get_run(self.engine, self.run_id)
            if run is None or run["prompt"] != prompt or run.get("fingerprint") not in (None, fingerprint):
                what = "has no run" if run is None else f"holds another run (prompt {run['prompt'][:60]!r})"
                raise UserError(f"the log {what} under id {self.run_id}; resume with the log and the prompt this "
                                "run was started with (--db, --prompt), or start a new run with another --out")
            self._history = list((run.get("metrics") or {}).get("history", []))
            self._extra = {k: v for k, v in (run.get("metrics") or {}).items() if k != "history"}
        self._set_status("running", heartbeat=True)
        self._last_beat = time.monotonic()

    def _set_status(self, status: str | None, **kw) -> None:
        """Every write of the run's row (status, step, metrics, heartbeat): db.runs.set_run_status. A
        queued run's worker writes only while it holds the run (dreamdpo/worker.py)."""
        from db import runs

        runs.set_run_status(self.engine, self.run_id, status, **kw)

    def record(self, judgement, images_a, images_b, context):
        return self._retry(lambda: self._record(judgement, images_a, images_b, context))

    def _record(self, judgement, images_a, images_b, context):
        if self._step is None or self._step[0] != context.step:  # the step's first camera group
            logged = judgement.pair_id is None and self._logged_before(judgement, context)
            if judgement.pair_id is None:
                self._post(judgement, images_a, images_b, context)
            self._step = (context.step, logged)
        elif judgement.pair_id is None and not self._step[1]:  # a later group of a step logged by this process
            self._post(judgement, images_a, images_b, context)

    def _logged_before(self, judgement, context) -> bool:
        """A step done again (after a crash and --resume, or a write retried through an outage) finds the
        pair an earlier attempt logged, by (run, step, member seeds), and logs nothing twice. The camera
        groups of one step share its seeds: the first group is looked up, the others follow it."""
        from db import feedback

        existing = feedback.find_pair(self.engine, self.run_id, context.step, *context.seeds)
        if existing is not None:
            judgement.pair_id = existing["pair_id"]
        return existing is not None

    def _post(self, judgement, images_a, images_b, context):
        from db import pairs, votes

        render = views_png(context.render) if context.render is not None else None
        if judgement.judge == "indistinct":  # a record of the step, never a vote nor a labelled row
            judgement.pair_id = pairs.post_pair(
                self.engine, self.run_id, context.step, views_png(images_a), views_png(images_b),
                render_image=render, t=context.t[0], t_b=context.t[1], seed_a=context.seeds[0],
                seed_b=context.seeds[1], cameras=context.cameras, status="indistinct", distance=context.distance)
            return
        choice = judgement.winner if not judgement.skip else "skip"
        sa, sb = judgement.mean_scores()
        judgement.pair_id = votes.record_model_comparison(
            self.engine, self.run_id, context.step, views_png(images_a), views_png(images_b),
            judgement.judge, choice, sa, sb, raw=judgement.raw, render_image=render,
            t=context.t[0], t_b=context.t[1], seed_a=context.seeds[0], seed_b=context.seeds[1],
            cameras=context.cameras, kind="live", distance=context.distance,
        )
        self._record_members(judgement)

    def _record_members(self, judgement):
        """Each ensemble member's (and each LMM order's) own vote, on the same pair."""
        from db import votes
        from dreamdpo.judges.ensemble import member_votes

        for v in member_votes(judgement):
            sa, sb = v.mean_scores()
            votes.log_judge(self.engine, judgement.pair_id, v.judge, v.winner if not v.skip else "skip",
                            sa, sb, raw=v.raw)

    def progress(self, step, metrics, preview=None):
        return self._retry(lambda: self._progress(step, metrics, preview))

    def _progress(self, step, metrics, preview=None):
        from db import images

        if not self._history or self._history[-1]["step"] != step:  # a retried call adds no second point
            self._history.append({"step": step, **metrics})
        if len(self._history) > HISTORY_LIMIT:  # keep every other old point: bounded row size
            self._history = self._history[: HISTORY_LIMIT // 2 : 2] + self._history[HISTORY_LIMIT // 2 :]
        if preview is not None:
            self._extra["preview"] = images.save_image(self.engine, views_png(preview))
            self._extra.setdefault("first_preview", self._extra["preview"])  # what the run started from
        self._set_status(None, step=step, metrics={"history": self._history, **self._extra},
                         heartbeat=True)  # the step is the heartbeat
        self._last_beat = time.monotonic()

    def control(self):
        return self._retry(lambda: self._control())

    def _control(self):
        from db import runs
        from db.liveness import BEAT_EVERY_S

        run = runs.get_run(self.engine, self.run_id)
        status = (run or {}).get("status", "running")
        if status == "paused" and time.monotonic() - self._last_beat >= BEAT_EVERY_S:
            runs.beat(self.engine, self.run_id)  # paused by an admin, yet alive: resuming shows it running
            self._last_beat = time.monotonic()
        return status if status in ("paused", "cancelled") else "running"

    def finish(self, status, outputs=None):
        return self._retry(lambda: self._finish(status, outputs))

    def _finish(self, status, outputs=None):
        from db import images

        if outputs and outputs.get("contact_sheet_png"):
            self._extra["turntable"] = images.save_image(self.engine, outputs["contact_sheet_png"])
        if outputs and outputs.get("turntable_views_png"):  # the views an arena pair shows (db/arena.py)
            self._extra["turntable_views"] = images.save_image(self.engine, outputs["turntable_views_png"])
        if outputs:
            self._extra["outputs"] = {k: v for k, v in outputs.items() if isinstance(v, str)}
        self._set_status(status, metrics={"history": self._history, **self._extra})

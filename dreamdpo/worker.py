"""`dreamdpo worker`: one process per GPU, on any host, that claims queued runs from the log and runs
each through the same optimize path as `dreamdpo run` (with --resume when the run has a checkpoint).

- It registers in the log's `workers` table and a thread beats every beat_s (db/run_queue.py). The
  same thread re-queues the runs of workers that have not beaten for dead_after_s.
- Every write of its run's row is fenced (db.run_queue.update_held): the moment the run is no longer
  its own (re-queued after a missed heartbeat), the run stops in this process (RunLost), so no run is
  ever held by two workers.
- The run works in a local scratch folder; its checkpoint (with metrics.csv) is copied to the run's
  storage URL after every checkpoint, and the whole folder when it finishes (dreamdpo/storage.py). A
  worker that claims a run another worker was doing fetches that checkpoint first, and the run
  continues bit for bit (every draw of step k is seeded by (seed, k): dreamdpo/optimize.py).
- SIGINT/SIGTERM: the run stops at once and goes back to the queue ('queued', resumed from its last
  checkpoint by the next worker); the worker is marked stopped.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from db import run_queue
from dreamdpo.errors import UserError
from dreamdpo.recording import DbRecorder
from dreamdpo.storage import CHECKPOINT, RunStorage


class RunLost(Exception):
    """The run went back to the queue (this worker missed its heartbeats): another worker holds it now."""


@dataclass
class WorkerConfig:
    db: str | None = None  # the log's URL (None: $DREAMDPO_DB or the default log)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    beat_s: float = run_queue.DEFAULT_BEAT_S  # heartbeat period
    dead_after_s: float = run_queue.DEFAULT_DEAD_AFTER_S  # a worker silent this long is dead; its run is re-queued
    poll_s: float = 2.0  # how often an idle worker looks for a queued run
    scratch: str | None = None  # local folder for runs in progress (default: the system's temp folder)
    max_runs: int | None = None  # stop after this many runs (None: until stopped)
    until_empty: bool = False  # stop when nothing is queued
    name: str | None = None  # default host:pid:device
    progress: bool = False  # a progress bar per run

    def check(self) -> None:
        for what, value in (("--beat-s", self.beat_s), ("--dead-after-s", self.dead_after_s),
                            ("--poll-s", self.poll_s)):
            if not value > 0:
                raise UserError(f"{what} must be a positive number of seconds, got {value}")
        if self.dead_after_s < 2 * self.beat_s:
            raise UserError(f"--dead-after-s ({self.dead_after_s:g}) must be at least twice --beat-s "
                            f"({self.beat_s:g}), or a live worker's run is taken from it between two beats")
        if self.max_runs is not None and self.max_runs < 1:
            raise UserError(f"--max-runs must be ≥ 1, got {self.max_runs}")


class Heart(threading.Thread):
    """The worker's heartbeat thread; it also re-queues dead workers' runs. `lost` is set when the run
    it beats for is no longer this worker's; `last_fence` is the time (taken before the write) of the
    last write that proved the run was still held."""

    def __init__(self, engine, name: str, cfg: WorkerConfig, say):
        super().__init__(name=f"heart-{name}", daemon=True)
        self.engine, self.worker, self.cfg, self.say = engine, name, cfg, say
        self.stop = threading.Event()
        self.lost = threading.Event()
        self._lock = threading.Lock()
        self.run_id: int | None = None
        self.last_fence = 0.0

    def hold(self, run_id: int | None, since: float = 0.0) -> None:
        with self._lock:
            self.run_id, self.last_fence = run_id, since
            self.lost.clear()

    def fenced(self, run_id: int, held: bool, before: float) -> None:
        """The outcome of a fenced write for run_id that began at `before`."""
        with self._lock:
            if run_id != self.run_id:
                return
            if held:
                self.last_fence = max(self.last_fence, before)
            else:
                self.lost.set()

    def beat_once(self) -> None:
        from db.engine import is_transient

        try:
            run_id, before = self.run_id, time.time()
            held = run_queue.worker_beat(self.engine, self.worker, run_id)
            if run_id is not None:
                self.fenced(run_id, held, before)
            requeued = run_queue.requeue_dead(self.engine, self.cfg.dead_after_s)
            if requeued:
                self.say(f"re-queued run(s) {', '.join(map(str, requeued))} of dead workers")
        except Exception as e:  # the log is down: beat again later; never end the thread
            if not is_transient(e):
                self.say(f"heartbeat failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}")

    def run(self) -> None:
        while not self.stop.wait(self.cfg.beat_s):
            self.beat_once()


class QueueRecorder(DbRecorder):
    """DbRecorder for a claimed run: every write of the run's row is fenced by the worker's hold, and
    the checkpoint and outputs go to the run's storage URL."""

    def __init__(self, engine, run_id: int, heart: Heart, store: RunStorage, out_dir: Path, outage_s: float):
        super().__init__(engine, run_id=run_id, outage_s=outage_s)
        self.heart, self.store, self.out_dir = heart, store, out_dir
        self.released = False  # given back to the queue by finish("paused") (the worker is stopping)

    def _check_held(self) -> None:
        if self.heart.lost.is_set():
            raise RunLost(f"run {self.run_id} was re-queued (this worker missed its heartbeats); "
                          "another worker continues it")

    def _set_status(self, status, **kw):
        self._check_held()
        before = time.time()
        held = run_queue.update_held(self.engine, self.run_id, self.heart.worker, status,
                                     step=kw.get("step"), metrics=kw.get("metrics"))
        self.heart.fenced(self.run_id, held, before)
        self._check_held()

    def control(self):
        self._check_held()
        return super().control()

    def checkpoint_saved(self, path):
        self._check_held()
        # metrics.csv first: a resumed run keeps its rows before the checkpoint's step, so it must never
        # be older than the checkpoint at the storage URL
        self.store.put_file(self.out_dir / "metrics.csv", "metrics.csv")
        self.store.put_file(Path(path), CHECKPOINT)

    def finish(self, status, outputs=None):
        if status == "paused":  # the worker is being stopped (SIGINT/SIGTERM): back to the queue
            if not self.heart.lost.is_set():
                self.released = self._retry(lambda: run_queue.release_run(self.engine, self.run_id,
                                                                          self.heart.worker))
            return None
        self._check_held()
        if status == "finished":
            self.store.put_tree(self.out_dir)  # before the row says finished: outputs are there when it does
            outputs = {k: self._url(v) for k, v in (outputs or {}).items()}
        return super().finish(status, outputs)

    def _url(self, value):
        """A local output path → its URL at the storage; anything else unchanged."""
        if not isinstance(value, str):
            return value
        try:
            return self.store.url_of(Path(value).resolve().relative_to(self.out_dir.resolve()).as_posix())
        except ValueError:
            return value


class Worker:
    """The claim → run → claim loop of one `dreamdpo worker` process."""

    def __init__(self, cfg: WorkerConfig, say=print):
        from dreamdpo.optimize import resolve_device

        cfg.check()
        self.cfg = cfg
        self.device = resolve_device(cfg.device)  # a GPU asked for and absent: refused before any write
        self.name = cfg.name or f"{socket.gethostname()}:{os.getpid()}:{self.device}"
        self._say = say
        self._priors: dict = {}

    def say(self, text: str) -> None:
        self._say(f"worker {self.name}: {text}")

    def serve(self) -> int:
        """Claim and run queued runs until stopped, max_runs or (until_empty) an empty queue. Returns
        the number of runs this worker ended (finished, cancelled or failed)."""
        from db.engine import connect, is_transient

        engine = connect(self.cfg.db)
        run_queue.register_worker(engine, self.name, socket.gethostname(), str(self.device))
        heart = Heart(engine, self.name, self.cfg, self.say)
        heart.beat_once()  # re-queue what dead workers left before the first claim
        heart.start()
        scratch = Path(tempfile.mkdtemp(prefix="dreamdpo-worker-", dir=self.cfg.scratch))
        self.say(f"started (device {self.device}, beat {self.cfg.beat_s:g} s, dead after "
                 f"{self.cfg.dead_after_s:g} s, scratch {scratch})")
        done = 0
        try:
            while self.cfg.max_runs is None or done < self.cfg.max_runs:
                try:
                    run = run_queue.claim_run(engine, self.name)
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self.say(f"the log is unreachable ({type(e).__name__}); trying again in {self.cfg.poll_s:g} s")
                    time.sleep(self.cfg.poll_s)
                    continue
                if run is None:
                    if self.cfg.until_empty:
                        break
                    time.sleep(self.cfg.poll_s)
                    continue
                heart.hold(int(run["id"]), time.time())
                if self.work_on(engine, run, heart, scratch):
                    done += 1
                heart.hold(None)
        finally:
            heart.stop.set()
            heart.join(timeout=5)
            try:
                run_queue.stop_worker(engine, self.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                self.say(f"stopped after {done} run(s)")
        return done

    def work_on(self, engine, run: dict, heart: Heart, scratch: Path) -> bool:
        """One claimed run, from its storage's checkpoint (if any) to its end. True when this worker
        ended it; False when it lost it (another worker continues)."""
        from dreamdpo.commands.run import logged_run_judge
        from dreamdpo.config import from_dict
        from dreamdpo.optimize import optimize

        run_id, attempt = int(run["id"]), int(run["attempts"])
        out = scratch / f"run-{run_id}-attempt-{attempt}"
        recorder: QueueRecorder | None = None
        try:
            cfg = from_dict({**(run.get("config") or {}), "device": str(self.device), "out": str(out)})
            store = RunStorage(run["storage"])
            resume = store.fetch_resume(out)
            start = f"resumed from its checkpoint at {store.url_of(CHECKPOINT)}" if resume else "from step 0"
            self.say(f"run {run_id} claimed (attempt {attempt}, {start}) t={time.time():.3f}")
            recorder = QueueRecorder(engine, run_id, heart, store, out, cfg.log_outage_s)
            result = optimize(cfg, prior=self._prior(cfg), judge=logged_run_judge(cfg, engine, self.device),
                              recorder=recorder, resume=resume, progress=self.cfg.progress)
            self.say(f"run {run_id} {result.status} ({result.steps_done} steps; outputs in {run['storage']}) "
                     f"t={time.time():.3f} held_until={heart.last_fence:.3f}")
            return True
        except RunLost:
            self.say(f"run {run_id} lost: it was re-queued, another worker continues it t={time.time():.3f} "
                     f"held_until={heart.last_fence:.3f}")
            return False
        except KeyboardInterrupt:
            released = (recorder is not None and recorder.released) or run_queue.release_run(engine, run_id, self.name)
            self.say(f"run {run_id} released to the queue t={time.time():.3f} held_until={heart.last_fence:.3f}"
                     if released else f"run {run_id} left as it is (not held any more)")
            raise
        except Exception as e:
            from db.engine import explain

            text = " ".join(str(explain(e) or e).split())[:300] or type(e).__name__
            run_queue.update_held(engine, run_id, self.name, "failed")
            self.say(f"run {run_id} failed: {text} t={time.time():.3f} held_until={heart.last_fence:.3f}")
            return True
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _prior(self, cfg):
        """The run's diffusion prior, loaded once per worker for each (backbone, resolution, prompts)."""
        from dreamdpo.optimize import load_prior

        key = (cfg.backbone, cfg.prior_resolution, cfg.view_dependent_prompts, cfg.toy_binding)
        if key not in self._priors:
            self._priors[key] = load_prior(cfg, self.device)
        return self._priors[key]

"""The human loop in a real browser (Chromium via Playwright, the app as `dreamdpo annotate` runs it).

1. pair posted → visible: a pair is posted while the page shows the empty queue (default poll DREAMDPO_POLL_S = 0.5 s);
2. key press → vote stored → judge returned (the optimizer resumes): HumanJudge.compare waits in a
   thread exactly as in the loop; times from the key press to the vote row and to compare() returning;
3. sustained votes per minute with the keyboard: a queue of pairs, a key as soon as each is shown.

Usage: .venv/bin/python bench/bench_browser.py [--n 20] [--burst 40]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch

from annotator.browser import free_port, launch, press, sign_in, wait_pair
from db import accounts, queue
from db.engine import connect
from db.models import Vote
from dreamdpo.commands.annotate import start_app, stop_app, wait_ready
from dreamdpo.images import png_bytes
from dreamdpo.judges.base import JudgeContext
from dreamdpo.judges.human import HumanJudge, HumanPolicy


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def img(v):
    return png_bytes(np.full((64, 128, 3), v % 256, np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--burst", type=int, default=40)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'log.sqlite'}"
    engine = connect(url)
    port = free_port()
    proc = start_app(url, port)
    try:
        wait_ready(proc, port)
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = launch(p)
            token = accounts.add_annotator(engine, "bench")
            context, page = sign_in(browser, base, token)
            page.get_by_text("No pairs are waiting for you").wait_for(timeout=30_000)
            run_id = queue.create_run(engine, "a red cube", status="running")

            # 1. posted → visible
            visible = []
            for i in range(args.n):
                time.sleep(np.random.default_rng(i).uniform(0, 1))  # posts land anywhere in the poll cycle
                t0 = time.monotonic()
                pid = queue.post_pair(engine, run_id, i, img(i), img(255 - i))
                page.get_by_text(f"pair {pid}", exact=False).wait_for(timeout=30_000)
                visible.append(time.monotonic() - t0)
                wait_pair(page, pid)
                press(page, "left")
                page.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)

            # 2. key → stored → judge returned
            judge = HumanJudge(engine, HumanPolicy(timeout_s=60, fallback="pull"))
            a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
            stored, resumed = [], []
            for i in range(args.n):
                out = {}
                th = threading.Thread(target=lambda: (out.update(j=judge.compare(
                    a, b, "a red cube", JudgeContext(step=i, run_id=run_id))), out.update(t=time.time())))
                th.start()
                while True:  # the pair the judge just posted
                    pid = _newest_pending(engine, run_id)
                    if pid:
                        break
                    time.sleep(0.01)
                wait_pair(page, pid)
                t_press = time.time()
                press(page, "right")
                th.join()
                with engine.connect() as c:
                    created = c.execute(sa.select(Vote.created_at).where(
                        Vote.pair_id == pid, Vote.annotator_id.is_not(None))).scalar()
                t_store = created.replace(tzinfo=timezone.utc).timestamp()
                stored.append(t_store - t_press)
                resumed.append(out["t"] - t_store)

            # 3. sustained keyboard rate
            pids = [queue.post_pair(engine, run_id, 1000 + i, img(i), img(i + 7)) for i in range(args.burst)]
            t0 = time.monotonic()
            for pid in pids:
                wait_pair(page, pid)
                press(page, "tie")
            page.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
            per_min = args.burst / (time.monotonic() - t0) * 60
            context.close()
            browser.close()
    finally:
        stop_app(proc)
    print(f"pair posted → visible: p50 {pct(visible, 50):.2f} s, p95 {pct(visible, 95):.2f} s (n={len(visible)})")
    print(f"key press → vote stored: p50 {pct(stored, 50):.3f} s, p95 {pct(stored, 95):.3f} s")
    print(f"vote stored → judge returned: p50 {pct(resumed, 50):.3f} s, p95 {pct(resumed, 95):.3f} s")
    print(f"sustained keyboard votes: {per_min:.0f} per minute ({args.burst} pairs)")


def _newest_pending(engine, run_id):
    from db.models import Pair

    with engine.connect() as c:
        return c.execute(sa.select(Pair.id).where(Pair.run_id == run_id, Pair.status == "pending")
                         .order_by(Pair.id.desc())).scalar()


if __name__ == "__main__":
    main()

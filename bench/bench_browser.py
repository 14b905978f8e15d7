"""The human loop in a real browser (Chromium via Playwright, the app as `dreamdpo annotate` runs it).

1. pair posted → visible: a pair is posted while the page shows the empty queue (default poll DREAMDPO_POLL_S = 0.5 s);
2. key press → vote stored → judge returned (the optimizer resumes): HumanJudge.compare waits in a
   thread exactly as in the loop; times from the key press to the vote row and to compare() returning;
3. sustained votes per minute with the keyboard: a queue of pairs, a key as soon as each is shown;
4. vote → next pair on screen: a queue of pairs; from the key press to the next pair's caption;
5. a burst of 10 keys pressed at once (no waiting): from the first press to the 10th stored vote;
6. `dreamdpo demo` (with --demo warm|cold): from the line printing the app's URL to the first pair on
   the Annotate page, signed in with the printed annotator token; warm = the toy bank already in the
   cache, cold = an empty cache (the bank is built first, its progress shown in the app).

Usage: .venv/bin/python bench/bench_browser.py [--n 20] [--burst 40] [--demo skip|warm|cold]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch

from annotator.browser import free_port, launch, press, sign_in, wait_pair
from db import accounts, pairs, runs
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
    ap.add_argument("--demo", choices=["skip", "warm", "cold"], default="skip")
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
            run_id = runs.create_run(engine, "a red cube", status="running")

            # 1. posted → visible
            visible = []
            for i in range(args.n):
                time.sleep(np.random.default_rng(i).uniform(0, 1))  # posts land anywhere in the poll cycle
                t0 = time.monotonic()
                pid = pairs.post_pair(engine, run_id, i, img(i), img(255 - i))
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
                th = threading.Thread(target=lambda out=out, i=i: (out.update(j=judge.compare(
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
            pids = [pairs.post_pair(engine, run_id, 1000 + i, img(i), img(i + 7)) for i in range(args.burst)]
            t0 = time.monotonic()
            for pid in pids:
                wait_pair(page, pid)
                press(page, "tie")
            page.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
            per_min = args.burst / (time.monotonic() - t0) * 60

            # 4. vote → next pair on screen
            pids = [pairs.post_pair(engine, run_id, 2000 + i, img(i), img(i + 9)) for i in range(args.n + 1)]
            next_pair = []
            wait_pair(page, pids[0])
            for nxt in pids[1:]:
                t0 = time.monotonic()
                press(page, "left")
                wait_pair(page, nxt)
                next_pair.append(time.monotonic() - t0)
            press(page, "left")
            page.get_by_text("No pairs are waiting for you").wait_for(timeout=30_000)

            # 5. ten keys at once
            pids = [pairs.post_pair(engine, run_id, 3000 + i, img(i), img(i + 11)) for i in range(10)]
            wait_pair(page, pids[0])
            t0 = time.monotonic()
            for key in ["ArrowLeft", "ArrowRight", "t", "b"] * 2 + ["ArrowLeft", "ArrowRight"]:
                page.keyboard.press(key)
            while _people_votes(engine, pids) < 10:
                if time.monotonic() - t0 > 300:
                    raise TimeoutError("the burst did not store 10 votes in 300 s")
                time.sleep(0.02)
            burst_s = time.monotonic() - t0
            context.close()
            browser.close()
    finally:
        stop_app(proc)
    print(f"pair posted → visible: p50 {pct(visible, 50):.2f} s, p95 {pct(visible, 95):.2f} s (n={len(visible)})")
    print(f"key press → vote stored: p50 {pct(stored, 50):.3f} s, p95 {pct(stored, 95):.3f} s")
    print(f"vote stored → judge returned: p50 {pct(resumed, 50):.3f} s, p95 {pct(resumed, 95):.3f} s")
    print(f"sustained keyboard votes: {per_min:.0f} per minute ({args.burst} pairs)")
    print(f"vote → next pair on screen: p50 {pct(next_pair, 50):.2f} s, p95 {pct(next_pair, 95):.2f} s "
          f"(n={len(next_pair)})")
    print(f"10 keys pressed at once → 10 votes stored: {burst_s:.2f} s")
    if args.demo != "skip":
        print(f"demo ({args.demo} toy bank): URL printed → first pair on screen: {demo_first_pair(args.demo):.1f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _people_votes(engine, pids) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(Vote).where(
            Vote.pair_id.in_(pids), Vote.annotator_id.is_not(None))).scalar())


def demo_first_pair(kind: str) -> float:
    """`dreamdpo demo` in a fresh data dir: seconds from its URL line to the first pair in the browser."""
    import re
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright

    from dreamdpo.toyworld.bank import cache_dir

    home = Path(tempfile.mkdtemp())
    if kind == "warm":
        (home / "toyworld").symlink_to(cache_dir().resolve())
    port = free_port()
    env = {**os.environ, "DREAMDPO_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dreamdpo.cli", "demo", "--port", str(port), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(line.startswith("annotator app:") for line in lines):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the demo exited: " + "".join(lines)[-2000:])
            lines.append(line)
        t0 = time.monotonic()
        while not any("annotator token:" in line for line in lines):
            lines.append(proc.stdout.readline())
        token = re.search(r"annotator token:\s+(\S+)", "".join(lines)).group(1)
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
        with sync_playwright() as p:
            browser = launch(p)
            _context, page = sign_in(browser, f"http://127.0.0.1:{port}", token, timeout_ms=1_800_000)
            page.get_by_text(re.compile(r"^Prompt · pair \d+$")).wait_for(timeout=1_800_000)
            seconds = time.monotonic() - t0
            browser.close()
        return seconds
    finally:
        proc.terminate()
        proc.wait(60)


def _newest_pending(engine, run_id):
    from db.models import Pair

    with engine.connect() as c:
        return c.execute(sa.select(Pair.id).where(Pair.run_id == run_id, Pair.status == "pending")
                         .order_by(Pair.id.desc())).scalar()


if __name__ == "__main__":
    main()

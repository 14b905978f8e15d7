"""Export of a 100k-comparison log (64×64 images) to Pick-a-Pic parquet: time and peak memory
(goal ≤ 30 s); the Audit page's load + compute time on the same log (goal ≤ 2 s).

The log is the synthetic log of db/synthetic.py (planted judges, annotators, gold
pairs, duplicates) scaled to ~100k votes, written to SQLite in bulk (a separate process, so its
memory is not counted); every pair has its own two 64×64 PNGs with smooth texture (~7 KiB each).

    .venv/bin/python bench/bench_export.py [--comparisons 100000] [--workdir /tmp/bench_export]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def texture_png(i: int, size: int = 64) -> bytes:
    """A 64×64 image like a small render: smooth colour field (8×8 noise upsampled) plus mild noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(small).astype(np.int16) + rng.integers(-6, 7, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def build_log(url: str, n_comparisons: int) -> None:
    """Bulk-insert the synthetic log (votes ≈ n_comparisons) through the log's own tables."""
    import pandas as pd
    import sqlalchemy as sa

    from db import models
    from db import synthetic as syn
    from db.engine import connect
    n_live = max(10, int(n_comparisons / 6.6))  # ~6.6 votes per live pair in the synthetic log
    pairs, votes = syn.synthetic_log(syn.SyntheticSpec(n_live=n_live, n_gold=max(10, n_live // 100)))
    engine = connect(url)
    pool_size = 2 * len(pairs)   # every pair has its own two images, as in a real log
    pool = [texture_png(i) for i in range(pool_size)]
    ids = [hashlib.sha256(b).hexdigest() for b in pool]
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    T = {name: getattr(models, name).__table__ for name in ("Run", "Annotator", "Image", "Pair", "Vote")}
    with engine.begin() as conn:
        conn.execute(sa.insert(T["Image"]), [{"id": h, "png": b, "width": 64, "height": 64} for h, b in zip(ids, pool)])
        for r in sorted(pairs["run_id"].unique()):
            conn.execute(sa.insert(T["Run"]).values(id=int(r), prompt=f"synthetic prompt {r}", backbone="synthetic"))
        people = {}
        for i, who in enumerate(syn.ANNOTATORS, start=1):
            conn.execute(sa.insert(T["Annotator"]).values(id=i, name=who, role="annotator", token_hash=f"x{i}"))
            people[who] = i
        rows = [{"id": int(p.pair_id), "run_id": int(p.run_id), "step": int(p.step), "kind": p.kind,
                 "image_a": ids[2 * p.pair_id - 2], "image_b": ids[2 * p.pair_id - 1],
                 "seed_a": int(p.seed_a), "seed_b": int(p.seed_b), "gold_answer": p.gold_answer,
                 "duplicate_of": None if pd.isna(p.duplicate_of) else int(p.duplicate_of),
                 "status": "decided", "votes_needed": 1, "created_at": now} for p in pairs.itertuples()]
        conn.execute(sa.insert(T["Pair"]), rows)
        rows = [{"id": int(v.vote_id), "pair_id": int(v.pair_id),
                 "annotator_id": people.get(v.annotator) if isinstance(v.annotator, str) else None,
                 "judge_name": v.judge if isinstance(v.judge, str) else None, "choice": v.choice,
                 "score_a": None if pd.isna(v.score_a) else float(v.score_a),
                 "score_b": None if pd.isna(v.score_b) else float(v.score_b),
                 "shown_left": v.shown_left if isinstance(v.shown_left, str) else None,
                 "latency_ms": None if pd.isna(v.latency_ms) else int(v.latency_ms),
                 "created_at": v.created_at.to_pydatetime()} for v in votes.itertuples()]
        for i in range(0, len(rows), 20000):
            conn.execute(sa.insert(T["Vote"]), rows[i:i + 20000])
    print(f"built {len(votes)} votes on {len(pairs)} pairs, {pool_size} distinct 64x64 PNGs "
          f"(mean {sum(map(len, pool)) / len(pool) / 1024:.1f} KiB)")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/bench_export")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    db = work / f"log-{args.comparisons}.db"
    url = f"sqlite:///{db}"
    if args.build_only:
        work.mkdir(parents=True, exist_ok=True)
        build_log(url, args.comparisons)
        return 0
    if not db.exists():
        subprocess.run([sys.executable, __file__, "--comparisons", str(args.comparisons), "--workdir", str(work),
                        "--build-only"], check=True)

    from db import export
    from db.audit import AuditFilters, audit_data
    from db.engine import connect

    engine = connect(url)
    out = work / "pickapic"
    shutil.rmtree(out, ignore_errors=True)
    base = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = export.export_log(engine, "pickapic", out)
    export_s, export_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = rss_mib()
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"export pickapic: {manifest['counts']['rows'].get('train', 0)} rows of {manifest['counts']['comparisons']} "
          f"comparisons in {export_s:.1f} s wall, {export_cpu:.1f} s CPU; parquet {size / 2**20:.0f} MiB; "
          f"peak RSS {peak:.0f} MiB (+{peak - base:.0f} MiB over {base:.0f} MiB before the export)")

    import db.stats  # noqa: F401  (the page's process has imported its modules already)
    audit_data(engine, AuditFilters(n_boot=10))   # warm imports (crowd-kit) as a running app would have them
    times, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        data = audit_data(engine, AuditFilters())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"audit page data (load {len(data.votes)} votes + all statistics): best {min(times):.2f} s wall "
          f"(runs {', '.join(f'{t:.2f}' for t in times)} s), CPU {', '.join(f'{t:.2f}' for t in cpu)} s")
    from db.read import votes_frame
    t0, c0 = time.perf_counter(), time.process_time()
    votes_frame(engine)
    print(f"  of which db.read.votes_frame: {time.perf_counter() - t0:.2f} s wall, "
          f"{time.process_time() - c0:.2f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

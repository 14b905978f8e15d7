"""db/export.py: round trips of every format (nothing lost), loading through `datasets`, manifests,
admin-only exports, bounded memory on a large log."""
from __future__ import annotations

import hashlib
import json
import sys
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from db import export
from db.errors import LogError

ROOT = Path(__file__).resolve().parents[1]


from db import synthetic as SYN  # noqa: E402


def synthetic_comparisons(n_live=60, seed=0):
    """Comparisons (export's input records) from the synthetic log: ties, skips, both-bad, gold, duplicates."""
    pairs, votes = SYN.synthetic_log(SYN.SyntheticSpec(n_live=n_live, n_gold=10, seed=seed))
    pairs = pairs.set_index("pair_id")
    people = {name: i + 1 for i, name in enumerate(SYN.ANNOTATORS)}
    out = []
    for v in votes.itertuples():
        p = pairs.loc[v.pair_id]
        ia, ib = SYN.png_bytes(v.pair_id, "a", 8), SYN.png_bytes(v.pair_id, "b", 8)
        out.append(dict(
            vote_id=v.vote_id, pair_id=v.pair_id, run_id=v.run_id, step=v.step, kind=v.kind,
            prompt=f"prompt {v.run_id}", question=None, image_a_id=hashlib.sha256(ia).hexdigest(),
            image_b_id=hashlib.sha256(ib).hexdigest(), image_a=ia, image_b=ib, seed_a=int(p.seed_a),
            seed_b=int(p.seed_b), annotator_id=people.get(v.annotator), annotator=v.annotator, judge=v.judge,
            choice=v.choice, score_a=None if v.judge is None else v.score_a,
            score_b=None if v.judge is None else v.score_b, shown_left=v.shown_left,
            latency_ms=None if v.judge is not None else v.latency_ms, created_at=v.created_at,
            gold_answer=None if pd.isna(v.gold_answer) else v.gold_answer,
            duplicate_of=None if pd.isna(v.duplicate_of) else int(v.duplicate_of),
            retracted=v.vote_id % 97 == 0))
    # rows read from a database carry None, not pandas' NaN
    return [{k: (None if isinstance(x, float) and x != x else x) for k, x in c.items()} for c in out]


@pytest.fixture(scope="module")
def comparisons():
    comps = synthetic_comparisons()
    choices = {c["choice"] for c in comps}
    assert {"a", "b", "tie", "both_bad", "skip"} <= choices and any(c["retracted"] for c in comps)
    assert any(c["gold_answer"] for c in comps) and any(c["duplicate_of"] for c in comps)
    return comps


def expected(comps, include_ties, drop_both_bad=False):
    keep = [c for c in comps if not c["retracted"] and c["choice"] != "skip"
            and (include_ties or c["choice"] != "tie") and not (drop_both_bad and c["choice"] == "both_bad")]
    return keep


def check_manifest(out, manifest, comps):
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["schema_version"] == export.SCHEMA_VERSION
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    counts = manifest["counts"]
    assert counts["comparisons"] == len(comps)
    assert sum(counts["rows"].values()) + sum(counts["excluded"].values()) == len(comps)


@pytest.mark.parametrize("include_ties", [False, True])
def test_pickapic_round_trip_loses_nothing(tmp_path, comparisons, include_ties):
    filters = export.ExportFilters(include_ties=include_ties)
    manifest = export.write_comparisons(iter(comparisons), "pickapic", tmp_path, filters, chunk_size=50)
    check_manifest(tmp_path, manifest, comparisons)
    keep = expected(comparisons, include_ties)
    table = pq.read_table(tmp_path / "train.parquet")
    assert pq.ParquetFile(tmp_path / "train.parquet").metadata.num_row_groups == -(-len(keep) // 50)
    rows = table.to_pylist()
    assert [r["ranking_id"] for r in rows] == [c["vote_id"] for c in keep]
    for r, c in zip(rows, keep):
        assert r["jpg_0"] == c["image_a"] and r["jpg_1"] == c["image_b"] and r["choice"] == c["choice"]
        assert (r["label_0"], r["label_1"]) == export.LABELS[c["choice"]]
        assert r["has_label"] == (c["choice"] != "both_bad") and r["caption"] == c["prompt"]
        assert r["annotator"] == c["annotator"] and r["judge"] == c["judge"] and r["gold_answer"] == c["gold_answer"]
    assert manifest["counts"]["excluded"]["skip"] == sum(c["choice"] == "skip" for c in comparisons)
    assert ("tie" in manifest["counts"]["excluded"]) != include_ties


def test_pickapic_loads_with_datasets_as_bytes(tmp_path, comparisons):
    import datasets

    export.write_comparisons(iter(comparisons), "pickapic", tmp_path, export.ExportFilters(include_ties=True))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    keep = expected(comparisons, True)
    assert len(ds) == len(keep) and ds[0]["jpg_0"] == keep[0]["image_a"]
    ties = [r for r in ds if r["choice"] == "tie"]
    assert ties and all(r["label_0"] == r["label_1"] == 0.5 for r in ties)


def test_trl_splits_ties_and_decodes_images(tmp_path, comparisons):
    import datasets
    import numpy as np
    from PIL import Image
    import io

    manifest = export.write_comparisons(iter(comparisons), "trl", tmp_path, export.ExportFilters(include_ties=True))
    check_manifest(tmp_path, manifest, comparisons)
    keep = expected(comparisons, True, drop_both_bad=True)
    ds = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "train.parquet"),
                                                      "ties": str(tmp_path / "ties.parquet")},
                               cache_dir=str(tmp_path / "cache"))
    decisive = [c for c in keep if c["choice"] != "tie"]
    assert len(ds["train"]) == len(decisive) and len(ds["ties"]) == len(keep) - len(decisive)
    assert manifest["counts"]["excluded"]["both_bad"] == sum(
        c["choice"] == "both_bad" and not c["retracted"] for c in comparisons)
    row, c = ds["train"][0], decisive[0]
    winner = c["image_a"] if c["choice"] == "a" else c["image_b"]
    assert isinstance(row["chosen"], Image.Image) and len(row["images"]) == 2
    np.testing.assert_array_equal(np.asarray(row["chosen"]), np.asarray(Image.open(io.BytesIO(winner))))
    assert row["prompt"] == c["prompt"] and all(ds["ties"]["tie"])


def test_jsonl_round_trip_with_png_files(tmp_path, comparisons):
    manifest = export.write_comparisons(iter(comparisons), "jsonl", tmp_path, export.ExportFilters())
    check_manifest(tmp_path, manifest, comparisons)
    keep = expected(comparisons, False)
    lines = [json.loads(x) for x in (tmp_path / "comparisons.jsonl").read_text().splitlines()]
    assert [x["vote_id"] for x in lines] == [c["vote_id"] for c in keep]
    for x, c in zip(lines, keep):
        assert (tmp_path / x["image_a"]).read_bytes() == c["image_a"]
        assert (tmp_path / x["image_b"]).read_bytes() == c["image_b"]
        assert x["choice"] == c["choice"] and x["duplicate_of"] == c["duplicate_of"]


def test_bad_input_is_one_line_error(tmp_path, comparisons):
    with pytest.raises(LogError, match="unknown export format"):
        export.write_comparisons(iter(comparisons), "csv", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(LogError, match="not empty"):
        export.write_comparisons(iter(comparisons), "jsonl", tmp_path / "full")
    with pytest.raises(LogError, match="not a date"):
        export._parse_since("yesterday")


def test_export_refused_to_non_admins(tmp_path):
    with pytest.raises(LogError, match="not an admin"):
        export.export_log(None, "pickapic", tmp_path, user={"id": 3, "name": "eve", "role": "annotator", "active": True})
    with pytest.raises(LogError, match="not an admin"):
        export.require_admin({"id": 1, "name": "old", "role": "admin", "active": False})
    export.require_admin({"id": 1, "name": "root", "role": "admin", "active": True})
    export.require_admin(None)  # local CLI


@pytest.mark.slow
def test_streaming_export_memory_is_bounded(tmp_path):
    """20k comparisons of 32×32 noise PNGs (~120 MB of image bytes) export with a peak of a few chunks."""
    pool = [SYN.png_bytes(i, "a", 32) for i in range(64)]
    ids = [hashlib.sha256(b).hexdigest() for b in pool]
    n = 20_000

    def stream():
        for i in range(n):
            j, k = i % 64, (i * 7 + 1) % 64
            # fresh bytes objects, as rows read from a database would be
            yield dict(vote_id=i, pair_id=i, run_id=1, step=i, kind="live", prompt="p", question=None,
                       image_a_id=ids[j], image_b_id=ids[k], image_a=bytes(bytearray(pool[j])),
                       image_b=bytes(bytearray(pool[k])), seed_a=0, seed_b=1, annotator_id=1, annotator="x",
                       judge=None, choice="ab"[i % 2], score_a=None, score_b=None, shown_left="a",
                       latency_ms=10.0, created_at=None, gold_answer=None, duplicate_of=None, retracted=False)

    total_image_bytes = sum(len(pool[i % 64]) + len(pool[(i * 7 + 1) % 64]) for i in range(n))
    tracemalloc.start()
    manifest = export.write_comparisons(stream(), "pickapic", tmp_path, chunk_size=500)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert manifest["counts"]["rows"]["train"] == n
    assert total_image_bytes > 100e6
    assert peak < 20e6, f"peak traced memory {peak / 1e6:.1f} MB for {total_image_bytes / 1e6:.0f} MB of images"


def bulk_log(url: str, n: int, image_bytes: int = 3000) -> None:
    """A log of n judge votes, each on its own pair with two distinct images, inserted in bulk."""
    import os
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from db import models
    from db.engine import connect

    engine = connect(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(sa.insert(models.Run.__table__).values(id=1, prompt="p", backbone="x"))
        for start in range(0, n, 5000):
            ids = range(start + 1, min(n, start + 5000) + 1)
            imgs = {i: (b"\x89PNG\r\n\x1a\n" + os.urandom(image_bytes), b"\x89PNG\r\n\x1a\n" + os.urandom(image_bytes))
                    for i in ids}
            conn.execute(sa.insert(models.Image.__table__),
                         [{"id": f"{i}{side}", "png": imgs[i][k], "width": 32, "height": 32}
                          for i in ids for k, side in enumerate("ab")])
            conn.execute(sa.insert(models.Pair.__table__),
                         [{"id": i, "run_id": 1, "step": i, "kind": "live", "image_a": f"{i}a", "image_b": f"{i}b",
                           "status": "decided", "votes_needed": 1, "created_at": now} for i in ids])
            conn.execute(sa.insert(models.Vote.__table__),
                         [{"id": i, "pair_id": i, "judge_name": "j", "choice": "ab"[i % 2], "score_a": 1.0,
                           "score_b": 0.0, "created_at": now} for i in ids])


MEASURE = """
import resource, sys
from db import export
from db.engine import connect
m = export.export_log(connect(sys.argv[1]), "pickapic", sys.argv[2], chunk_size=500)
print(m["counts"]["rows"]["train"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_database_export_peak_memory_does_not_grow_with_the_log(tmp_path):
    """Peak RSS of a whole export process: 40k comparisons (~240 MB of images) vs 20k (~120 MB).

    (Measured on this machine: 1k → 175 MiB, 5k → 190, 20k → 222, 40k → 226: a plateau once the
    allocators have warmed up, not growth with the log.)"""
    import subprocess

    peaks = {}
    for n in (20000, 40000):
        url = f"sqlite:///{tmp_path / f'log{n}.db'}"
        bulk_log(url, n)
        out = subprocess.run([sys.executable, "-c", MEASURE, url, str(tmp_path / f"out{n}")], check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout.split()
        assert int(out[0]) == n
        peaks[n] = int(out[1]) / 1024  # MiB
        assert (tmp_path / f"out{n}" / "train.parquet").stat().st_size > n * 6000
    assert peaks[40000] - peaks[20000] < 25, peaks  # the images alone grow by ~120 MB


from pg import engine, log_url, pg_server  # noqa: E402,F401  (SQLite file and real PostgreSQL)


@pytest.mark.postgres
@pytest.mark.slow
def test_export_from_the_database_loses_nothing(engine, tmp_path):
    """Through db.queue (claims, votes, undo, judges) into SQLite and PostgreSQL, out through
    export_log in chunks of 7, in every format: every vote accounted for, image bytes as stored."""
    from db import qc
    from db.read import votes_frame

    SYN.write_log(engine, SYN.SyntheticSpec(n_live=16, n_gold=4, seed=5), image_size=8, retract_every=9)
    frame = votes_frame(engine)
    for fmt in export.FORMATS:
        manifest = export.export_log(engine, fmt, tmp_path / fmt, export.ExportFilters(include_ties=True), chunk_size=7)
        counts = manifest["counts"]
        assert counts["comparisons"] == len(frame)
        assert counts["excluded"]["retracted"] == frame["retracted"].sum() > 0
        assert counts["excluded"]["skip"] == ((frame["choice"] == "skip") & ~frame["retracted"]).sum()
        kept = frame[(frame["choice"] != "skip") & ~frame["retracted"]]
        if fmt == "trl":
            kept = kept[kept["choice"] != "both_bad"]
        assert sum(counts["rows"].values()) == len(kept)
    rows = pq.read_table(tmp_path / "pickapic" / "train.parquet").to_pylist()
    opinions = frame[(frame["choice"] != "skip") & ~frame["retracted"]]
    assert sorted(r["ranking_id"] for r in rows) == sorted(opinions["vote_id"])
    for r in rows[:: max(1, len(rows) // 10)]:
        stored = qc._pair_images(engine, r["pair_id"])
        assert (r["jpg_0"], r["jpg_1"]) == (stored["png_a"], stored["png_b"])

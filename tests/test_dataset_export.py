"""db/export.py: what goes where in every format (decisive votes in train, ties/both-bad/skips split off
or left out and counted), Pick-a-Pic's column types, loading every split by name through `datasets`,
indistinct pairs left out, source filters, atomic exports, manifests, admin-only exports, bounded memory.
The real consumers' checks are in tests/test_consumers_*.py."""
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


def opinions(comps):
    """Votes that may be exported at all: not retracted, not on an indistinct pair."""
    return [c for c in comps if not c["retracted"] and c.get("pair_status") != "indistinct"]


def check_manifest(out, manifest, comps):
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["schema_version"] == export.SCHEMA_VERSION
    assert set(manifest["files"]) | {"manifest.json"} == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    counts = manifest["counts"]
    assert counts["comparisons"] == len(comps)
    assert sum(counts["rows"].values()) + sum(counts["excluded"].values()) == len(comps)


def splits_of(out) -> dict[str, list[dict]]:
    return {p.stem: pq.read_table(p).to_pylist() for p in sorted(out.glob("*.parquet"))}


@pytest.mark.parametrize("include_ties", [False, True])
def test_pickapic_train_holds_only_decisive_votes(tmp_path, comparisons, include_ties):
    out = tmp_path / "pp"
    manifest = export.write_comparisons(iter(comparisons), "pickapic", out,
                                        export.ExportFilters(include_ties=include_ties), chunk_size=50)
    check_manifest(out, manifest, comparisons)
    ok = opinions(comparisons)
    splits = splits_of(out)
    assert set(splits) == ({"train", "ties"} if include_ties else {"train"})
    decisive = [c for c in ok if c["choice"] in ("a", "b")]
    train = splits["train"]
    assert pq.ParquetFile(out / "train.parquet").metadata.num_row_groups == -(-len(decisive) // 50)
    assert [r["ranking_id"] for r in train] == [c["vote_id"] for c in decisive]
    for r, c in zip(train, decisive):
        assert r["jpg_0"] == c["image_a"] and r["jpg_1"] == c["image_b"] and r["choice"] == c["choice"]
        assert (r["label_0"], r["label_1"]) == ((1.0, 0.0) if c["choice"] == "a" else (0.0, 1.0))
        assert r["has_label"] and r["caption"] == c["prompt"]
        assert r["best_image_uid"] == (r["image_0_uid"] if c["choice"] == "a" else r["image_1_uid"])
        assert r["annotator"] == c["annotator"] and r["judge"] == c["judge"] and r["gold_answer"] == c["gold_answer"]
        assert r["user_id"] == (c["annotator_id"] if c["annotator_id"] is not None else -1)
    if include_ties:
        ties = [c for c in ok if c["choice"] == "tie"]
        assert ties and [r["ranking_id"] for r in splits["ties"]] == [c["vote_id"] for c in ties]
        assert all(r["label_0"] == r["label_1"] == 0.5 for r in splits["ties"])
    excluded = manifest["counts"]["excluded"]
    assert excluded["both_bad"] == sum(c["choice"] == "both_bad" for c in ok) > 0
    assert excluded["skip"] == sum(c["choice"] == "skip" for c in ok) > 0
    assert excluded["retracted"] == sum(c["retracted"] for c in comparisons) > 0
    assert ("tie" in excluded) != include_ties


def test_pickapic_column_types_and_counts_are_pick_a_pics(tmp_path, comparisons):
    """created_at timestamp[ns], image urls null, num_example_per_prompt = rows of the split with that caption."""
    import pyarrow as pa

    out = tmp_path / "pp"
    export.write_comparisons(iter(comparisons), "pickapic", out, export.ExportFilters(include_ties=True), chunk_size=7)
    pickapic_v2 = ["are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                   "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0",
                   "model_1", "ranking_id", "user_id", "num_example_per_prompt"]
    for split, rows in splits_of(out).items():
        schema = pq.read_schema(out / f"{split}.parquet")
        assert schema.names[: len(pickapic_v2)] == pickapic_v2
        assert schema.field("created_at").type == pa.timestamp("ns") and schema.field("jpg_0").type == pa.binary()
        assert schema.field("num_example_per_prompt").type == pa.int64()
        frame = pd.DataFrame(rows)
        assert (frame["num_example_per_prompt"] == frame.groupby("caption")["caption"].transform("size")).all()
        assert frame["image_0_url"].isna().all() and frame["image_1_url"].isna().all()
    stale = tmp_path / "stale"  # counts taken before more votes came in are corrected, not trusted
    export.write_comparisons(iter(comparisons), "pickapic", stale, export.ExportFilters(include_ties=True),
                             prompt_counts={"train": {"prompt 1": 1}})
    assert splits_of(stale) == splits_of(out)
    first = splits_of(out)["train"][0]
    c = next(c for c in opinions(comparisons) if c["choice"] in ("a", "b"))
    assert first["created_at"] == c["created_at"].tz_convert("UTC").tz_localize(None).to_pydatetime()


def test_pickapic_splits_load_by_name_with_datasets(tmp_path, comparisons):
    import datasets

    out = tmp_path / "pp"
    export.write_comparisons(iter(comparisons), "pickapic", out, export.ExportFilters(include_ties=True))
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    ok = opinions(comparisons)
    assert set(ds) == {"train", "ties"}
    assert len(ds["train"]) == sum(c["choice"] in ("a", "b") for c in ok)
    assert ds["train"][0]["jpg_0"] == next(c for c in ok if c["choice"] in ("a", "b"))["image_a"]
    ties = datasets.load_dataset(str(out), split="ties", cache_dir=str(tmp_path / "cache"))
    assert len(ties) == sum(c["choice"] == "tie" for c in ok) and set(ties["label_0"]) == {0.5}


def test_trl_rows_are_tr_ls_vision_preference_format(tmp_path, comparisons):
    import io

    import datasets
    import numpy as np
    from PIL import Image

    out = tmp_path / "trl"
    manifest = export.write_comparisons(iter(comparisons), "trl", out, export.ExportFilters(include_ties=True))
    check_manifest(out, manifest, comparisons)
    ok = opinions(comparisons)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "ties", "both_bad", "skips"}
    by_choice = {"train": ("a", "b"), "ties": ("tie",), "both_bad": ("both_bad",), "skips": ("skip",)}
    for split, choices in by_choice.items():
        assert ds[split]["vote_id"] == [c["vote_id"] for c in ok if c["choice"] in choices], split
    votes = {c["vote_id"]: c for c in ok}
    for row in ds["train"]:
        c = votes[row["vote_id"]]
        first = c["shown_left"] or "a"
        second = "b" if first == "a" else "a"
        assert row["first"] == first
        (turn,) = row["prompt"]
        assert turn["role"] == "user" and [p["type"] for p in turn["content"]] == ["image", "image", "text"]
        assert c["prompt"] in turn["content"][2]["text"] and len(row["images"]) == 2
        for img, side in zip(row["images"], (first, second)):  # the order the voter saw
            assert isinstance(img, Image.Image)
            np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(c[f"image_{side}"]))))
        won = "First" if c["choice"] == first else "Second"
        assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": won}]}]
        assert row["rejected"][0]["content"][0]["text"] == {"First": "Second", "Second": "First"}[won]
    for split in ("ties", "both_bad", "skips"):
        assert all(r is None for r in ds[split]["rejected"])
        assert {r[0]["content"][0]["text"] for r in ds[split]["chosen"]} == {export.ANSWERS[by_choice[split][0]]}


def test_trl_without_ties_leaves_them_out(tmp_path, comparisons):
    import datasets

    manifest = export.write_comparisons(iter(comparisons), "trl", tmp_path / "t", export.ExportFilters())
    assert set(datasets.load_dataset(str(tmp_path / "t"), cache_dir=str(tmp_path / "c"))) == {"train", "both_bad", "skips"}
    assert manifest["counts"]["excluded"]["tie"] == sum(c["choice"] == "tie" for c in opinions(comparisons))


def test_jsonl_round_trip_with_png_files(tmp_path, comparisons):
    out = tmp_path / "j"
    manifest = export.write_comparisons(iter(comparisons), "jsonl", out, export.ExportFilters())
    check_manifest(out, manifest, comparisons)
    keep = [c for c in opinions(comparisons) if c["choice"] not in ("skip", "tie")]
    lines = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    assert [x["vote_id"] for x in lines] == [c["vote_id"] for c in keep]
    for x, c in zip(lines, keep):
        assert (out / x["image_a"]).read_bytes() == c["image_a"]
        assert (out / x["image_b"]).read_bytes() == c["image_b"]
        assert x["choice"] == c["choice"] and x["duplicate_of"] == c["duplicate_of"]


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_votes_on_indistinct_pairs_are_never_exported(tmp_path, comparisons, fmt):
    marked = {c["pair_id"] for c in comparisons if c["pair_id"] % 5 == 0}
    comps = [dict(c, pair_status="indistinct" if c["pair_id"] in marked else "decided") for c in comparisons]
    out = tmp_path / fmt
    manifest = export.write_comparisons(iter(comps), fmt, out, export.ExportFilters(include_ties=True))
    check_manifest(out, manifest, comps)
    n = sum(c["pair_id"] in marked and not c["retracted"] for c in comps)
    assert n and manifest["counts"]["excluded"]["indistinct"] == n
    if fmt == "jsonl":
        written = {json.loads(x)["pair_id"] for x in (out / "comparisons.jsonl").read_text().splitlines()}
    else:
        written = {r["pair_id"] for rows in splits_of(out).values() for r in rows}
    assert written and not written & marked


def test_a_failed_export_leaves_nothing_and_a_retry_works(tmp_path, comparisons):
    def broken():
        yield from comparisons[:30]
        raise OSError("disk unplugged")

    out = tmp_path / "exports" / "pp"
    with pytest.raises(OSError, match="unplugged"):
        export.write_comparisons(broken(), "pickapic", out, chunk_size=7)
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []
    export.write_comparisons(iter(comparisons), "pickapic", out, chunk_size=7)
    assert (out / "train.parquet").is_file() and [p.name for p in (tmp_path / "exports").iterdir()] == ["pp"]
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine too
    export.write_comparisons(iter(comparisons), "trl", tmp_path / "empty")
    assert (tmp_path / "empty" / "train.parquet").is_file()


def test_bad_input_is_one_line_error(tmp_path, comparisons):
    with pytest.raises(LogError, match="unknown export format"):
        export.write_comparisons(iter(comparisons), "csv", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(LogError, match="not empty"):
        export.write_comparisons(iter(comparisons), "jsonl", tmp_path / "full")
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(LogError, match="is a file") as e:
        export.write_comparisons(iter(comparisons), "pickapic", tmp_path / "afile")
    assert "\n" not in str(e.value) and (tmp_path / "afile").read_text() == "keep me"
    assert export.parse_judges(" hpsv2, ,imagereward ") == ("hpsv2", "imagereward") and export.parse_judges("") is None


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




def _mark_indistinct(engine, frame) -> int:
    """The run marks a judged pair indistinct (its judge votes stay in the log); returns its id."""
    import sqlalchemy as sa

    from db import models

    pair_id = int(frame.loc[frame["judge"].notna(), "pair_id"].iloc[0])
    pairs = models.Pair.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(pairs).where(pairs.c.id == pair_id).values(status="indistinct"))
    return pair_id


@pytest.mark.postgres
@pytest.mark.slow
def test_export_from_the_database_loses_nothing(engine, tmp_path):
    """Through db.queue and db.votes (claims, votes, undo, judges) into SQLite and PostgreSQL, out through
    export_log in chunks of 7, in every format: every vote accounted for, image bytes as stored."""
    from db import qc
    from db.read import votes_frame

    SYN.write_log(engine, SYN.SyntheticSpec(n_live=16, n_gold=4, seed=5), image_size=8, retract_every=9)
    frame = votes_frame(engine)
    indistinct = _mark_indistinct(engine, frame)
    live = frame[~frame["retracted"] & (frame["pair_id"] != indistinct)]
    written = {"pickapic": live["choice"].isin(["a", "b", "tie"]), "trl": live["choice"].notna(),
               "jsonl": live["choice"] != "skip"}
    for fmt in export.FORMATS:
        manifest = export.export_log(engine, fmt, tmp_path / fmt, export.ExportFilters(include_ties=True), chunk_size=7)
        counts = manifest["counts"]
        assert counts["comparisons"] == len(frame)
        assert counts["excluded"]["retracted"] == frame["retracted"].sum() > 0
        assert counts["excluded"]["indistinct"] == (~frame["retracted"] & (frame["pair_id"] == indistinct)).sum() > 0
        assert sum(counts["rows"].values()) == written[fmt].sum()
    rows = pq.read_table(tmp_path / "pickapic" / "train.parquet").to_pylist()
    assert sorted(r["ranking_id"] for r in rows) == sorted(live.loc[live["choice"].isin(["a", "b"]), "vote_id"])
    for r in rows[:: max(1, len(rows) // 10)]:
        stored = qc._pair_images(engine, r["pair_id"])
        assert (r["jpg_0"], r["jpg_1"]) == (stored["png_a"], stored["png_b"])


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    from db.engine import connect

    url = f"sqlite:///{tmp_path_factory.mktemp('log') / 'log.db'}"
    engine = connect(url)
    SYN.write_log(engine, SYN.SyntheticSpec(n_live=12, n_gold=2, seed=2), image_size=8, retract_every=0)
    return url, engine


def test_humans_only_and_judges_filters(small_log, tmp_path):
    """--humans-only keeps people's votes, --judges those judges' votes, both together the union."""
    from db.read import votes_frame

    _, engine = small_log
    frame = votes_frame(engine)
    judge = frame["judge"].dropna().iloc[0]
    people, judged = frame["annotator"].notna(), frame["judge"] == judge
    assert people.any() and judged.any() and (frame["judge"].notna() & ~judged).any()
    cases = {"people": (export.ExportFilters(humans_only=True), people),
             "judge": (export.ExportFilters(judges=(judge,)), judged),
             "both": (export.ExportFilters(humans_only=True, judges=(judge,)), people | judged)}
    for name, (filters, selected) in cases.items():
        manifest = export.export_log(engine, "jsonl", tmp_path / name, filters)
        assert manifest["counts"]["comparisons"] == selected.sum(), name
        lines = [json.loads(x) for x in (tmp_path / name / "comparisons.jsonl").read_text().splitlines()]
        kept = frame[selected & ~frame["choice"].isin(["skip", "tie"])]
        assert sorted(x["vote_id"] for x in lines) == sorted(kept["vote_id"]), name
    export.export_log(engine, "pickapic", tmp_path / "pp", export.ExportFilters(humans_only=True, include_ties=True))
    files = sorted((tmp_path / "pp").glob("*.parquet"))
    assert tmp_path / "pp" / "train.parquet" in files
    for path in files:  # counted by export_log's image-less pass, before the files are written
        rows = pd.read_parquet(path)
        assert len(rows) and (rows["user_id"] > 0).all() and rows["judge"].isna().all()
        assert (rows["num_example_per_prompt"] == rows.groupby("caption")["caption"].transform("size")).all()


def test_export_cli_filters_and_refusals(small_log, tmp_path, capsys):
    from dreamdpo.cli import main

    url, _ = small_log
    assert main(["export", "--format", "trl", "--out", str(tmp_path / "t"), "--db", url, "--humans-only",
                 "--include-ties"]) == 0
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["filters"]["humans_only"] and manifest["filters"]["include_ties"]
    assert "exported" in capsys.readouterr().out
    (tmp_path / "a-file").write_text("keep me")
    assert main(["export", "--format", "pickapic", "--out", str(tmp_path / "a-file"), "--db", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and (tmp_path / "a-file").read_text() == "keep me"
    assert main(["export", "--format", "jsonl", "--out", str(tmp_path / "j"), "--db", url, "--judges", "toy-judge"]) == 0
    assert json.loads((tmp_path / "j" / "manifest.json").read_text())["filters"]["judges"] == ["toy-judge"]

"""Preference datasets from the log: Pick-a-Pic parquet, TRL preference parquet, JSONL + PNG.

Every export streams: comparisons come from the database in chunks (server-side cursor,
`yield_per`) and each chunk becomes one parquet row group (pyarrow.ParquetWriter) or a batch of
JSONL lines, so memory stays bounded by the chunk size whatever the size of the log. Every export
writes `manifest.json`: format, schema version, filters, counts (rows per split and what was left
out and why) and the sha256 of every file.

One comparison = one vote (a person's or a model judge's) on one pair, with both images.
Choices map to Pick-a-Pic labels as a → (1, 0), b → (0, 1), tie → (0.5, 0.5), both_bad → (0, 0)
with has_label false; skips and retracted votes are not comparisons and are only counted.
Ties are left out unless `include_ties` (TRL always writes them to their own split when included).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from db.errors import LogError

SCHEMA_VERSION = 1
FORMATS = ("pickapic", "trl", "jsonl")
CHUNK = 1000

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass(frozen=True)
class ExportFilters:
    run_id: int | None = None
    since: str | None = None          # ISO date or datetime; votes created at or after it
    include_ties: bool = False


@dataclass
class ExportCounts:
    comparisons: int = 0                                  # votes read from the log after run/since filters
    rows: dict[str, int] = field(default_factory=dict)    # rows written per split
    excluded: dict[str, int] = field(default_factory=dict)  # skipped | retracted | tie → count
    choices: dict[str, int] = field(default_factory=dict)   # written rows per choice

    def drop(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1

    def keep(self, split: str, choice: str) -> None:
        self.rows[split] = self.rows.get(split, 0) + 1
        self.choices[choice] = self.choices.get(choice, 0) + 1


# ----------------------------------------------------------------------------- reading the log
COMPARISON_FIELDS = ("vote_id", "pair_id", "run_id", "step", "kind", "prompt", "question", "image_a_id",
                     "image_b_id", "image_a", "image_b", "seed_a", "seed_b", "annotator_id", "annotator",
                     "judge", "choice", "score_a", "score_b", "shown_left", "latency_ms", "created_at",
                     "gold_answer", "duplicate_of", "retracted")


def iter_comparisons(engine, filters: ExportFilters = ExportFilters(), chunk_size: int = CHUNK) -> Iterator[dict]:
    """Every vote with its pair, run, annotator and both images' bytes, oldest first, streamed."""
    stmt = comparisons_query(engine, filters)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(stmt)
        for row in result.mappings():
            yield dict(row)


def comparisons_query(engine, filters: ExportFilters = ExportFilters()):
    """SELECT of every vote joined to its pair, run, annotator and both images, oldest first."""
    import sqlalchemy as sa

    from db import models

    v, p, r, a = models.Vote.__table__, models.Pair.__table__, models.Run.__table__, models.Annotator.__table__
    img_a, img_b = models.Image.__table__.alias("img_a"), models.Image.__table__.alias("img_b")
    stmt = (
        sa.select(
            v.c.id.label("vote_id"), p.c.id.label("pair_id"), p.c.run_id, p.c.step, p.c.kind, r.c.prompt,
            sa.func.coalesce(p.c.question, r.c.question).label("question") if "question" in p.c else r.c.question,
            p.c.image_a.label("image_a_id"), p.c.image_b.label("image_b_id"), img_a.c.png.label("image_a"),
            img_b.c.png.label("image_b"), p.c.seed_a, p.c.seed_b, v.c.annotator_id, a.c.name.label("annotator"),
            v.c.judge_name.label("judge"), v.c.choice, v.c.score_a, v.c.score_b, v.c.shown_left, v.c.latency_ms,
            v.c.created_at, p.c.gold_answer, p.c.duplicate_of,
            (v.c.retracted if "retracted" in v.c else sa.literal(False)).label("retracted"),
        )
        .select_from(v.join(p, v.c.pair_id == p.c.id).join(r, p.c.run_id == r.c.id)
                     .join(img_a, p.c.image_a == img_a.c.id).join(img_b, p.c.image_b == img_b.c.id)
                     .outerjoin(a, v.c.annotator_id == a.c.id))
        .order_by(v.c.id)
    )
    if filters.run_id is not None:
        stmt = stmt.where(p.c.run_id == filters.run_id)
    since = _parse_since(filters.since)
    if since is not None:
        stmt = stmt.where(v.c.created_at >= since)
    return stmt


def _parse_since(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise LogError(f"--since {since!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- row layouts
LABELS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5), "both_bad": (0.0, 0.0)}

PICKAPIC_SCHEMA = pa.schema([
    ("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
    ("label_0", pa.float64()), ("label_1", pa.float64()), ("are_different", pa.bool_()),
    ("has_label", pa.bool_()), ("user_id", pa.int64()), ("ranking_id", pa.int64()),
    ("image_0_uid", pa.string()), ("image_1_uid", pa.string()), ("best_image_uid", pa.string()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("created_at", pa.string()),
    # dreamdpo's own columns, so that nothing in the log is lost
    ("choice", pa.string()), ("annotator", pa.string()), ("judge", pa.string()), ("run_id", pa.int64()),
    ("pair_id", pa.int64()), ("step", pa.int64()), ("kind", pa.string()), ("question", pa.string()),
    ("shown_left", pa.string()), ("score_a", pa.float64()), ("score_b", pa.float64()),
    ("latency_ms", pa.float64()), ("gold_answer", pa.string()), ("duplicate_of", pa.int64()),
])

TRL_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("chosen", IMAGE), ("rejected", IMAGE), ("images", pa.list_(IMAGE)),
    ("tie", pa.bool_()), ("annotator", pa.string()), ("judge", pa.string()), ("run_id", pa.int64()),
    ("pair_id", pa.int64()), ("vote_id", pa.int64()), ("kind", pa.string()), ("score_chosen", pa.float64()),
    ("score_rejected", pa.float64()), ("created_at", pa.string()),
])


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _float(value) -> float | None:
    return None if value is None else float(value)


def pickapic_row(c: dict) -> dict:
    label_0, label_1 = LABELS[c["choice"]]
    best = {"a": c["image_a_id"], "b": c["image_b_id"]}.get(c["choice"], "")
    return {
        "caption": c["prompt"], "jpg_0": c["image_a"], "jpg_1": c["image_b"], "label_0": label_0, "label_1": label_1,
        "are_different": c["image_a_id"] != c["image_b_id"], "has_label": c["choice"] != "both_bad",
        "user_id": c["annotator_id"] if c["annotator_id"] is not None else -1, "ranking_id": c["vote_id"],
        "image_0_uid": c["image_a_id"], "image_1_uid": c["image_b_id"], "best_image_uid": best,
        "model_0": f"run{c['run_id']}/seed{c['seed_a']}", "model_1": f"run{c['run_id']}/seed{c['seed_b']}",
        "created_at": _iso(c["created_at"]), "choice": c["choice"], "annotator": c["annotator"], "judge": c["judge"],
        "run_id": c["run_id"], "pair_id": c["pair_id"], "step": c["step"], "kind": c["kind"],
        "question": c["question"], "shown_left": c["shown_left"], "score_a": _float(c["score_a"]),
        "score_b": _float(c["score_b"]), "latency_ms": _float(c["latency_ms"]), "gold_answer": c["gold_answer"],
        "duplicate_of": c["duplicate_of"],
    }


def trl_row(c: dict) -> dict:
    """Chosen/rejected images (a first for a tie); `images` holds both in that order."""
    first, second = ("b", "a") if c["choice"] == "b" else ("a", "b")
    chosen = {"bytes": c[f"image_{first}"], "path": f"{c[f'image_{first}_id']}.png"}
    rejected = {"bytes": c[f"image_{second}"], "path": f"{c[f'image_{second}_id']}.png"}
    return {
        "prompt": c["prompt"], "chosen": chosen, "rejected": rejected, "images": [chosen, rejected],
        "tie": c["choice"] == "tie", "annotator": c["annotator"], "judge": c["judge"], "run_id": c["run_id"],
        "pair_id": c["pair_id"], "vote_id": c["vote_id"], "kind": c["kind"],
        "score_chosen": _float(c[f"score_{first}"]), "score_rejected": _float(c[f"score_{second}"]),
        "created_at": _iso(c["created_at"]),
    }


def jsonl_row(c: dict) -> dict:
    row = {k: c[k] for k in COMPARISON_FIELDS if k not in ("image_a", "image_b", "retracted")}
    row["created_at"] = _iso(c["created_at"])
    row["image_a"] = f"images/{c['image_a_id']}.png"
    row["image_b"] = f"images/{c['image_b_id']}.png"
    return row


# ----------------------------------------------------------------------------- writers
def _hf_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata that makes `datasets` decode image structs as images."""
    def feature(t: pa.DataType) -> dict:
        if t.equals(IMAGE):
            return {"_type": "Image"}
        if pa.types.is_list(t):
            return {"feature": feature(t.value_type), "_type": "List"}
        dtype = {pa.string(): "string", pa.binary(): "binary", pa.float64(): "float64", pa.int64(): "int64",
                 pa.bool_(): "bool"}[t]
        return {"dtype": dtype, "_type": "Value"}

    features = {f.name: feature(f.type) for f in schema}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


class ParquetSplits:
    """One ParquetWriter per split, each chunk of rows written as one row group."""

    def __init__(self, out_dir: Path, schema: pa.Schema, chunk_size: int):
        self.out_dir, self.chunk_size = out_dir, chunk_size
        self.schema = schema.with_metadata(_hf_metadata(schema))
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.buffers: dict[str, list[dict]] = {}

    def add(self, split: str, row: dict) -> None:
        buf = self.buffers.setdefault(split, [])
        buf.append(row)
        if len(buf) >= self.chunk_size:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.buffers.get(split)
        if not rows:
            return
        if split not in self.writers:
            self.writers[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", self.schema)
        self.writers[split].write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.buffers[split] = []

    def close(self) -> list[Path]:
        for split in list(self.buffers):
            self._flush(split)
        for writer in self.writers.values():
            writer.close()
        return [self.out_dir / f"{s}.parquet" for s in self.writers]


def write_comparisons(comparisons: Iterable[dict], fmt: str, out_dir: str | Path,
                      filters: ExportFilters = ExportFilters(), chunk_size: int = CHUNK) -> dict:
    """Write an export from a stream of comparisons; returns (and writes) the manifest."""
    if fmt not in FORMATS:
        raise LogError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise LogError(f"{out} is not empty; export into a new or empty directory")
    counts = ExportCounts()
    files: list[Path] = []
    parquet = None
    if fmt in ("pickapic", "trl"):
        parquet = ParquetSplits(out, PICKAPIC_SCHEMA if fmt == "pickapic" else TRL_SCHEMA, chunk_size)
    else:
        (out / "images").mkdir()
        jsonl = open(out / "comparisons.jsonl", "w", encoding="utf-8")
        written: set[str] = set()
    try:
        for c in comparisons:
            counts.comparisons += 1
            if c.get("retracted"):
                counts.drop("retracted")
                continue
            if c["choice"] == "skip":
                counts.drop("skip")
                continue
            if c["choice"] == "tie" and not filters.include_ties:
                counts.drop("tie")
                continue
            if fmt == "pickapic":
                parquet.add("train", pickapic_row(c))
                counts.keep("train", c["choice"])
            elif fmt == "trl":
                if c["choice"] == "both_bad":
                    counts.drop("both_bad")   # no chosen image: not a TRL preference
                    continue
                split = "ties" if c["choice"] == "tie" else "train"
                parquet.add(split, trl_row(c))
                counts.keep(split, c["choice"])
            else:
                for side in ("a", "b"):
                    image_id = c[f"image_{side}_id"]
                    if image_id not in written:
                        (out / "images" / f"{image_id}.png").write_bytes(c[f"image_{side}"])
                        written.add(image_id)
                jsonl.write(json.dumps(jsonl_row(c)) + "\n")
                counts.keep("comparisons", c["choice"])
    finally:
        if parquet is not None:
            files = parquet.close()
        else:
            jsonl.close()
            files = [out / "comparisons.jsonl"] + sorted((out / "images").iterdir())
    manifest = {
        "format": fmt, "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "filters": asdict(filters), "counts": asdict(counts),
        "files": {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require_admin(user: dict | None) -> None:
    """Exports hold every vote: only admins (or local CLI access, user=None) may take them."""
    if user is not None and (user.get("role") != "admin" or not user.get("active", True)):
        raise LogError(f"{user.get('name', 'this account')} is not an admin; ask an admin to export the log")


def export_log(engine, fmt: str, out_dir: str | Path, filters: ExportFilters = ExportFilters(),
               user: dict | None = None, chunk_size: int = CHUNK) -> dict:
    """Export the log (streamed) in one format; `user` is the caller's identity when not a local admin."""
    require_admin(user)
    return write_comparisons(iter_comparisons(engine, filters, chunk_size), fmt, out_dir, filters, chunk_size)


def zip_export(out_dir: str | Path) -> bytes:
    """The export directory as one zip (for a browser download)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(Path(out_dir).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(out_dir))
    return buf.getvalue()

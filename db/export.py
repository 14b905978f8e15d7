"""Preference datasets from the log, in the layouts their consumers read unchanged.

- `pickapic`: the Pick-a-Pic v2 columns and types (image bytes in jpg_0/jpg_1, label_0/label_1,
  `created_at` as timestamp[ns] in UTC, `num_example_per_prompt`, null image urls), for image-generator
  preference training (DiffusionDPO's train.py, PickScore's trainer). Split `train` holds only decisive
  votes, labels (1, 0) or (0, 1). DiffusionDPO trains every row whose label_0 is not 1 as "jpg_1 wins"
  and never reads has_label, so nothing else may sit in `train`: ties (0.5, 0.5) go to split `ties`, and
  only with `include_ties`; "both bad" and skips are left out and counted.
- `trl`: TRL's conversational vision preference format, for training a multimodal judge with
  `trl.DPOTrainer` and a vision-language model: `prompt` = a user turn holding two image placeholders
  and the question, `images` = the two candidates in the order the voter saw them, `chosen`/`rejected`
  = the assistant answers "First"/"Second". Ties (with `include_ties`), "both bad" and skips go to
  their own splits (`ties`, `both_bad`, `skips`), whose answer is in `chosen` and whose `rejected` is
  null, so that no trainer takes them by mistake.
- `jsonl`: comparisons.jsonl + PNG files, every column of the log.

Every export streams: comparisons come from the database in chunks (server-side cursor, `yield_per`)
and each chunk becomes one parquet row group or a batch of JSONL lines, so memory stays bounded by
the chunk size whatever the size of the log. Parquet exports carry a dataset card (README.md) whose
`configs` name every split, so `datasets.load_dataset(DIR)` returns them all and
`load_dataset(DIR, split="ties")` one of them. Every export writes `manifest.json`: format, schema
version, filters, counts (rows per split, what was left out and why) and the sha256 of every file.
An export is written into a hidden sibling folder and renamed into place when complete: a failed
export leaves nothing at --out, and nothing that blocks a retry.

One comparison = one vote (a person's or a model judge's) on one pair. Retracted votes and votes on
pairs the run marked indistinct are never exported, only counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from db.errors import LogError
from db.timefilter import parse_time

SCHEMA_VERSION = 2
FORMATS = ("pickapic", "trl", "jsonl")
CHUNK = 1000

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TIMESTAMP = pa.timestamp("ns")  # naive UTC, as Pick-a-Pic's created_at


@dataclass(frozen=True)
class ExportFilters:
    run_id: int | None = None
    since: str | None = None          # ISO date or datetime; votes created at or after it
    include_ties: bool = False
    humans_only: bool = False         # people's votes (with `judges`: people's and those judges')
    judges: tuple[str, ...] | None = None  # only these model judges' votes (with humans_only: and people's)


@dataclass
class ExportCounts:
    comparisons: int = 0                                  # votes read from the log after run/since/source filters
    rows: dict[str, int] = field(default_factory=dict)    # rows written per split
    excluded: dict[str, int] = field(default_factory=dict)  # reason (retracted, indistinct, tie, ...) → count
    choices: dict[str, int] = field(default_factory=dict)   # written rows per choice

    def drop(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1

    def keep(self, split: str, choice: str) -> None:
        self.rows[split] = self.rows.get(split, 0) + 1
        self.choices[choice] = self.choices.get(choice, 0) + 1


# ----------------------------------------------------------------------------- reading the log
COMPARISON_FIELDS = ("vote_id", "pair_id", "run_id", "step", "kind", "pair_status", "prompt", "question",
                     "image_a_id", "image_b_id", "image_a", "image_b", "seed_a", "seed_b", "annotator_id",
                     "annotator", "judge", "choice", "score_a", "score_b", "shown_left", "latency_ms", "created_at",
                     "gold_answer", "duplicate_of", "retracted")


def iter_comparisons(engine, filters: ExportFilters = ExportFilters(), chunk_size: int = CHUNK) -> Iterator[dict]:
    """Every vote with its pair, run, annotator and both images' bytes, oldest first, streamed."""
    stmt = comparisons_query(engine, filters)
    with engine.connect().execution_options(readonly=True) as conn:  # an export never takes the write lock
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(stmt)
        for row in result.mappings():
            yield dict(row)


def comparisons_query(engine, filters: ExportFilters = ExportFilters(), images: bool = True):
    """SELECT of every vote joined to its pair, run, annotator and both images, oldest first.
    images=False: only what `route` and the per-prompt counts read (no image bytes), same filters."""
    import sqlalchemy as sa

    from db import models

    v, p, r, a = models.Vote.__table__, models.Pair.__table__, models.Run.__table__, models.Annotator.__table__
    img_a, img_b = models.Image.__table__.alias("img_a"), models.Image.__table__.alias("img_b")
    if not images:
        retracted = (v.c.retracted if "retracted" in v.c else sa.literal(False)).label("retracted")
        stmt = (sa.select(r.c.prompt, v.c.choice, p.c.status.label("pair_status"), retracted)
                .select_from(v.join(p, v.c.pair_id == p.c.id).join(r, p.c.run_id == r.c.id)))
        return _where(stmt, filters, v, p)
    stmt = (
        sa.select(
            v.c.id.label("vote_id"), p.c.id.label("pair_id"), p.c.run_id, p.c.step, p.c.kind,
            p.c.status.label("pair_status"), r.c.prompt,
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
    return _where(stmt, filters, v, p)


def _where(stmt, filters: ExportFilters, v, p):
    """The run, since and vote-source filters, the same for both queries."""
    import sqlalchemy as sa

    if filters.run_id is not None:
        stmt = stmt.where(p.c.run_id == filters.run_id)
    since = parse_time(filters.since)
    if since is not None:
        stmt = stmt.where(v.c.created_at >= since)
    sources = []
    if filters.humans_only:
        sources.append(v.c.annotator_id.is_not(None))
    if filters.judges:
        sources.append(v.c.judge_name.in_(list(filters.judges)))
    if sources:
        stmt = stmt.where(sa.or_(*sources))
    return stmt


def parse_judges(text: str | None) -> tuple[str, ...] | None:
    """'hpsv2, imagereward' → ('hpsv2', 'imagereward'); empty → None (no judge filter)."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    return names or None


# ----------------------------------------------------------------------------- where each vote goes
LABELS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}
DECISIVE = ("a", "b")
TRL_SPLITS = {"a": "train", "b": "train", "tie": "ties", "both_bad": "both_bad", "skip": "skips"}


def route(fmt: str, c: dict, include_ties: bool) -> tuple[str | None, str | None]:
    """(split, None) for a row to write, or (None, reason) for a vote left out."""
    choice = c["choice"]
    if c.get("retracted"):
        return None, "retracted"
    if c.get("pair_status") == "indistinct":
        return None, "indistinct"
    if choice == "tie" and not include_ties:
        return None, "tie"
    if fmt == "trl":
        return TRL_SPLITS[choice], None
    if choice == "skip":
        return None, "skip"
    if fmt == "pickapic":
        if choice == "both_bad":
            return None, "both_bad"  # no winner: DiffusionDPO would train it as "jpg_1 wins"
        return ("ties" if choice == "tie" else "train"), None
    return "comparisons", None


def examples_per_prompt(comparisons: Iterable[dict], fmt: str, include_ties: bool) -> dict[str, dict[str, int]]:
    """split → caption → rows that `route` sends there (Pick-a-Pic's num_example_per_prompt)."""
    counts: dict[str, dict[str, int]] = {}
    for c in comparisons:
        split, _ = route(fmt, c, include_ties)
        if split is not None:
            per_split = counts.setdefault(split, {})
            per_split[c["prompt"]] = per_split.get(c["prompt"], 0) + 1
    return counts


# ----------------------------------------------------------------------------- row layouts
PICKAPIC_SCHEMA = pa.schema([
    # Pick-a-Pic v2's columns, in its order and types
    ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
    ("created_at", TIMESTAMP), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
    ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()),
    # dreamdpo's own columns, so that nothing in the log is lost
    ("choice", pa.string()), ("annotator", pa.string()), ("judge", pa.string()), ("run_id", pa.int64()),
    ("pair_id", pa.int64()), ("step", pa.int64()), ("kind", pa.string()), ("question", pa.string()),
    ("shown_left", pa.string()), ("score_a", pa.float64()), ("score_b", pa.float64()),
    ("latency_ms", pa.float64()), ("gold_answer", pa.string()), ("duplicate_of", pa.int64()),
])

MESSAGES = pa.list_(pa.struct([("role", pa.string()),
                               ("content", pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())])))]))

TRL_SCHEMA = pa.schema([
    ("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), ("images", pa.list_(IMAGE)),
    ("choice", pa.string()), ("first", pa.string()), ("caption", pa.string()), ("question", pa.string()),
    ("annotator", pa.string()), ("judge", pa.string()), ("run_id", pa.int64()), ("pair_id", pa.int64()),
    ("vote_id", pa.int64()), ("kind", pa.string()), ("score_first", pa.float64()), ("score_second", pa.float64()),
    ("created_at", TIMESTAMP),
])

DEFAULT_QUESTION = "Which image matches the prompt better?"
ANSWERS = {"first": "First", "second": "Second", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}


def _timestamp(value) -> datetime | None:
    """A naive UTC datetime (Pick-a-Pic's timestamp[ns]) from a datetime or an ISO string."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _float(value) -> float | None:
    return None if value is None else float(value)


def pickapic_row(c: dict) -> dict:
    """jpg_0 = candidate a, jpg_1 = candidate b; num_example_per_prompt is filled in after the last row."""
    label_0, label_1 = LABELS[c["choice"]]
    best = {"a": c["image_a_id"], "b": c["image_b_id"]}.get(c["choice"], "")
    return {
        "are_different": c["image_a_id"] != c["image_b_id"], "best_image_uid": best, "caption": c["prompt"],
        "created_at": _timestamp(c["created_at"]), "has_label": True, "image_0_uid": c["image_a_id"],
        "image_0_url": None, "image_1_uid": c["image_b_id"], "image_1_url": None, "jpg_0": c["image_a"],
        "jpg_1": c["image_b"], "label_0": label_0, "label_1": label_1,
        "model_0": f"run{c['run_id']}/seed{c['seed_a']}", "model_1": f"run{c['run_id']}/seed{c['seed_b']}",
        "ranking_id": c["vote_id"], "user_id": c["annotator_id"] if c["annotator_id"] is not None else -1,
        "num_example_per_prompt": 0,
        "choice": c["choice"], "annotator": c["annotator"], "judge": c["judge"], "run_id": c["run_id"],
        "pair_id": c["pair_id"], "step": c["step"], "kind": c["kind"], "question": c["question"],
        "shown_left": c["shown_left"], "score_a": _float(c["score_a"]), "score_b": _float(c["score_b"]),
        "latency_ms": _float(c["latency_ms"]), "gold_answer": c["gold_answer"], "duplicate_of": c["duplicate_of"],
    }


def _message(role: str, parts: list[dict]) -> list[dict]:
    return [{"role": role, "content": parts}]


def trl_prompt(caption: str, question: str | None) -> list[dict]:
    """The user turn: two image placeholders (filled by TRL from `images`), then the question."""
    text = f'{question or DEFAULT_QUESTION}\nPrompt: "{caption}"\nAnswer First or Second.'
    return _message("user", [{"type": "image", "text": None}, {"type": "image", "text": None},
                             {"type": "text", "text": text}])


def trl_row(c: dict) -> dict:
    """Images in the order the voter saw them (shown_left first; a first when unknown)."""
    first = c["shown_left"] if c["shown_left"] in ("a", "b") else "a"
    second = "b" if first == "a" else "a"
    choice = c["choice"]
    answer = lambda key: _message("assistant", [{"type": "text", "text": ANSWERS[key]}])  # noqa: E731
    if choice in DECISIVE:
        won = "first" if choice == first else "second"
        chosen, rejected = answer(won), answer("second" if won == "first" else "first")
    else:
        chosen, rejected = answer(choice), None
    images = [{"bytes": c[f"image_{side}"], "path": f"{c[f'image_{side}_id']}.png"} for side in (first, second)]
    return {
        "prompt": trl_prompt(c["prompt"], c["question"]), "chosen": chosen, "rejected": rejected, "images": images,
        "choice": choice, "first": first, "caption": c["prompt"], "question": c["question"],
        "annotator": c["annotator"], "judge": c["judge"], "run_id": c["run_id"], "pair_id": c["pair_id"],
        "vote_id": c["vote_id"], "kind": c["kind"], "score_first": _float(c[f"score_{first}"]),
        "score_second": _float(c[f"score_{second}"]), "created_at": _timestamp(c["created_at"]),
    }


def jsonl_row(c: dict) -> dict:
    row = {k: c.get(k) for k in COMPARISON_FIELDS if k not in ("image_a", "image_b", "retracted")}
    row["created_at"] = _iso(c["created_at"])
    row["image_a"] = f"images/{c['image_a_id']}.png"
    row["image_b"] = f"images/{c['image_b_id']}.png"
    return row


# ----------------------------------------------------------------------------- writers
def _feature(t: pa.DataType):
    """The `datasets` feature of an arrow type (image structs decode as PIL images)."""
    if t.equals(IMAGE):
        return {"_type": "Image"}
    if pa.types.is_list(t):
        return {"feature": _feature(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i).type) for i in range(t.num_fields)}
    dtype = {pa.string(): "string", pa.binary(): "binary", pa.float64(): "float64", pa.int64(): "int64",
             pa.bool_(): "bool", TIMESTAMP: "timestamp[ns]"}[t]
    return {"dtype": dtype, "_type": "Value"}


def _hf_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata that makes `datasets` decode image structs as images."""
    features = {f.name: _feature(f.type) for f in schema}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


class ParquetSplits:
    """One ParquetWriter per split, each chunk of rows written as one row group."""

    def __init__(self, out_dir: Path, schema: pa.Schema, chunk_size: int):
        self.out_dir, self.chunk_size = out_dir, chunk_size
        self.schema = schema.with_metadata(_hf_metadata(schema))
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.buffers: dict[str, list[dict]] = {}

    def path(self, split: str) -> Path:
        return self.out_dir / f"{split}.parquet"

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
            self.writers[split] = pq.ParquetWriter(self.path(split), self.schema)
        self.writers[split].write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.buffers[split] = []

    def close(self) -> list[str]:
        for split in list(self.buffers):
            self._flush(split)
        for writer in self.writers.values():
            writer.close()
        return list(self.writers)


def fill_examples_per_prompt(path: Path, counts: dict[str, int]) -> None:
    """Rewrite `num_example_per_prompt` (rows of the split with the same caption), one row group at a time."""
    src = pq.ParquetFile(path)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, src.schema_arrow) as writer:
        for i in range(src.num_row_groups):
            table = src.read_row_group(i)
            n = pa.array([counts[c] for c in table.column("caption").to_pylist()], pa.int64())
            writer.write_table(table.set_column(table.schema.get_field_index("num_example_per_prompt"),
                                                "num_example_per_prompt", n))
    src.close()
    os.replace(tmp, path)


SPLIT_USES = {
    ("pickapic", "train"): "decisive votes only, labels (1, 0) or (0, 1): DiffusionDPO's train.py, PickScore",
    ("pickapic", "ties"): "ties, labels (0.5, 0.5); DiffusionDPO trains a tie as 'jpg_0 wins': never train on it",
    ("trl", "train"): "decisive votes: trl.DPOTrainer with a vision-language model",
    ("trl", "ties"): "ties: the answer in `chosen`, `rejected` null (not a preference pair)",
    ("trl", "both_bad"): "'both bad' votes: the answer in `chosen`, `rejected` null (not a preference pair)",
    ("trl", "skips"): "skipped pairs: the answer in `chosen`, `rejected` null (not a preference pair)",
}


def dataset_card(fmt: str, splits: list[str]) -> str:
    """README.md whose `configs` make `load_dataset(DIR)` see every split by name."""
    order = list(dict.fromkeys(s for s in ["train", *sorted(splits)] if s in splits))
    lines = []
    if order:
        lines = ["---", "configs:", "- config_name: default", "  data_files:"]
        for s in order:
            lines += [f"  - split: {s}", f"    path: {s}.parquet"]
        lines += ["---", ""]
    lines += [f"# dreamdpo preference export ({fmt})", ""]
    lines += [f"- `{s}`: {SPLIT_USES.get((fmt, s), '')}" for s in order] or ["No rows."]
    lines += ["", "Counts, filters and checksums: manifest.json.", ""]
    return "\n".join(lines)


def _check_out(out: Path) -> None:
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise LogError(f"--out {out} is a file; give a new or empty directory")
    if out.is_dir() and any(out.iterdir()):
        raise LogError(f"{out} is not empty; export into a new or empty directory")


def write_comparisons(comparisons: Iterable[dict], fmt: str, out_dir: str | Path,
                      filters: ExportFilters = ExportFilters(), chunk_size: int = CHUNK,
                      prompt_counts: dict[str, dict[str, int]] | None = None) -> dict:
    """Write an export from a stream of comparisons; returns (and writes) the manifest.

    Written into a hidden sibling folder, renamed to `out_dir` when complete; removed on failure.
    prompt_counts: `examples_per_prompt` of the same stream, when the caller can count it cheaply
    beforehand (export_log does, without the images); otherwise Pick-a-Pic files are rewritten once
    at the end to fill num_example_per_prompt."""
    if fmt not in FORMATS:
        raise LogError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _write(comparisons, fmt, tmp, filters, chunk_size, prompt_counts)
        _check_out(out)
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(comparisons: Iterable[dict], fmt: str, out: Path, filters: ExportFilters, chunk_size: int,
           prompt_counts: dict[str, dict[str, int]] | None) -> dict:
    counts = ExportCounts()
    per_prompt: dict[str, dict[str, int]] = {}
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
            split, reason = route(fmt, c, filters.include_ties)
            if split is None:
                assert reason is not None  # route names the reason of every vote it leaves out
                counts.drop(reason)
                continue
            counts.keep(split, c["choice"])
            if parquet is not None and fmt == "pickapic":
                row = pickapic_row(c)
                if prompt_counts is not None:
                    row["num_example_per_prompt"] = prompt_counts.get(split, {}).get(c["prompt"], 0)
                parquet.add(split, row)
                prompts = per_prompt.setdefault(split, {})
                prompts[c["prompt"]] = prompts.get(c["prompt"], 0) + 1
            elif parquet is not None:  # trl
                parquet.add(split, trl_row(c))
            else:
                for side in ("a", "b"):
                    image_id = c[f"image_{side}_id"]
                    if image_id not in written:
                        (out / "images" / f"{image_id}.png").write_bytes(c[f"image_{side}"])
                        written.add(image_id)
                jsonl.write(json.dumps(jsonl_row(c)) + "\n")
    finally:
        if parquet is not None:
            splits = parquet.close()
        else:
            jsonl.close()
    if parquet is not None:
        if fmt == "pickapic" and prompt_counts != per_prompt:  # not counted beforehand (or the log changed since)
            for split in splits:
                fill_examples_per_prompt(parquet.path(split), per_prompt[split])
        (out / "README.md").write_text(dataset_card(fmt, splits))
        files = [out / "README.md"] + [parquet.path(s) for s in splits]
    else:
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
    counts = None
    if fmt == "pickapic":  # one cheap pass without images, so that the parquet files are written once
        with engine.connect() as conn:
            rows = conn.execute(comparisons_query(engine, filters, images=False)).mappings()
            counts = examples_per_prompt(rows, fmt, filters.include_ties)
    return write_comparisons(iter_comparisons(engine, filters, chunk_size), fmt, out_dir, filters, chunk_size, counts)


def zip_export(out_dir: str | Path) -> bytes:
    """The export directory as one zip (for a browser download)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(Path(out_dir).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(out_dir))
    return buf.getvalue()

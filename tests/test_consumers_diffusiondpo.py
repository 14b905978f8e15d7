"""The Pick-a-Pic export as DiffusionDPO's train.py reads it: not one pair comes out flipped.

DiffusionDPO (SalesforceAIResearch/DiffusionDPO, train.py at commit 8d3ee5c, DPO training without
--choice_model) does, in order:
- `dataset = load_dataset(args.dataset_name, ...)`, then uses `dataset[args.split]`, split 'train' by default;
- only `if 'pickapic' in args.dataset_name`: keeps the rows whose `label_0` is 0 or 1 (drops ties);
- `preprocess_train`: `im_tup = (jpg_0, jpg_1)`, reversed `if label_0 == 0`; the first image of the tuple
  is trained as the winner (y_w), the second as the loser. `has_label` is never read.
So a both-bad row (0, 0) trains jpg_1 as the winner and, in a folder whose name lacks "pickapic", a tie
(0.5, 0.5) trains jpg_0 as the winner. `diffusiondpo_pairs` restates exactly those lines.
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from db import export
from test_dataset_export import synthetic_comparisons


def diffusiondpo_pairs(dataset_name: str, cache_dir: str, split: str = "train") -> list[dict]:
    """(winner, loser, caption, ranking_id) of every row DiffusionDPO's DPO loss trains on."""
    from datasets import load_dataset

    dataset = load_dataset(dataset_name, None, cache_dir=cache_dir, data_dir=None)
    rows = dataset[split]
    if "pickapic" in dataset_name:
        keep = [i for i, label_0 in enumerate(rows["label_0"]) if label_0 in (0, 1)]
        rows = rows.select(keep)
    pairs = []
    for r in rows:
        images = [Image.open(io.BytesIO(r[col])).convert("RGB") for col in ("jpg_0", "jpg_1")]
        im_tup = (r["jpg_0"], r["jpg_1"])
        if r["label_0"] == 0:
            im_tup = im_tup[::-1]
        assert all(im.size[0] > 0 for im in images)
        pairs.append({"winner": im_tup[0], "loser": im_tup[1], "caption": r["caption"], "ranking_id": r["ranking_id"]})
    return pairs


@pytest.fixture(scope="module")
def comparisons():
    return synthetic_comparisons()


@pytest.mark.parametrize("folder", ["pickapic-export", "votes"])  # with and without DiffusionDPO's name test
@pytest.mark.parametrize("include_ties", [False, True])
def test_no_pair_comes_out_flipped(tmp_path, comparisons, folder, include_ties):
    out = tmp_path / folder
    export.write_comparisons(iter(comparisons), "pickapic", out, export.ExportFilters(include_ties=include_ties))
    pairs = diffusiondpo_pairs(str(out), str(tmp_path / "cache"))
    votes = {c["vote_id"]: c for c in comparisons}
    decisive = [c for c in comparisons if not c["retracted"] and c["choice"] in ("a", "b")]
    assert sorted(p["ranking_id"] for p in pairs) == sorted(c["vote_id"] for c in decisive)  # none lost either
    flipped = 0
    for p in pairs:
        c = votes[p["ranking_id"]]
        won, lost = ("a", "b") if c["choice"] == "a" else ("b", "a")
        flipped += (p["winner"], p["loser"]) != (c[f"image_{won}"], c[f"image_{lost}"])
        assert p["caption"] == c["prompt"]
    assert flipped == 0
    assert all(c["choice"] in ("tie", "both_bad", "skip") for c in comparisons
               if not c["retracted"] and c["vote_id"] not in {p["ranking_id"] for p in pairs})


def png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, "PNG")
    return buf.getvalue()


def test_the_restatement_catches_the_old_labels(tmp_path):
    """Control: the rows the export used to write — both-bad as (0, 0), a tie as (0.5, 0.5) in train —
    come out of the restated logic as 'jpg_1 wins' and 'jpg_0 wins'."""
    out = tmp_path / "old"
    out.mkdir()
    a, b = png("red"), png("blue")
    schema = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                        ("label_0", pa.float64()), ("label_1", pa.float64()), ("ranking_id", pa.int64())])
    rows = [{"caption": "c", "jpg_0": a, "jpg_1": b, "label_0": 0.0, "label_1": 0.0, "ranking_id": 1},   # both bad
            {"caption": "c", "jpg_0": a, "jpg_1": b, "label_0": 0.5, "label_1": 0.5, "ranking_id": 2}]   # tie
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "train.parquet")
    pairs = {p["ranking_id"]: p for p in diffusiondpo_pairs(str(out), str(tmp_path / "cache"))}
    assert pairs[1]["winner"] == b and pairs[2]["winner"] == a

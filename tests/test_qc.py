"""db/qc.py: gold pairs, swapped duplicates, the queue's mix-in rate and annotator flags, on a real
SQLite log."""
from __future__ import annotations

import random

import pytest

from db import qc, stats
from db import synthetic as SYN  # noqa: E402
from db.errors import LogError


@pytest.fixture()
def engine(tmp_path):
    from db.engine import connect

    return connect(f"sqlite:///{tmp_path / 'log.db'}")


@pytest.fixture()
def run_id(engine):
    from db import runs

    return runs.create_run(engine, "a red cube", backbone="synthetic")


def test_gold_pair_keeps_its_answer(engine, run_id):
    from db.read import pairs_frame

    pid = qc.post_gold_pair(engine, run_id, SYN.png_bytes(1, "a"), SYN.png_bytes(1, "b"), "b")
    row = pairs_frame(engine).set_index("pair_id").loc[pid]
    assert row["kind"] == "gold" and row["gold_answer"] == "b"
    with pytest.raises(LogError, match="gold answer"):
        qc.post_gold_pair(engine, run_id, SYN.png_bytes(1, "a"), SYN.png_bytes(1, "b"), "left")


def test_swapped_duplicate_exchanges_the_images(engine, run_id):
    from db import pairs

    a, b = SYN.png_bytes(2, "a"), SYN.png_bytes(2, "b")
    original = pairs.post_pair(engine, run_id, 7, a, b, seed_a=11, seed_b=12, t=300, t_b=700)
    dup = qc.post_swapped_duplicate(engine, original)
    row = qc._pair_images(engine, dup)
    assert (row["png_a"], row["png_b"]) == (b, a)
    assert row["duplicate_of"] == original and row["kind"] == "duplicate" and row["step"] == 7
    assert (row["seed_a"], row["seed_b"], row["t"], row["t_b"]) == (12, 11, 700, 300)
    one_t = pairs.post_pair(engine, run_id, 8, a, b, seed_a=11, seed_b=12, t=500)  # both members at one t
    row = qc._pair_images(engine, qc.post_swapped_duplicate(engine, one_t))
    assert (row["t"], row["t_b"]) == (500, None)
    with pytest.raises(LogError, match="itself a duplicate"):
        qc.post_swapped_duplicate(engine, dup)
    with pytest.raises(LogError, match="does not exist"):
        qc.post_swapped_duplicate(engine, 10_000)


def test_mix_in_posts_qc_pairs_at_the_configured_rate(engine, run_id):
    from db import pairs
    from db.read import pairs_frame

    qc.post_gold_pair(engine, run_id, SYN.png_bytes(3, "a"), SYN.png_bytes(3, "b"), "a")
    pairs.post_pair(engine, run_id, 0, SYN.png_bytes(4, "a"), SYN.png_bytes(4, "b"))
    assert qc.mix_in(engine, run_id, qc.QCConfig(gold_rate=0.0, duplicate_rate=0.0)) == []
    both = qc.mix_in(engine, run_id, qc.QCConfig(gold_rate=1.0, duplicate_rate=1.0), random.Random(0))
    kinds = pairs_frame(engine).set_index("pair_id").loc[both, "kind"].tolist()
    assert kinds == ["gold", "duplicate"]
    rng = random.Random(1)
    posted = sum(len(qc.mix_in(engine, run_id, qc.QCConfig(gold_rate=0.0, duplicate_rate=0.25), rng))
                 for _ in range(120))
    assert 15 <= posted <= 45  # binomial(120, 0.25): mean 30, sd 4.7


@pytest.mark.slow
def test_flags_the_planted_bad_annotators_from_the_database(engine):
    from db.read import votes_frame

    SYN.write_log(engine, SYN.SyntheticSpec(n_live=150, n_gold=25, seed=2), image_size=8)
    frame = votes_frame(engine)
    assert len(stats.active_votes(frame)) > 800
    flagged = qc.flag_annotators(frame)
    assert set(flagged.index) == {"lefty", "spammer"}
    assert all(flagged["flag_reasons"].str.len() > 0)

"""Quality-control pairs: gold pairs with a known answer, swapped duplicates of earlier pairs, and the
flags that tell admins which annotators to check.

A gold pair is an ordinary pair of kind "gold" with `gold_answer` set; a swapped duplicate is a
copy of an earlier pair with image_a and image_b exchanged and `duplicate_of` pointing at it, so
a consistent rater answers the mirror image of their first answer. `mix_in` is called after each
live pair is posted and adds QC pairs to the same queue at configurable rates, so annotators
cannot tell them apart.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from db import stats
from db.errors import LogError


@dataclass(frozen=True)
class QCConfig:
    gold_rate: float = 0.05        # chance of one gold pair per live pair posted
    duplicate_rate: float = 0.05   # chance of one swapped duplicate per live pair posted
    votes_needed: int = 1


def post_gold_pair(engine, run_id: int, image_a: bytes, image_b: bytes, answer: str,
                   question: str | None = None, votes_needed: int = 1) -> int:
    """Post a pair whose right answer is known (a or b, or tie/both_bad)."""
    from db import pairs

    if answer not in stats.OPINIONS:
        raise LogError(f"gold answer {answer!r} is not one of {', '.join(stats.OPINIONS)}")
    return pairs.post_pair(engine, run_id, -1, image_a, image_b, kind="gold", gold_answer=answer,
                           question=question, votes_needed=votes_needed)


def _pair_images(engine, pair_id: int) -> dict[str, Any]:
    from db import models

    p, img = models.Pair.__table__, models.Image.__table__
    ia, ib = img.alias("ia"), img.alias("ib")
    stmt = (sa.select(p, ia.c.png.label("png_a"), ib.c.png.label("png_b"))
            .join(ia, p.c.image_a == ia.c.id).join(ib, p.c.image_b == ib.c.id).where(p.c.id == pair_id))
    with engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        raise LogError(f"pair {pair_id} does not exist; list pairs with `dreamdpo stats`")
    return dict(row)


def post_swapped_duplicate(engine, pair_id: int, votes_needed: int = 1) -> int:
    """Post pair `pair_id` again with its two images exchanged (kind "duplicate", duplicate_of set)."""
    from db import pairs

    p = _pair_images(engine, pair_id)
    if p["kind"] == "duplicate":
        raise LogError(f"pair {pair_id} is itself a duplicate; duplicate its original {p['duplicate_of']}")
    optional: dict[str, Any] = {k: p.get(k) for k in ("view", "question") if p.get(k) is not None}
    gold = p.get("gold_answer")
    return pairs.post_pair(engine, p["run_id"], p["step"], p["png_b"], p["png_a"], kind="duplicate",
                           duplicate_of=pair_id, seed_a=p.get("seed_b"), seed_b=p.get("seed_a"),
                           t=p["t"] if p["t_b"] is None else p["t_b"], t_b=None if p["t_b"] is None else p["t"],
                           votes_needed=votes_needed,
                           gold_answer=None if gold is None else {"a": "b", "b": "a"}.get(gold, gold), **optional)


def mix_in(engine, run_id: int, config: QCConfig = QCConfig(), rng: random.Random | None = None) -> list[int]:
    """After a live pair of `run_id` is posted: maybe a gold pair (a copy of a random existing gold
    pair) and maybe a swapped duplicate of a random earlier live pair of the run. Returns new pair ids."""
    from db import models

    rng = rng or random.Random()
    p = models.Pair.__table__
    posted = []
    if rng.random() < config.gold_rate:
        with engine.connect() as conn:
            gold_ids = conn.execute(sa.select(p.c.id).where(p.c.kind == "gold")).scalars().all()
        if gold_ids:
            g = _pair_images(engine, rng.choice(gold_ids))
            posted.append(post_gold_pair(engine, run_id, g["png_a"], g["png_b"], g["gold_answer"],
                                         votes_needed=config.votes_needed))
    if rng.random() < config.duplicate_rate:
        with engine.connect() as conn:
            live = conn.execute(sa.select(p.c.id).where(p.c.run_id == run_id, p.c.kind == "live")).scalars().all()
        if live:
            posted.append(post_swapped_duplicate(engine, rng.choice(live), votes_needed=config.votes_needed))
    return posted


def flag_annotators(frame: pd.DataFrame, rules: stats.FlagRules = stats.FlagRules()) -> pd.DataFrame:
    """The annotators an admin should look at, with the reasons (reliability, gold, duplicates, side)."""
    report = stats.annotator_report(frame, rules)
    if report.empty:
        return report
    return report[report["flagged"]]

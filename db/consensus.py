"""The one consensus rule of the log: how people's votes on a pair become its outcome.

The outcome with the most votes among a, b, tie and both_bad wins; all votes the same → 'unanimous',
else 'majority'; a draw between the top outcomes → winner 'tie', rule 'split'; both_bad on top →
winner 'tie', rule 'both_bad' (the run learns nothing from it). gap = |n_a − n_b| / n. The queue
writes decisions with it and db/stats.py labels pairs with it, so the two never disagree.
"""
from __future__ import annotations


def outcome(counts: dict[str, int]) -> tuple[str, str, float]:
    """(winner, rule, gap) from vote counts over a, b, tie, both_bad (the rule in the module doc)."""
    n = sum(counts.values())
    top = max(counts.values())
    leaders = [k for k, v in counts.items() if v == top]
    gap = abs(counts["a"] - counts["b"]) / n if n else 0.0
    if len(leaders) > 1:
        return "tie", "split", gap
    lead = leaders[0]
    rule = "unanimous" if top == n else "majority"
    if lead == "both_bad":
        return "tie", "both_bad", gap
    return lead, rule, gap


def label(counts: dict[str, int]) -> str:
    """The pair's consensus label in a | b | tie | both_bad (what statistics compare judges with)."""
    winner, rule, _gap = outcome(counts)
    return "both_bad" if rule == "both_bad" else winner

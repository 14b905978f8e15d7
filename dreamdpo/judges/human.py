"""People as the judge: post the pair to the preference log and wait for their decision."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HumanPolicy:
    votes_needed: int = 1  # k annotators per pair
    timeout_s: float = 300.0
    fallback: str = "model"  # model | pull | skip
    every_k: int = 1  # people judge every k-th step
    uncertain_below: float | None = None  # ask people only when the model judge's gap is below this
    audit_rate: float = 0.0  # fraction of model-judged pairs also sent to people, without waiting
    lease_seconds: float = 120.0
    question: str = "Which one matches the prompt better?"

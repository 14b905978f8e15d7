"""What people are asked to do, per run: a default that says what each answer does to the run, which
an admin may replace for a run (kept in the run's config in the log, key "instructions").
An admin's text comes from the log, so it is always shown as plain text."""
from __future__ import annotations

from db import runs

KEY = "instructions"
DEFAULT = """\
Each candidate shows the same object from several cameras; view 1 of the left candidate is taken from the same camera as view 1 of the right one.
Better means: closer to the prompt and the question, and a plausible, coherent 3D object in every view (no floating blobs, no view contradicting another).
Left better (←) / Right better (→): the run moves the object towards that candidate and away from the other.
Tie (T): both are equally good; the run learns no preference from this pair.
Both bad (B): neither fits the prompt; the run learns nothing from this pair, and the log keeps it apart from the votes.
Skip (S): you cannot tell (unsure, images unclear); the pair goes to someone else, or to the run's model judge when nobody else is online. "Can't judge?" beside it skips and lets you say why (optional).
Click a view (or press Z, or 1–9) to see that view of both candidates larger; Esc or a click on it goes back.
Judge quickly: a pair is yours for the time shown, then it goes back to the queue."""


def for_run(engine, run_id: int) -> str:
    config = (runs.get_run(engine, run_id) or {}).get("config")
    text = (config or {}).get(KEY) if isinstance(config, dict) else None
    return text if isinstance(text, str) and text.strip() else DEFAULT


def save(engine, run_id: int, text: str | None) -> None:
    """Set (or, with an empty text, reset to DEFAULT) the run's instructions."""
    runs.set_run_config(engine, run_id, KEY, text.strip() if text and text.strip() else None)

"""Text from the log shown as plain text inside Streamlit's markdown elements (captions, alerts).

Prefer st.text for a value on its own; where a value sits inside a sentence that Streamlit renders
as markdown, `md` escapes it so that a link, emphasis, HTML, `:red[...]` or `$math$` in a prompt,
a backbone or a judge name shows as the characters typed.
"""
from __future__ import annotations

import re

_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark; CommonMark lets each be escaped


def md(value) -> str:
    """`value` as markdown that renders to exactly its characters, on one line."""
    return _PUNCT.sub(r"\\\1", " ".join(str(value).split()))

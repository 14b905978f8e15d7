"""What a page shows when the log fails: a message, never a traceback.

- log unreachable (server restarting, file busy): a warning, and the page retries by itself;
- log file deleted or replaced: an error, and the page stops (votes would be lost);
- account deactivated: back to the sign-in form with a message;
- any other refusal of the log (LogError): its one line.
"""
from __future__ import annotations

import streamlit as st

from annotator.plain import md
from db.engine import is_transient
from db.errors import AccountInactive, LogError, LogGone

UNREACHABLE = "The log is unreachable, retrying… Votes already stored are safe."
DEACTIVATED = "Your account was deactivated; ask an admin to reactivate it."


def signed_out(message: str = DEACTIVATED) -> None:
    """Forget the token and show the sign-in form with `message`."""
    st.session_state.pop("token", None)
    st.session_state.pop("session_cookie", None)
    st.session_state["no_cookie"] = True  # the request's cookie names the same account
    st.session_state["login_error"] = message
    st.rerun(scope="app")


def show_failure(e: BaseException) -> bool:
    """Draw the message for a log failure; False when `e` is none (the caller re-raises it)."""
    if isinstance(e, AccountInactive):
        signed_out()
    if isinstance(e, LogGone):
        st.error(md(f"{e}. This page has stopped."))
        return True
    if is_transient(e):
        st.warning(UNREACHABLE)
        return True
    if isinstance(e, LogError):
        st.error(md(str(e)))
        return True
    return False

"""The annotator app: `dreamdpo annotate` runs `streamlit run annotator/app.py` with the log's URL in
$DREAMDPO_DB. No valid token or session cookie (annotator.session), no page: every rerun re-checks
it, so a deactivated account is locked out at its next click, and a reload keeps a person signed in.

Roles: annotators get Annotate and Runs; Audit, Arena, Export and Admin exist only in an admin's
navigation, so their URLs lead an annotator nowhere (each page checks the role again). A failing
log is a message (annotator.guard), and the app retries by itself while it is unreachable.
"""
from __future__ import annotations

import importlib
import os

import streamlit as st

from annotator import guard, session
from annotator.plain import md
from db import accounts
from db.engine import connect, is_transient, ping

RETRY_S = float(os.environ.get("DREAMDPO_RETRY_S", "2"))  # seconds between checks while the log is down
# less empty space above and between blocks, so a pair, its buttons and the prompt fit in 1366×768
COMPACT = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; padding-bottom: 1rem; }
[data-testid="stMainBlockContainer"] h2 { padding-top: 0; padding-bottom: 0.25rem; }
[data-testid="stMainBlockContainer"] [data-testid="stVerticalBlock"] { gap: 0.5rem; }
[data-testid="stImage"] img { image-rendering: pixelated; }
</style>"""
ADMIN_PAGES = (("audit_page", "Audit", "audit"), ("arena_page", "Arena", "arena"), ("export_page", "Export", "export"),
               ("admin_page", "Admin", "admin"))


@st.cache_resource(show_spinner=False)
def log_engine(url: str | None):
    return connect(url)


def login(engine) -> dict | None:
    """The signed-in person (token typed in this tab, or the session cookie), or None after drawing
    the login form."""
    ss = st.session_state
    token = ss.get("token")
    if token:
        user = accounts.authenticate(engine, token)
        if user is not None and user.get("active", True):
            return user
        ss.pop("token", None)
        ss["login_error"] = "Your token is no longer valid (deactivated?); ask an admin for a new one."
    elif not ss.get("no_cookie"):
        user = session.user_for(engine, ss.get("session_cookie") or session.cookie())
        if user is not None:
            return user
        ss.pop("session_cookie", None)
    st.title("DreamDPO annotator")
    with st.form("login"):
        typed = st.text_input("Token", type="password", help="from `dreamdpo annotators add NAME`")
        go = st.form_submit_button("Sign in")
    if go:
        user = accounts.authenticate(engine, typed.strip()) if typed.strip() else None
        if user is not None and user.get("active", True):
            ss["token"] = typed.strip()
            ss.pop("login_error", None)
            ss.pop("no_cookie", None)
            session.start(engine, user)
            st.rerun()
        ss["login_error"] = ("That token is not valid or its account is deactivated; "
                             "ask an admin for one (`dreamdpo annotators add NAME`).")
    if ss.get("login_error"):
        st.error(ss["login_error"])
    return None


def optional_page(module: str):
    """Pages written beside this app (audit, export) are wired in once their module exists."""
    try:
        return importlib.import_module(f"annotator.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"annotator.{module}":
            return None
        raise


def pages_for(user: dict) -> list[tuple[str, str, str]]:
    """(module, title, url path) of the pages this person may open."""
    pages = [("annotate_page", "Annotate", "annotate"), ("runs_page", "Runs", "runs")]
    if user["role"] == "admin":
        pages += list(ADMIN_PAGES)
    return pages


@st.fragment(run_every=RETRY_S)
def retry_when_back(url: str | None) -> None:
    """While the log is unreachable: check it every RETRY_S seconds, and rerun the app once it answers."""
    if not st.session_state.pop("retry_armed", False):  # the first call is part of the failed run itself
        st.session_state["retry_armed"] = True
        return
    st.session_state["retry_armed"] = True
    try:
        ping(log_engine(url))
    except Exception as e:  # noqa: BLE001 (a lasting failure, e.g. LogGone, is shown by the rerun below)
        if is_transient(e):
            return
    st.session_state.pop("retry_armed", None)
    st.rerun(scope="app")


def show(engine, user: dict) -> None:
    def page(module, title, path):
        mod = optional_page(module)
        return None if mod is None else st.Page(lambda: mod.render(engine, user), title=title, url_path=path,
                                                default=path == "annotate")

    nav = st.navigation([p for p in (page(*spec) for spec in pages_for(user)) if p is not None])
    with st.sidebar:
        st.caption(f"Signed in as {md(user['name'])} ({user['role']})")
        if st.button("Sign out"):
            session.end()
            st.rerun()
    nav.run()


def main() -> None:
    st.set_page_config(page_title="DreamDPO annotator", layout="wide")
    st.html(COMPACT)
    session.write_pending()
    url = os.environ.get("DREAMDPO_DB") or None
    try:
        engine = log_engine(url)
        user = login(engine)
        if user is not None:
            show(engine, user)
    except Exception as e:  # anything not a log failure is raised again
        if not guard.show_failure(e):
            raise
        if is_transient(e):
            retry_when_back(url)
        else:
            st.stop()


main()

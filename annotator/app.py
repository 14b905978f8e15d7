"""The annotator app: `dreamdpo annotate` runs `streamlit run annotator/app.py` with the log's URL in
$DREAMDPO_DB. No valid token, no page: every rerun re-checks the token, so a deactivated account
is locked out at its next click.

Roles: annotators get Annotate and Runs; Audit, Export and Admin exist only in an admin's
navigation, so their URLs lead an annotator nowhere (each page checks the role again). A failing
log is a message (annotator.guard), and the app retries by itself while it is unreachable.
"""
from __future__ import annotations

import importlib
import os

import streamlit as st

from annotator import guard
from annotator.plain import md
from db import accounts
from db.engine import connect, is_transient, ping

RETRY_S = float(os.environ.get("DREAMDPO_RETRY_S", "2"))  # seconds between checks while the log is down
ADMIN_PAGES = (("audit_page", "Audit", "audit"), ("export_page", "Export", "export"), ("admin_page", "Admin", "admin"))


@st.cache_resource(show_spinner=False)
def log_engine(url: str | None):
    return connect(url)


def login(engine) -> dict | None:
    """The signed-in person, or None after drawing the login form."""
    token = st.session_state.get("token")
    if token:
        user = accounts.authenticate(engine, token)
        if user is not None and user.get("active", True):
            return user
        st.session_state.pop("token", None)
        st.session_state["login_error"] = "Your token is no longer valid (deactivated?); ask an admin for a new one."
    st.title("DreamDPO annotator")
    with st.form("login"):
        typed = st.text_input("Token", type="password", help="from `dreamdpo annotators add NAME`")
        go = st.form_submit_button("Sign in")
    if go:
        user = accounts.authenticate(engine, typed.strip()) if typed.strip() else None
        if user is not None and user.get("active", True):
            st.session_state["token"] = typed.strip()
            st.session_state.pop("login_error", None)
            st.rerun()
        st.session_state["login_error"] = ("That token is not valid or its account is deactivated; "
                                           "ask an admin for one (`dreamdpo annotators add NAME`).")
    if st.session_state.get("login_error"):
        st.error(st.session_state["login_error"])
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
    except Exception as e:
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
            st.session_state.clear()
            st.rerun()
    nav.run()


def main() -> None:
    st.set_page_config(page_title="DreamDPO annotator", layout="wide")
    url = os.environ.get("DREAMDPO_DB") or None
    try:
        engine = log_engine(url)
        user = login(engine)
        if user is not None:
            show(engine, user)
    except Exception as e:
        if not guard.show_failure(e):
            raise
        if is_transient(e):
            retry_when_back(url)
        else:
            st.stop()


main()

"""The annotator app: `dreamdpo annotate` runs `streamlit run annotator/app.py` with the log's URL in
$DREAMDPO_DB. No valid token, no page: every rerun re-checks the token, so a deactivated account
is locked out at its next click."""
from __future__ import annotations

import importlib
import os

import streamlit as st

from db import accounts
from db.engine import connect


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


def main() -> None:
    st.set_page_config(page_title="DreamDPO annotator", layout="wide")
    engine = log_engine(os.environ.get("DREAMDPO_DB") or None)
    user = login(engine)
    if user is None:
        return
    from annotator import admin_page, annotate_page, runs_page

    def page(module, title, path, default=False):
        return st.Page(lambda: module.render(engine, user), title=title, url_path=path, default=default)

    pages = [page(annotate_page, "Annotate", "annotate", default=True), page(runs_page, "Runs", "runs")]
    for name, title, path in (("audit_page", "Audit", "audit"), ("export_page", "Export", "export")):
        mod = optional_page(name)
        if mod is not None:
            pages.append(page(mod, title, path))
    if user["role"] == "admin":
        pages.append(page(admin_page, "Admin", "admin"))
    nav = st.navigation(pages)
    with st.sidebar:
        st.caption(f"Signed in as {user['name']} ({user['role']})")
        if st.button("Sign out"):
            st.session_state.clear()
            st.rerun()
    nav.run()


main()

"""Admin page (admins only): annotators and their tokens (add, deactivate, reactivate), queue health."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from annotator.plain import md
from db import accounts, pairs, queue
from db.errors import LogError


def render(engine, user: dict) -> None:
    st.header("Admin")
    if user["role"] != "admin":
        st.error("This page is for admins only.")
        return
    st.subheader("Queue health")
    stats = queue.queue_stats(engine)
    c = st.columns(4)
    c[0].metric("Pending pairs", stats["pending"])
    c[1].metric("Live runs waiting", stats["live_runs_waiting"])
    c[2].metric("Expired leases", stats["expired_leases"])
    c[3].metric("Stale pairs (past deadline)", stats["stale_pairs"])
    if stats["stale_pairs"] and st.button("Expire stale pairs"):
        st.success(f"{pairs.expire_stale(engine)} pairs expired.")

    st.subheader("Annotators")
    with st.form("add"):
        name = st.text_input("New annotator's name")
        admin = st.checkbox("Admin")
        if st.form_submit_button("Create token"):
            try:
                token = accounts.add_annotator(engine, name.strip(), admin=admin)
                st.success(f"Token for {md(name.strip())} (shown once; hand it over privately):")
                st.code(token, language=None)
            except LogError as e:
                st.error(md(e))
    people = accounts.list_annotators(engine)
    if people:
        st.dataframe(pd.DataFrame(people), hide_index=True)
    active = [p["name"] for p in people if p.get("active") and p["name"] != user["name"]]
    if active:
        with st.form("deactivate"):
            who = st.selectbox("Deactivate", active)
            if st.form_submit_button("Deactivate"):
                accounts.deactivate(engine, who)
                st.success(f"{md(who)} can no longer sign in, vote, undo or skip.")
    inactive = [p["name"] for p in people if not p.get("active")]
    if inactive:
        with st.form("reactivate"):
            who = st.selectbox("Reactivate", inactive)
            if st.form_submit_button("Reactivate"):
                accounts.activate(engine, who)
                st.success(f"{md(who)} can sign in again with their old token.")

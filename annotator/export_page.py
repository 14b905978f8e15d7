"""Export page (admins only): build a Pick-a-Pic, TRL or JSONL export and download it as a zip.

People's votes only by default: a dataset of model-judge votes is asked for explicitly. The last
export stays in the session, so one download never clears the other download buttons."""
from __future__ import annotations

import tempfile
from pathlib import Path

from db import export
from db.errors import LogError

CAPTIONS = ["for image generators (DiffusionDPO, PickScore): decisive votes in train, ties in their own split",
            "for a vision-language judge (trl.DPOTrainer): answers First/Second; ties, both-bad, skips split off",
            "everything, comparisons.jsonl + PNG files"]


def render(engine, user: dict) -> None:
    import streamlit as st

    st.header("Export")
    try:
        export.require_admin(user)
    except LogError as e:
        st.error(f"Exports are for admins only: {e}.")
        return
    fmt = st.radio("Format", export.FORMATS, horizontal=True, captions=CAPTIONS)
    cols = st.columns(3)
    run = cols[0].number_input("Run id (0 = all)", min_value=0, value=0, step=1)
    since = cols[1].text_input("Since (YYYY-MM-DD, empty = all)", "")
    include_ties = cols[2].checkbox("Include ties (own split)", value=False)
    cols = st.columns(2)
    humans_only = cols[0].checkbox("People's votes", value=True)
    judges = cols[1].text_input("Model judges' votes (names, comma-separated; empty = none)", "")
    if st.button("Build export"):
        names = export.parse_judges(judges)
        if not humans_only and not names:
            st.error("Nothing selected: tick People's votes or name the judges whose votes to export.")
            return
        filters = export.ExportFilters(run_id=int(run) or None, since=since.strip() or None,
                                       include_ties=include_ties, humans_only=humans_only, judges=names)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "export"
            try:
                manifest = export.export_log(engine, fmt, out, filters, user=user)
            except LogError as e:
                st.error(str(e))
                return
            # kept in the session: a download reruns nothing (on_click="ignore"), and a rerun for any
            # other reason still shows every download of the last export
            st.session_state["export_built"] = {"fmt": fmt, "counts": manifest["counts"], "zip": export.zip_export(out),
                                                "manifest": (out / "manifest.json").read_bytes()}
    built = st.session_state.get("export_built")
    if built is None:
        st.caption("Nothing built yet: choose the format and filters, then Build export.")
        return
    st.caption(f"Last export built: {built['fmt']}")
    st.json(built["counts"])
    cols = st.columns(2)
    cols[0].download_button(f"Download {built['fmt']} export (zip)", built["zip"],
                            file_name=f"dreamdpo-{built['fmt']}.zip", mime="application/zip", on_click="ignore",
                            key="download-zip")
    cols[1].download_button("Download manifest.json", built["manifest"], file_name="manifest.json",
                            mime="application/json", on_click="ignore", key="download-manifest")

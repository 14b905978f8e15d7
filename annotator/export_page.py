"""Export page (admins only): build a Pick-a-Pic, TRL or JSONL export and download it as a zip."""
from __future__ import annotations

import tempfile
from pathlib import Path

from db import export
from db.errors import LogError


def render(engine, user: dict) -> None:
    import streamlit as st

    st.header("Export")
    try:
        export.require_admin(user)
    except LogError as e:
        st.error(f"Exports are for admins only: {e}.")
        return
    fmt = st.radio("Format", export.FORMATS, horizontal=True,
                   captions=["parquet, image bytes, ties 0.5/0.5", "prompt/chosen/rejected/images, ties split",
                             "comparisons.jsonl + PNG files"])
    cols = st.columns(3)
    run = cols[0].number_input("Run id (0 = all)", min_value=0, value=0, step=1)
    since = cols[1].text_input("Since (YYYY-MM-DD, empty = all)", "")
    include_ties = cols[2].checkbox("Include ties", value=False)
    if st.button("Build export"):
        filters = export.ExportFilters(run_id=int(run) or None, since=since.strip() or None, include_ties=include_ties)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "export"
            try:
                manifest = export.export_log(engine, fmt, out, filters, user=user)
            except LogError as e:
                st.error(str(e))
                return
            st.json(manifest["counts"])
            st.download_button(f"Download {fmt} export (zip)", export.zip_export(out),
                               file_name=f"dreamdpo-{fmt}.zip", mime="application/zip")
            st.download_button("Download manifest.json", (out / "manifest.json").read_bytes(),
                               file_name="manifest.json", mime="application/json")

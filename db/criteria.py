"""The criteria a comparison can be judged on, one place for every reader: GPTEval3D's six (the LMM
judge asks them, dreamdpo/judges/lmm.py; a person may answer them beside an arena vote, stored in
vote_criteria). Plain names only: no torch, no SQL, so db/ and dreamdpo/ both import it."""
from __future__ import annotations

# name → how a person is asked it beside an arena vote (the LMM judge's own wording is in lmm.py)
CRITERIA: dict[str, str] = {
    "text_asset_alignment": "Matches the prompt",
    "plausibility": "Plausible as a real 3D object",
    "text_geometry_alignment": "Shape matches the prompt",
    "texture_details": "Texture detail",
    "geometry_details": "Geometric detail",
    "overall": "Better overall",
}
CRITERION_NAMES: tuple[str, ...] = tuple(CRITERIA)

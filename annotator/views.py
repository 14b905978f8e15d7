"""A candidate as a person judges it: its views in a grid, each view enlarged by a whole factor
(nearest neighbour, so a 64-px render stays sharp instead of being smoothed by the browser), in
camera order, so the two candidates drawn side by side line up view by view."""
from __future__ import annotations

import io
import math

from PIL import Image

GAP = 4  # white pixels between views


def view_count(width: int, height: int) -> int:
    """The log stores a candidate as its square views side by side (dreamdpo.images.views_png)."""
    return width // height if height and width % height == 0 and width >= height else 1


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for n views: 4 → 2×2, 2 → 1×2, 1 → 1×1, 6 → 2×3."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def grid_png(strip: bytes, min_side: int) -> bytes:
    """The views of `strip` in a grid (GAP px apart), each scaled by the smallest whole factor that
    makes the grid at least `min_side` px on its longer side (1 if it already is)."""
    img = Image.open(io.BytesIO(strip)).convert("RGB")
    n = view_count(*img.size)
    side = img.height if n > 1 else max(img.size)
    rows, cols = grid_shape(n)
    factor = max(1, math.ceil(min_side / (max(rows, cols) * side)))
    if n == 1:
        grid = img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img
    else:
        big = side * factor
        grid = Image.new("RGB", (cols * big + (cols - 1) * GAP, rows * big + (rows - 1) * GAP), "white")
        for i in range(n):
            view = img.crop((i * side, 0, (i + 1) * side, side))
            if factor > 1:
                view = view.resize((big, big), Image.NEAREST)
            grid.paste(view, ((i % cols) * (big + GAP), (i // cols) * (big + GAP)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

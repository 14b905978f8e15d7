"""A candidate as a person judges it: its views in a grid, each view enlarged by a whole factor
(nearest neighbour, so a 64-px render stays sharp instead of being smoothed by the browser), in
camera order, so the two candidates drawn side by side line up view by view; and one view alone,
larger (the Annotate page's zoom shows the same view of both candidates this way)."""
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


def view_at(n: int, x: float, y: float) -> int:
    """The view under a click at (x, y), fractions of the grid image's width and height (grid_shape's
    layout, row by row); a click past the last view of a short row picks the last view."""
    rows, cols = grid_shape(max(1, n))
    col = min(cols - 1, max(0, int(x * cols)))
    row = min(rows - 1, max(0, int(y * rows)))
    return min(max(1, n) - 1, row * cols + col)


def view_png(strip: bytes, index: int, side: int) -> bytes:
    """View `index` of `strip` alone, `side` px square (nearest neighbour: the render's pixels stay sharp)."""
    img = Image.open(io.BytesIO(strip)).convert("RGB")
    n = view_count(*img.size)
    h, index = img.height, min(max(0, index), n - 1)
    view = img.crop((index * h, 0, (index + 1) * h, h)) if n > 1 else img
    view = view.resize((side, side * view.height // view.width), Image.NEAREST)
    buf = io.BytesIO()
    view.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


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

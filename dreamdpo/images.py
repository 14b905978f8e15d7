"""Image plumbing between tensors and the log: views tiled side by side, PNG bytes (never JPEG)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[V,3,H,W] or [3,H,W] in [0,1] → uint8 [V,H,W,3]."""
    if images.dim() == 3:
        images = images[None]
    arr = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (arr * 255.0 + 0.5).astype(np.uint8)


def tile_views(images: Tensor) -> np.ndarray:
    """[V,3,H,W] → one uint8 strip [H, V·W, 3], views left to right in camera order."""
    arr = to_uint8(images)
    return np.concatenate(list(arr), axis=1)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def views_png(images: Tensor) -> bytes:
    """The PNG the log stores for one candidate: its views tiled side by side."""
    return png_bytes(tile_views(images))

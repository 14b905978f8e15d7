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


def quantize(images: Tensor) -> Tensor:
    """The images exactly as the log stores them (8-bit), back in [0, 1]: a model that learns from
    logged PNGs sees the same pixels when it judges a live step."""
    return (images.detach().float().clamp(0, 1) * 255.0 + 0.5).floor() / 255.0


def images_from_png(png: bytes) -> Tensor:
    """Inverse of views_png: one PNG strip of square views → [V,3,H,W] in [0, 1]."""
    import torch

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h = arr.shape[0]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0  # [3,H,V·H]
    return x.reshape(3, h, -1, h).permute(2, 0, 1, 3).contiguous()


def pixel_distance(images_a: Tensor, images_b: Tensor) -> float:
    """How different two candidates look, in the log's image space: the mean absolute difference of
    their 8-bit pixels, in [0, 1] (0: the PNGs people would see are identical)."""
    a, b = to_uint8(images_a).astype(np.int16), to_uint8(images_b).astype(np.int16)
    return float(np.abs(a - b).mean() / 255.0)


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

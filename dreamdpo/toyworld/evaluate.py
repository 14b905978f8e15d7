"""The evaluator of the toy world: it is NOT the toy reward, and learns nothing.

For each view it separates the object(s) from the background (distance to the border's median
colour), finds the shape(s) whose analytic silhouettes from the SAME camera best match the
foreground (IoU; for two objects, every left/right shape pair), and names the colour of each
object's visible pixels by the nearest shading line {k·colour} of the named colours. From those
it says, per view, whether the colours, the shapes and (two objects) the colour–shape bindings
and the sides are right, and an alignment score in [0, 1] averaged over views.
"""
from __future__ import annotations

from collections import Counter
from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.toyworld.render import Placed, layout, render_geometry
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, parse_prompt

EVAL_RES = 64
FG_MIN = 0.12  # smallest colour distance from the background that can count as object
MIN_PIXELS = 6  # fewer visible pixels than this: the colour of that object is undetermined


def foreground(images: Tensor) -> Tensor:
    """[V,3,H,W] → bool [V,H,W]: pixels far from the median colour of the image border.

    The threshold is half the view's typical object contrast, so a pixel counts as object when
    about half of it is covered — the same rule as the analytic silhouettes (coverage > 0.5)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values  # [V,3]
    dist = (images - bg[:, :, None, None]).norm(dim=1)  # [V,H,W]
    out = torch.zeros_like(dist, dtype=torch.bool)
    for v in range(dist.shape[0]):
        strong = dist[v][dist[v] > FG_MIN]
        contrast = float(strong.median()) if strong.numel() else 1.0
        out[v] = dist[v] > max(FG_MIN, 0.5 * contrast)
    return out


def classify_colours(pixels: Tensor) -> tuple[str | None, float]:
    """Pixels [P,3] → the named colour most pixels are nearest to (by distance to its shading line)."""
    if pixels.shape[0] < MIN_PIXELS:
        return None, 0.0
    c = torch.tensor(list(COLOURS.values()))  # [K,3]
    k = ((pixels @ c.T) / (c * c).sum(-1)).clamp(0.25, 1.3)  # [P,K] best shading factor
    dist = (pixels[:, None] - k[..., None] * c[None]).norm(dim=-1)
    votes = Counter(dist.argmin(-1).tolist())
    idx, n = votes.most_common(1)[0]
    return list(COLOURS)[idx], n / pixels.shape[0]


def _iou(a: Tensor, b: Tensor) -> Tensor:
    inter = (a & b).flatten(1).sum(-1).float()
    union = (a | b).flatten(1).sum(-1).float().clamp(min=1)
    return inter / union


def _erode(mask: Tensor) -> Tensor:
    return -F.max_pool2d(-mask[:, None].float(), 3, 1, 1)[:, 0] > 0.5


_SILHOUETTE_CACHE: dict[tuple, Tensor] = {}


def _silhouettes(objects: list[Placed], cams: Cameras) -> Tensor:
    """bool [len(objects), V, H, W]: coverage > 0.5 of each placed object alone (cached per cameras:
    evaluations reuse the same test cameras)."""
    key = (tuple(objects), tuple(torch.cat([cams.elevation, cams.azimuth, cams.distance, cams.fovy]).tolist()))
    if key not in _SILHOUETTE_CACHE:
        if len(_SILHOUETTE_CACHE) > 64:
            _SILHOUETTE_CACHE.clear()
        _SILHOUETTE_CACHE[key] = torch.stack(
            [render_geometry((o,), cams, EVAL_RES, EVAL_RES, 2).coverage[:, 0] > 0.5 for o in objects])
    return _SILHOUETTE_CACHE[key]


def evaluate_views(images: Tensor, cameras: Cameras, prompt: str) -> dict:
    """Alignment of views [V,3,H,W] (in [0,1], taken from `cameras`) with a toy-world prompt."""
    scene = parse_prompt(prompt)
    imgs = images.detach().float().cpu().clamp(0, 1)
    if imgs.shape[-1] != EVAL_RES:
        imgs = F.interpolate(imgs, size=(EVAL_RES, EVAL_RES), mode="area")
    cams = cameras.to("cpu")
    V = imgs.shape[0]
    fg = foreground(imgs)
    core = _erode(fg)
    pix = imgs.permute(0, 2, 3, 1)
    want = scene.by_side()
    rows = []
    if len(want) == 1:
        sil = _silhouettes([Placed(s) for s in SHAPES], cams)  # [5,V,H,W]
        iou = torch.stack([_iou(sil[i], fg) for i in range(len(SHAPES))])  # [5,V]
        for v in range(V):
            shape = SHAPES[int(iou[:, v].argmax())]
            colour, _ = classify_colours(pix[v][core[v]] if core[v].sum() >= MIN_PIXELS else pix[v][fg[v]])
            ok_c = want[0].colour is None or colour == want[0].colour
            ok_s = shape == want[0].shape
            rows.append({"objects": [(colour, shape)], "iou": float(iou[:, v].max()), "colour": ok_c,
                         "shape": ok_s, "binding": ok_c and ok_s, "position": None})
    else:
        left = _silhouettes([layout((s, s))[0] for s in SHAPES], cams)
        right = _silhouettes([layout((s, s))[1] for s in SHAPES], cams)
        pairs = list(product(range(len(SHAPES)), repeat=2))
        iou = torch.stack([_iou(left[a] | right[b], fg) for a, b in pairs])  # [25,V]
        for v in range(V):
            a, b = pairs[int(iou[:, v].argmax())]
            only_l = core[v] & left[a, v] & ~right[b, v]
            only_r = core[v] & right[b, v] & ~left[a, v]
            cl, _ = classify_colours(pix[v][only_l])
            cr, _ = classify_colours(pix[v][only_r])
            got = [(cl, SHAPES[a]), (cr, SHAPES[b])]
            ok_c = _colours_match(want, got)
            ok_s = sorted(o.shape for o in want) == sorted(g[1] for g in got)
            ok_b = _bindings_match(want, got)
            ok_p = None
            if scene.relation != "and":
                ok_p = all((o.colour is None or o.colour == g[0]) and o.shape == g[1] for o, g in zip(want, got))
            rows.append({"objects": got, "iou": float(iou[:, v].max()), "colour": ok_c, "shape": ok_s,
                         "binding": ok_b, "position": ok_p})
    return _summary(prompt, scene, rows, fg)


def _colours_match(want, got) -> bool:
    named = [o.colour for o in want if o.colour]
    have = Counter(g[0] for g in got)
    return all(have[c] >= n for c, n in Counter(named).items())


def _bindings_match(want, got) -> bool:
    """Both named objects are present with their own colour, on either side."""
    for perm in (got, got[::-1]):
        if all((o.colour is None or o.colour == g[0]) and o.shape == g[1] for o, g in zip(want, perm)):
            return True
    return False


def _summary(prompt: str, scene, rows: list[dict], fg: Tensor) -> dict:
    two = len(scene.objects) == 2
    checks = ["colour", "shape"] + (["binding"] if two else []) + (["position"] if two and scene.relation != "and" else [])
    per_view = [sum(float(r[c]) for c in checks) / len(checks) for r in rows]
    predicted = Counter(" + ".join(f"{c or '?'} {s}" for c, s in r["objects"]) for r in rows).most_common(1)[0][0]
    out = {
        "prompt": prompt,
        "views": len(rows),
        "alignment": sum(per_view) / len(rows),
        "colour_correct": sum(r["colour"] for r in rows) / len(rows),
        "shape_correct": sum(r["shape"] for r in rows) / len(rows),
        "binding_correct": sum(r["binding"] for r in rows) / len(rows),
        "position_correct": (sum(bool(r["position"]) for r in rows) / len(rows)) if "position" in checks else None,
        "mean_iou": sum(r["iou"] for r in rows) / len(rows),
        "foreground": float(fg.float().mean()),
        "predicted": predicted,
        "per_view": per_view,
    }
    return out

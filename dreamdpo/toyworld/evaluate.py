"""The evaluator of the toy world: it is NOT the toy reward, and learns nothing.

For each view it separates the object(s) from the background (distance to the border's median
colour), finds the shape(s) whose analytic silhouettes from the SAME camera best match the
foreground (IoU; for two objects, every left/right shape pair), and names the colour of each
object's visible pixels by the nearest shading line {k·colour} of the named colours. From those
it says, per view, whether the colours, the shapes and (two objects) the colour–shape bindings
and the sides are right, and an alignment score in [0, 1] averaged over views. Beside alignment it
measures how crisp the views are against the analytic render of the intended scene (scene_iou,
edge_sharpness): a finished object should be at least as crisp as the candidates that were judged.
"""
from __future__ import annotations

from collections import Counter
from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.toyworld.render import (
    GeometryMaps,
    Placed,
    colour_tensor,
    colourize,
    layout,
    render_geometry,
    scene_layout,
)
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, parse_prompt

EVAL_RES = 64
FG_MIN = 0.12  # smallest colour distance from the background that can count as object
MIN_PIXELS = 6  # fewer visible pixels than this: the colour of that object is undetermined


def _contrast_map(images: Tensor) -> tuple[Tensor, Tensor]:
    """[V,3,H,W] → (distance of each pixel from the median colour of the image border [V,H,W],
    the view's typical object contrast [V]: the median distance of the pixels above FG_MIN)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values  # [V,3]
    dist = (images - bg[:, :, None, None]).norm(dim=1)  # [V,H,W]
    contrast = torch.ones(dist.shape[0])
    for v in range(dist.shape[0]):
        strong = dist[v][dist[v] > FG_MIN]
        if strong.numel():
            contrast[v] = strong.median()
    return dist, contrast


def foreground(images: Tensor) -> Tensor:
    """[V,3,H,W] → bool [V,H,W]: pixels far from the median colour of the image border.

    The threshold is half the view's typical object contrast, so a pixel counts as object when
    about half of it is covered — the same rule as the analytic silhouettes (coverage > 0.5)."""
    dist, contrast = _contrast_map(images)
    return dist > (0.5 * contrast).clamp(min=FG_MIN)[:, None, None]


def edge_sharpness(images: Tensor) -> Tensor:
    """[V,3,H,W] → [V]: how steep each view's outline is, in object contrast per pixel (0 = no outline).

    The gradient (central differences) of the contrast map, as a fraction of the view's contrast, averaged
    over the outline pixels of the foreground. A blur of w pixels lowers it ≈ w-fold, a faint halo too;
    compare images at the same resolution (evaluate_views compares with the analytic render)."""
    dist, contrast = _contrast_map(images)
    d = dist / contrast[:, None, None]
    gy, gx = torch.gradient(d, dim=(1, 2))
    fg = dist > (0.5 * contrast).clamp(min=FG_MIN)[:, None, None]
    outline = (fg & ~_erode(fg)).float()
    return ((gx.square() + gy.square()).sqrt() * outline).flatten(1).sum(-1) / outline.flatten(1).sum(-1).clamp(min=1)


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


_GEOMETRY_CACHE: dict[tuple, GeometryMaps] = {}


def _geometry(objects: tuple[Placed, ...], cams: Cameras) -> GeometryMaps:
    """Analytic coverage and shading of the placed objects at EVAL_RES (cached per cameras: evaluations
    reuse the same test cameras)."""
    key = (objects, tuple(torch.cat([cams.elevation, cams.azimuth, cams.distance, cams.fovy]).tolist()))
    if key not in _GEOMETRY_CACHE:
        if len(_GEOMETRY_CACHE) > 64:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = render_geometry(objects, cams, EVAL_RES, EVAL_RES, 2)
    return _GEOMETRY_CACHE[key]


def _silhouettes(objects: list[Placed], cams: Cameras) -> Tensor:
    """bool [len(objects), V, H, W]: coverage > 0.5 of each placed object alone."""
    return torch.stack([_geometry((o,), cams).coverage[:, 0] > 0.5 for o in objects])


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
    out = _summary(prompt, scene, rows, fg)
    out.update(finish_quality(imgs, cams, scene, fg))
    return out


def finish_quality(imgs: Tensor, cams: Cameras, scene, fg: Tensor) -> dict:
    """How close views at EVAL_RES come to the analytic render of the intended scene from the same cameras:
    scene_iou (silhouette IoU with the intended objects, all of them together) and edge_sharpness (outline
    steepness as a fraction of the analytic render's: 1 = as crisp as the truth, 0.5 ≈ edges twice as wide)."""
    maps = _geometry(scene_layout(scene), cams)
    intended = maps.coverage.sum(1) > 0.5
    reference = edge_sharpness(colourize(maps, colour_tensor([o.colour or "red" for o in scene.by_side()])))
    return {"scene_iou": float(_iou(intended, fg).mean()),
            "edge_sharpness": float(edge_sharpness(imgs).mean() / reference.mean().clamp(min=1e-6))}


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
    checks = ["colour", "shape"] + (["binding"] if two else [])
    checks += ["position"] if two and scene.relation != "and" else []
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

"""Value checks of a RunConfig, run when it is loaded: ranges, NaN and infinities, zero where a
count or a size must be positive, texts the log cannot store. Each failure is one UserError that
names the key and says what is allowed; a long value (a 1 MB prompt) is never echoed.

A field missing here (added later) is still checked for NaN by the walk over every float.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from dreamdpo.errors import UserError

MAX_PROMPT = 2000  # characters; CLIP-style text encoders read 77 tokens, the log stores the rest for nothing
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")
INFINITE_OK = {"human.timeout_s", "human.lease_seconds"}  # "wait forever" is a meaningful setting


def _get(cfg, key: str, missing=dataclasses.MISSING):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part, missing)
        if obj is missing:
            return missing
    return obj


def _positive_int(v) -> bool:
    return isinstance(v, int) and v >= 1


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# key → (test, what is allowed)
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("preview_every", _positive_int, "a whole number ≥ 1"),
    ("test_views", _positive_int, "a whole number ≥ 1"),
    ("test_resolution", lambda v: isinstance(v, int) and 8 <= v <= 4096, "a whole number from 8 to 4096"),
    ("mesh_resolution", lambda v: isinstance(v, int) and 8 <= v <= 1024, "a whole number from 8 to 1024"),
    ("export.mesh_threshold", lambda v: v is None or (_finite(v) and v > 0),
     "empty (chosen automatically) or a density > 0"),
    ("prior_resolution", lambda v: v is None or (isinstance(v, int) and 8 <= v <= 4096),
     "empty or a whole number from 8 to 4096"),
    ("guidance_scale", lambda v: _finite(v) and v >= 0, "a finite number ≥ 0"),
    ("toy_binding", lambda v: _finite(v) and 0 <= v <= 1, "a share of the guidance in [0, 1]"),
    ("seed", lambda v: isinstance(v, int) and 0 <= v < 2**63, "a whole number from 0 to 2^63-1"),
    ("schedule.resolution", lambda v: isinstance(v, int) and 8 <= v <= 4096, "a whole number from 8 to 4096"),
    ("schedule.resolution_milestones", lambda v: all(s >= 0 and 8 <= r <= 4096 for s, r in v),
     "a list of [step ≥ 0, resolution from 8 to 4096]"),
    ("schedule.t_anneal_steps", lambda v: isinstance(v, int) and v >= 1, "a whole number ≥ 1"),
    ("schedule.t_start", lambda v: all(0 <= x <= 1 for x in v) and v[0] <= v[1], "[low, high] within 0..1"),
    ("schedule.t_end", lambda v: all(0 <= x <= 1 for x in v) and v[0] <= v[1], "[low, high] within 0..1"),
    ("schedule.orientation_weights", lambda v: all(x >= 0 for x in v), "two numbers ≥ 0"),
    ("schedule.sparsity_weight", lambda v: v >= 0, "a number ≥ 0"),
    ("optim.lr_grid", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("optim.lr_mlp", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("optim.eps", lambda v: v > 0, "a number > 0"),
    ("optim.weight_decay", lambda v: v >= 0, "a number ≥ 0"),
    ("render.n_samples", _positive_int, "a whole number ≥ 1"),
    ("render.max_samples", _positive_int, "a whole number ≥ 1"),
    ("render.grid_resolution", _positive_int, "a whole number ≥ 1"),
    ("render.occ_every", _positive_int, "a whole number ≥ 1"),
    ("render.chunk_rays", _positive_int, "a whole number ≥ 1"),
    ("render.occ_threshold", lambda v: v >= 0, "a number ≥ 0"),
    ("field.n_levels", _positive_int, "a whole number ≥ 1"),
    ("field.n_features", _positive_int, "a whole number ≥ 1"),
    ("field.log2_hashmap_size", lambda v: isinstance(v, int) and 4 <= v <= 30, "a whole number from 4 to 30"),
    ("field.base_resolution", _positive_int, "a whole number ≥ 1"),
    ("field.hidden", _positive_int, "a whole number ≥ 1"),
    ("field.bound", lambda v: v > 0, "a number > 0"),
    ("field.blob_radius", lambda v: v > 0, "a number > 0"),
    ("camera.n_views", _positive_int, "a whole number ≥ 1"),
    ("camera.fovy_range", lambda v: 0 < v[0] <= v[1] < 180, "[low, high] within (0, 180) degrees"),
    ("camera.elevation_range", lambda v: v[0] <= v[1], "[low, high] with low ≤ high"),
    ("camera.azimuth_range", lambda v: v[0] <= v[1], "[low, high] with low ≤ high"),
    ("camera.relative_radius_range", lambda v: 0 < v[0] <= v[1], "[low, high] with 0 < low ≤ high"),
    ("dpo.tau", lambda v: _finite(v) and v >= 0, "a finite number ≥ 0"),
    ("human.votes_needed", _positive_int, "a whole number ≥ 1"),
    ("human.every_k", _positive_int, "a whole number ≥ 1"),
    ("human.timeout_s", lambda v: v > 0, "a number of seconds > 0"),
    ("human.lease_seconds", lambda v: v > 0, "a number of seconds > 0"),
    ("human.audit_rate", lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    ("human.gold_rate", lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    ("human.duplicate_rate", lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    ("human.uncertain_below", lambda v: v is None or v >= 0, "empty or a number ≥ 0"),
]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _walk(obj, prefix: str = ""):
    """(dotted key, value) of every leaf of a config dataclass."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _numbers(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


def check_texts(cfg) -> None:
    for key in ("prompt", "negative_prompt", "backbone", "human.question"):
        text = _get(cfg, key)
        if not isinstance(text, str):
            continue
        if "\x00" in text:
            raise UserError(f"{key} contains a NUL character (\\0), which the log cannot store; remove it")
        if len(text) > MAX_PROMPT:
            raise UserError(f"{key} is {len(text)} characters long; the limit is {MAX_PROMPT}")
    device = _get(cfg, "device")
    if isinstance(device, str) and not DEVICE.match(device):
        raise UserError(f"device {_shown(device)} is not a device; use auto, cpu, cuda, cuda:N or mps")


def check_values(cfg) -> None:
    """Raise one UserError for the first value out of range (see module docstring)."""
    check_texts(cfg)
    for key, value in _walk(cfg):
        for x in _numbers(value):
            if math.isnan(x) or (math.isinf(x) and key not in INFINITE_OK):
                raise UserError(f"{key} is {x}; give a finite number")
    for key, ok, allowed in RULES:
        value = _get(cfg, key)
        if value is dataclasses.MISSING:
            continue
        try:
            good = bool(ok(value))
        except (TypeError, ValueError, IndexError):
            good = False
        if not good:
            raise UserError(f"{key} must be {allowed}, got {_shown(value)}")

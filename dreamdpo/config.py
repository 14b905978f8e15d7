"""Typed run configuration: dataclasses, a YAML file, and dotted `key=value` overrides.

Precedence (lowest first): dataclass defaults (the paper's reference values, docs/method.md) →
the backbone's defaults (the toy world's CPU-sized settings when backbone == "toy") →
`--config run.yaml` → command-line flags → `key=value` overrides.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dreamdpo.cameras import CameraConfig
from dreamdpo.errors import UserError
from dreamdpo.field import FieldConfig
from dreamdpo.judges import check_spec as check_judge_spec
from dreamdpo.judges import slug as judge_slug
from dreamdpo.judges.human import HumanPolicy
from dreamdpo.judges.lmm import LMMConfig
from dreamdpo.losses import DPOConfig
from dreamdpo.render import RenderConfig


@dataclass
class ScheduleConfig:
    # timestep range as fractions of the prior's training steps, annealed linearly (docs/method.md, "Defaults and why")
    t_start: tuple[float, float] = (0.98, 0.98)
    t_end: tuple[float, float] = (0.02, 0.50)
    t_anneal_steps: int = 8000
    resolution: int = 64
    # (step, resolution): renders switch to `resolution` at `step`
    resolution_milestones: list[tuple[int, int]] = dataclasses.field(default_factory=lambda: [(5000, 256)])
    orientation_weights: tuple[float, float] = (10.0, 1000.0)
    orientation_ramp: tuple[int, int] = (0, 5000)
    sparsity_weight: float = 0.0


@dataclass
class OptimConfig:
    lr_grid: float = 1e-2
    lr_mlp: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 0.0


@dataclass
class ExportConfig:
    # density level of the mesh surface; None = chosen from the grid's opacity histogram
    # (dreamdpo.export.auto_threshold, docs/method.md "The finished object")
    mesh_threshold: float | None = None


@dataclass
class RunConfig:
    prompt: str = "a red cube"
    negative_prompt: str = ""
    backbone: str = "toy"  # "toy" or a diffusers Stable-Diffusion-style model id / local path
    judge: str = "toy-reward"  # a judge spec (dreamdpo.judges: JUDGE_HELP); "none" = SDS
    judge_weights: str | None = None  # local weights for imagereward / hpsv2
    # with judge == "human": the model judge working beside people (fallback on timeout, the steps
    # people skip by cadence, audit sampling); "none" = people only
    assist_judge: str = "toy-reward"
    # cost guard: after this many model calls the judge hands over to assist_judge (None = no limit)
    judge_max_calls: int | None = None
    lmm: LMMConfig = dataclasses.field(default_factory=LMMConfig)  # how an lmm / lmm-api judge asks
    steps: int = 10000
    seed: int = 0
    out: str | None = None  # default outputs/<run-name>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    guidance_scale: float = 7.5
    # toy prior only: the share of guidance given to bound phrases ("red cube": images with a red cube) instead
    # of single words ("red", "cube"); 0 = a bag of words, which never binds a colour to a shape (docs/method.md)
    toy_binding: float = 0.0
    prior_resolution: int | None = None  # size renders are resized to for the prior (None = its native size)
    view_dependent_prompts: bool = False
    background: str = "envmap"  # envmap (neural, random solid-colour augmentation) | solid (white)
    batch_size: int | None = None  # renders per step; a multiple of the prior's views (None = one group)
    checkpoint_every: int = 500
    log_outage_s: float = 300.0  # how long the run retries an unreachable log (with back-off) before it stops
    preview_every: int = 10
    test_views: int = 40
    test_resolution: int = 128
    export_mesh: bool = True
    mesh_resolution: int = 128
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    human: HumanPolicy = dataclasses.field(default_factory=HumanPolicy)

    def to_dict(self) -> dict:
        """Plain data (tuples as lists), so the config round-trips through YAML and JSON."""
        return plain(asdict(self))

    @property
    def out_dir(self) -> Path:
        """The run's folder: --out, or outputs/<run-name>."""
        return Path(self.out) if self.out else Path("outputs") / self.run_name()

    def fingerprint(self) -> str:
        """What makes a run the same run on --resume: its prompt, prior, judge, seed and folder."""
        import hashlib
        import json

        ident = [self.prompt, self.backbone, self.judge, self.seed, str(self.out_dir.resolve())]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def run_name(self) -> str:
        words = "".join(c if c.isalnum() else "-" for c in self.prompt.lower()).strip("-")
        words = "-".join(w for w in words.split("-") if w)[:40]
        return f"{words}-{judge_slug(self.judge)}-s{self.seed}"


def plain(obj):
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def backbone_defaults(backbone: str) -> dict:
    if backbone == "toy":
        from dreamdpo.toyworld import toy_defaults

        return toy_defaults()
    return {}


# ---------- building a config from nested dicts and dotted overrides ----------

def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping of fields of {tp.__name__}")
        return _from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"config key '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"config key '{key}' needs {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        item = args[0] if args else Any
        return origin(_coerce(item, v, key) for v in value)
    if tp in (int, float, str, bool):
        if tp is bool and not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        if tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, tp):
            raise UserError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
        return value
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{sorted(unknown)[0]}'; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """["dpo.tau=0.01", "steps=200"] → {"dpo": {"tau": 0.01}, "steps": 200} (values parsed as YAML)."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (example: dpo.tau=0.01)")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:  # a tag (!!python/...), an unclosed bracket
            raise UserError(f"override '{key.strip()[:80]}' has a value that is not plain YAML "
                            f"({str(e).splitlines()[0]}); write numbers, words, true/false or [a, b]") from None
    return tree


def load_config(
    yaml_path: str | Path | None = None, flags: dict | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Resolve a RunConfig from every layer (see module docstring) and validate it."""
    layers: dict = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"config file {yaml_path} does not exist") from None
        except IsADirectoryError:
            raise UserError(f"--config {yaml_path} is a directory; give a YAML file") from None
        except UnicodeDecodeError:
            raise UserError(f"--config {yaml_path} is not a text file; give a YAML file") from None
        except OSError as e:
            raise UserError(f"cannot read --config {yaml_path} ({e.strerror}); give a readable YAML file") from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {yaml_path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {yaml_path} must hold a mapping of keys")
        layers = _merge(layers, loaded)
    layers = _merge(layers, {k: v for k, v in (flags or {}).items() if v is not None})
    layers = _merge(layers, parse_overrides(overrides or []))
    backbone = layers.get("backbone", RunConfig.backbone)
    merged = _merge(backbone_defaults(backbone), layers)
    cfg = _from_dict(RunConfig, merged)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> RunConfig:
    """A full config stored as plain data (RunConfig.to_dict: a queued run's row), validated again."""
    if not isinstance(data, dict):
        raise UserError("a run's stored config must be a mapping of keys")
    cfg = _from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    if not cfg.prompt.strip():
        raise UserError("the prompt is empty; pass --prompt \"a red cube\" (or any description)")
    check_judge_spec(cfg.judge)
    check_judge_spec(cfg.assist_judge, "assist_judge", allow_human=False)
    cfg.lmm.check()
    if cfg.judge_max_calls is not None and cfg.judge_max_calls < 1:
        raise UserError(f"judge_max_calls must be ≥ 1 (or null for no limit), got {cfg.judge_max_calls}")
    if cfg.background not in ("envmap", "solid"):
        raise UserError(f"background must be 'envmap' or 'solid', got '{cfg.background}'")
    if cfg.steps < 1:
        raise UserError(f"steps must be ≥ 1, got {cfg.steps}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise UserError(f"batch_size must be ≥ 1, got {cfg.batch_size}")
    if cfg.checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be ≥ 1, got {cfg.checkpoint_every}")
    if not cfg.log_outage_s > 0:
        raise UserError(f"log_outage_s must be > 0 seconds, got {cfg.log_outage_s}")
    from dreamdpo.config_checks import check_values

    check_values(cfg)  # ranges, NaN, zero sizes, texts the log cannot store

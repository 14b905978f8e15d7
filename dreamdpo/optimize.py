"""The DreamDPO loop, top to bottom: cameras → render → pair → judge → gradient → AdamW step.

docs/method.md is the maths. Every random draw of step k (cameras, background, timesteps, both
noises) comes from generators seeded by (seed, k), so `--resume` continues bit-for-bit and every
logged pair can be regenerated from its seeds. `--judge none` is SDS, the baseline.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from dreamdpo import losses
from dreamdpo.cameras import Cameras, orbit_cameras, random_cameras
from dreamdpo.config import RunConfig
from dreamdpo.errors import UserError
from dreamdpo.field import EnvMapBackground, NeRFField, SolidBackground
from dreamdpo.images import pixel_distance, png_bytes
from dreamdpo.judges.base import Judge, JudgeContext, Judgement, LateDecision
from dreamdpo.priors.base import DiffusionPrior
from dreamdpo.recording import Recorder
from dreamdpo.render import Renderer
from dreamdpo.seeding import Stream, generator, step_seed


@dataclass
class RunResult:
    out_dir: Path
    status: str  # finished | cancelled
    steps_done: int
    metrics: list[dict] = field(default_factory=list)
    test_views: torch.Tensor | None = None  # [N,3,H,W] turntable frames in [0,1]
    test_cameras: Cameras | None = None
    outputs: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def resolution_at(cfg: RunConfig, step: int) -> int:
    res = cfg.schedule.resolution
    for milestone, r in sorted(cfg.schedule.resolution_milestones):
        if step >= milestone:
            res = r
    return res


def build_scene(cfg: RunConfig, device: torch.device) -> tuple[NeRFField, torch.nn.Module, Renderer]:
    nerf = NeRFField(cfg.field).to(device)
    background = (EnvMapBackground() if cfg.background == "envmap" else SolidBackground()).to(device)
    return nerf, background, Renderer(nerf, background, cfg.render).to(device)


def load_prior(cfg: RunConfig, device: torch.device) -> DiffusionPrior:
    """'toy' → the embedded prior; 'mvdream' or 'mvdream:CHECKPOINT' → MVDream (4 views, SD 2.1-base
    around it); anything else → a diffusers Stable-Diffusion-style model id or local folder. Renders are
    resized to the model's native resolution (512 for SD 2.1-base, 256 for MVDream), as threestudio does."""
    if cfg.backbone == "toy":
        from dreamdpo.toyworld.prior import ToyPrior

        return ToyPrior.build(device=device, binding=cfg.toy_binding)
    if cfg.backbone == "mvdream" or cfg.backbone.startswith("mvdream:"):
        from dreamdpo.priors.mvdream import MVDreamPrior

        checkpoint = cfg.backbone.partition(":")[2] or None
        return MVDreamPrior.from_pretrained(checkpoint, device=device, resolution=cfg.prior_resolution,
                                            view_dependent_prompts=cfg.view_dependent_prompts)
    from dreamdpo.priors.stable_diffusion import StableDiffusionPrior

    return StableDiffusionPrior.from_pretrained(
        cfg.backbone, device=device, resolution=cfg.prior_resolution,
        view_dependent_prompts=cfg.view_dependent_prompts,
    )


def load_model_judge(name: str, device: torch.device, weights: str | None = None, **options) -> Judge | None:
    """A model judge from its spec (dreamdpo.judges.load: names, ensembles, the cost guard); 'none' → None
    (SDS). The human judge is built by the CLI (it needs the log)."""
    from dreamdpo import judges

    return judges.load(name, device, weights, **options)


def load_run_judge(cfg: RunConfig, device: torch.device) -> Judge | None:
    """The run's model judge with its settings: LMM questions, judge_max_calls, assist_judge as fallback."""
    return load_model_judge(cfg.judge, device, cfg.judge_weights, lmm=cfg.lmm, max_calls=cfg.judge_max_calls,
                            fallback=cfg.assist_judge)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, step: int, renderer, optimizer, cfg: RunConfig, judge: Judge | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "renderer": renderer.state_dict(),  # includes field and background parameters
        "optimizer": optimizer.state_dict(),
        "judge": judge.state_dict() if judge is not None else {},  # what the judge learned (people's taste)
        "config": cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no .tmp behind


def load_checkpoint(path: Path, renderer, optimizer, device, judge: Judge | None = None,
                    prompt: str | None = None) -> int:
    if not path.exists():
        raise UserError(f"no checkpoint to resume from at {path}; run without --resume to start fresh")
    state = _read_checkpoint(path, device)
    was = (state.get("config") or {}).get("prompt")
    if prompt is not None and was is not None and was != prompt:
        raise UserError(f"{path.parent.parent} holds a run of the prompt {was[:80]!r}; resume it with that prompt, "
                        "or pass another --out for a new run")
    try:
        renderer.load_state_dict(state["renderer"])
        optimizer.load_state_dict(state["optimizer"])
        if judge is not None:
            judge.load_state_dict(state.get("judge") or {})
        return int(state["step"])
    except Exception as e:  # torch raises many types for a damaged file
        raise _damaged(path, e) from None


def _read_checkpoint(path: Path, device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise _damaged(path, e) from None


def _damaged(path: Path, e: Exception) -> UserError:
    return UserError(f"checkpoint {path} is damaged or from another configuration ({type(e).__name__}); "
                     "delete it or resume from an earlier one")


# ---------------------------------------------------------------- the gradient of one step


@dataclass
class Candidates:
    """Both pair members of one step for the whole batch (one prior call per draw)."""

    t: torch.Tensor  # [2, B] integer timesteps of members a, b
    noise: torch.Tensor  # [2, B, ...]
    eps_cfg: torch.Tensor  # [2, B, ...]
    eps_cond: torch.Tensor  # [2, B, ...]
    images: torch.Tensor  # [2, B, 3, H, W] decoded one-step estimates x̂0 (what judges see)
    seeds: tuple[int, int] = (0, 0)  # the noise seeds of members a, b (logged; regenerate the pair)
    distance: list[float] = field(default_factory=list)  # per camera group, in the log's pixel space
    draws: int = 1  # 1 + the redraws an indistinct pair needed
    anchor: Candidates | None = None  # a redrawn pair's first draw, whose pull (at the step's own t) the step keeps


def make_candidates(
    prior: DiffusionPrior, z: torch.Tensor, cams: Cameras, cond, cfg: RunConfig, step: int, two: bool,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Candidates:
    """Noise the latent with dpo.candidates noises at one t (or, variant 'timestep', one noise at t1 ≠ t2)
    and run ONE batched prior call for all of them; with more than two, the pair kept is the two
    candidates that look most different (the most informative pair for any judge), or, given `score`
    (images [M,3,H,W] → [M]; dpo.pick='best_worst'), the best against the worst by mean score over the
    views (RewardSDS). With two=False (SDS) member b is a copy of a.

    A pair whose candidates a person could not tell apart (any camera group closer than
    dpo.min_distance) is drawn again with fresh noises at a higher t, up to dpo.redraws times: at low t
    the prior's posterior is so narrow that every noise gives the same x̂0."""
    T = prior.num_train_timesteps
    timestep_variant = two and cfg.dpo.variant == "timestep"
    t_a, t_b = losses.sample_timesteps(
        step, T, t_start=cfg.schedule.t_start, t_end=cfg.schedule.t_end,
        anneal_steps=cfg.schedule.t_anneal_steps, distinct=timestep_variant,
        generator=generator(cfg.seed, step, Stream.TIMESTEP),
    )
    top = min(T - 1, int(T * max(cfg.schedule.t_start[1], cfg.schedule.t_end[1])))
    redraws = cfg.dpo.redraws if two else 0
    n = 1 if not two else 2 if timestep_variant else cfg.dpo.candidates  # members of the prior call
    first = None
    for k in range(redraws + 1):
        if k:  # climb towards the top of the schedule in equal steps
            lift = (top - min(t_a, t_b)) * k // redraws
            t_a, t_b = min(t_a + lift, top), min(t_b + lift, top)
        seeds = [step_seed(cfg.seed, step, Stream.NOISE_A, k), step_seed(cfg.seed, step, Stream.NOISE_B, k)]
        seeds += [step_seed(cfg.seed, step, Stream.NOISE_MORE, k * 1024 + i) for i in range(2, n)]
        c = _predict(prior, z, cams, cond, cfg, (t_a, t_b), seeds[:n], timestep_variant, score)
        if not two:
            return c
        c.draws = k + 1
        first = c if first is None else first
        if min(c.distance) >= cfg.dpo.min_distance:
            c.anchor = first if k else None
            return c
    return first  # still indistinct: the step is what its own t gives (a tie, pull only)


def _predict(prior, z, cams, cond, cfg, ts: tuple[int, int], seeds: list[int], one_noise: bool,
             score: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Candidates:
    """The prior's predictions for len(seeds) members (1: SDS; 2: the pair; more: the two most different
    of them, or the best and the worst by `score`, are kept), in one batched call."""
    B, members = z.shape[0], len(seeds)
    t = torch.tensor([[ts[0]] * B] + [[ts[1]] * B] * (members - 1), device=z.device)
    noises = [torch.randn(z.shape, generator=torch.Generator().manual_seed(s)).to(z) for s in seeds]
    if one_noise:
        noises[1] = noises[0]
    noise = torch.stack(noises)
    with torch.no_grad():
        zd = z.detach()
        z_t = torch.cat([prior.add_noise(zd, noise[i], t[i]) for i in range(members)])
        pred = prior.predict_noise(z_t, t.reshape(-1), cond, cams.repeat(members), cfg.guidance_scale)
        eps_cfg = pred.eps_cfg.reshape(members, *z.shape)
        eps_cond = pred.eps_cond.reshape(members, *z.shape)
        if members == 1:  # SDS: member b is a copy of a
            return Candidates(t.expand(2, B), noise.expand(2, *z.shape), eps_cfg.expand(2, *z.shape),
                              eps_cond.expand(2, *z.shape), torch.empty(0), seeds=(seeds[0], seeds[0]))
        decoded = prior.decode(prior.predict_x0(z_t, pred.eps_cfg, t.reshape(-1))).float()
        images = decoded.reshape(members, B, *decoded.shape[1:])
    V = prior.n_views
    i, j, distance = most_different(images, V) if score is None else best_worst(images, score, V)
    keep = [i, j]
    return Candidates(t[keep], noise[keep], eps_cfg[keep], eps_cond[keep], images[keep],
                      seeds=(seeds[i], seeds[j]), distance=distance)


def most_different(images: torch.Tensor, V: int) -> tuple[int, int, list[float]]:
    """(i, j, per-group distances of i and j): of N candidates [N,B,3,H,W], the two whose views differ most
    (mean over camera groups of images.pixel_distance); with N = 2 that is (0, 1)."""
    N = images.shape[0]
    pairs = {(i, j): group_distances(images, i, j, V) for i in range(N) for j in range(i + 1, N)}
    (i, j), d = max(pairs.items(), key=lambda kv: sum(kv[1]))
    return i, j, d


def group_distances(images: torch.Tensor, i: int, j: int, V: int) -> list[float]:
    """images.pixel_distance of candidates i and j [N,B,3,H,W], per camera group of V views."""
    return [pixel_distance(images[i, g * V:(g + 1) * V], images[j, g * V:(g + 1) * V])
            for g in range(images.shape[1] // V)]


def best_worst(images: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor], V: int,
               ) -> tuple[int, int, list[float]]:
    """(i, j, per-group distances of i and j): of N candidates [N,B,3,H,W], the best and the worst by their
    mean score over all B views (RewardSDS, arXiv 2503.09601); all scores equal → (0, 1)."""
    N, B = images.shape[:2]
    means = score(images.reshape(N * B, *images.shape[2:])).float().reshape(N, B).mean(1)
    i, j = int(means.argmax()), int(means.argmin())
    if i == j:
        i, j = 0, 1
    return i, j, group_distances(images, i, j, V)


def indistinct(distance: float) -> Judgement:
    """The verdict of a pair nobody could tell apart: a tie (pull only) that no judge or person gave."""
    return Judgement(winner="tie", gap=0.0, judge="indistinct", extra={"source": "indistinct", "distance": distance})


def injected_gradient(
    prior: DiffusionPrior, z: torch.Tensor, c: Candidates, verdicts: list[Judgement | None], cfg: RunConfig
) -> torch.Tensor:
    """The gradient injected into z, per camera group: SDS where verdicts[g] is None, else
    losses.preference_grad of the group's verdict."""
    V = len(z) // len(verdicts)
    grad = torch.zeros_like(z, dtype=torch.float32)
    for g, v in enumerate(verdicts):
        sl = slice(g * V, (g + 1) * V)
        a, b = (losses.Member(eps_cfg=c.eps_cfg[i, sl].float(), eps_cond=c.eps_cond[i, sl].float(),
                              noise=c.noise[i, sl].float(), w=prior.weight(c.t[i, sl], z[sl]).float())
                for i in (0, 1))
        if v is None:
            grad[sl] = losses.sds_grad(a.eps_cfg, a.noise, a.w)
        else:
            grad[sl] = losses.preference_grad(a, b, v.winner, v.gap, v.skip, cfg.dpo)
            if c.anchor is not None and not v.skip:  # a redrawn pair: keep the pull of the step's own t
                m = c.anchor
                grad[sl] += losses.sds_grad(m.eps_cfg[0, sl].float(), m.noise[0, sl].float(),
                                            prior.weight(m.t[0, sl], z[sl]).float())
    return grad


# ---------------------------------------------------------------- the loop


def optimize(
    cfg: RunConfig,
    *,
    prior: DiffusionPrior | None = None,
    judge: Judge | None = None,
    recorder: Recorder | None = None,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """One run, from its config to its outputs. Every check comes before anything is written: a refused
    start leaves the folder and the log as they were."""
    device = resolve_device(cfg.device)
    out_dir = cfg.out_dir
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if not resume and ckpt_path.exists():
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it or --out to start another")
    prior = prior if prior is not None else load_prior(cfg, device)
    if judge is None and cfg.judge != "none":
        judge = load_run_judge(cfg, device)
    if judge is not None and cfg.dpo.pick == "best_worst" and not judge.scores_images():
        raise UserError(f"dpo.pick=best_worst needs a judge that scores single images (toy-reward, hpsv2, "
                        f"imagereward); the {judge.name} judge only compares pairs: use dpo.pick=most_different")
    recorder = recorder or Recorder()
    V = prior.n_views
    B = cfg.batch_size or V
    if B % V:
        raise UserError(f"batch_size {B} is not a multiple of the prior's {V} views; use {V * max(1, B // V)}")
    with folder_lock(out_dir):
        return _optimize(cfg, prior, judge, recorder, resume, progress, device, out_dir, B, V)


@contextlib.contextmanager
def folder_lock(out_dir: Path):
    """One process per run folder: a second `dreamdpo run` on the same --out is refused, not mixed in."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another dreamdpo run is writing to {out_dir}; "
                            "wait for it to end or pass another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _optimize(cfg: RunConfig, prior: DiffusionPrior, judge: Judge | None, recorder: Recorder, resume: bool,
              progress: bool, device: torch.device, out_dir: Path, B: int, V: int) -> RunResult:
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if not resume and ckpt_path.exists():  # again, under the lock
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it or --out to start another")
    camera_cfg = dataclasses.replace(cfg.camera, n_views=V)
    torch.manual_seed(cfg.seed)  # parameter initialisation
    nerf, background, renderer = build_scene(cfg, device)
    o = cfg.optim
    groups = nerf.param_groups(lr_grid=o.lr_grid, lr_mlp=o.lr_mlp) + [
        {"params": list(background.parameters()), "lr": o.lr_mlp}
    ]
    groups = [g for g in groups if len(list(g["params"]))]
    optimizer = torch.optim.AdamW(groups, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)

    start = load_checkpoint(ckpt_path, renderer, optimizer, device, judge, prompt=cfg.prompt) if resume else 0
    cond = prior.encode_prompt(cfg.prompt, cfg.negative_prompt)
    recorder.start(cfg.to_dict(), cfg.prompt, cfg.human.question, cfg.backbone, cfg.judge, cfg.fingerprint())
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if recorder.run_id is not None:  # how --resume finds this run in the log, and checks it is this run
        (out_dir / "log.json").write_text(json.dumps({"run_id": recorder.run_id, "fingerprint": cfg.fingerprint()}))

    metrics: list[dict] = []
    csv_file, writer = open_metrics(out_dir / "metrics.csv", start)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc="dreamdpo", unit="step")
    scene = Scene(prior, judge, renderer, optimizer, cond, camera_cfg, B, V, device)
    status, step = "finished", start
    last_control = 0.0
    try:
        for step in range(start, cfg.steps):
            if time.monotonic() - last_control > 0.5:  # an admin may pause or cancel from the app
                if wait_while_paused(recorder) == "cancelled":
                    status = "cancelled"
                    break
                last_control = time.monotonic()
            row, judged, render = train_step(cfg, scene, step, recorder.run_id)
            for verdict, images_a, images_b, ctx in judged:
                recorder.record(verdict, images_a, images_b, ctx)
            metrics.append(row)
            writer.writerow(row)
            csv_file.flush()  # a crash keeps every finished step's row
            preview = render if (step + 1) % cfg.preview_every == 0 else None
            recorder.progress(step, {k: row[k] for k in PROGRESS_KEYS if k in row}, preview)
            bar.set_postfix({k: (f"{row[k]:.3g}" if isinstance(row[k], float) else row[k])
                             for k in ("loss", "gap", "judge_ms") if k in row})
            bar.update(1)
            if step + 1 == cfg.steps and judge is not None:
                judge.end_of_run(recorder.run_id)  # before the final checkpoint, which holds what it learned
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(ckpt_path, step + 1, renderer, optimizer, cfg, judge)
                recorder.checkpoint_saved(ckpt_path)
        else:
            step = cfg.steps
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint stays; `--resume` continues
        recorder.finish("paused")
        raise
    except Exception:
        recorder.finish("failed")
        raise
    finally:
        bar.close()
        csv_file.close()

    result = RunResult(out_dir=out_dir, status=status, steps_done=step if status == "cancelled" else cfg.steps,
                       metrics=metrics)
    if status == "finished":
        result.outputs, result.test_views, result.test_cameras = export_outputs(cfg, renderer, nerf, out_dir)
    recorder.finish(status, result.outputs)
    return result


PROGRESS_KEYS = ("loss", "gap", "winner", "source", "judge_ms", "votes", "agreement")  # what the Runs page plots


@dataclass
class Scene:
    """What a step works on: the prior, the judge, the renderer (field + background), the optimizer."""

    prior: DiffusionPrior
    judge: Judge | None
    renderer: Renderer
    optimizer: torch.optim.Optimizer
    cond: object  # the prior's encoded prompt
    camera_cfg: object
    B: int  # renders per step
    V: int  # views per camera group
    device: torch.device


def train_step(cfg: RunConfig, sc: Scene, step: int, run_id: int | None):
    """One DreamDPO step (docs/method.md, "The step"): cameras → render → the pair → the verdicts →
    the injected gradient → AdamW. Returns the metrics row, the judged pairs for the log
    (verdict, images a, images b, context) and the render. No I/O here beyond what a judge does."""
    tick = _Timer(sc.device)
    sc.renderer.train()
    sc.renderer.update_occupancy(step, seed=cfg.seed)
    # 1. cameras and render
    cams = random_cameras(sc.camera_cfg, sc.B // sc.V, generator(cfg.seed, step, Stream.CAMERAS)).to(sc.device)
    res = resolution_at(cfg, step)
    w_orient = losses.orientation_weight(step, ramp=cfg.schedule.orientation_ramp,
                                         weights=cfg.schedule.orientation_weights)
    out = sc.renderer(cams, res, res, generator=generator(cfg.seed, step, Stream.BACKGROUND),
                      need_normals=w_orient > 0)  # normals cost a double backward: only when used
    z = sc.prior.encode(out.rgb)
    tick("render")
    # 2. the pair: one t, two noises, one batched prior call (drawn again while indistinct)
    score = None
    if sc.judge is not None and cfg.dpo.pick == "best_worst":
        def score(images: torch.Tensor) -> torch.Tensor:
            return sc.judge.score(images, cfg.prompt)
    c = make_candidates(sc.prior, z, cams, sc.cond, cfg, step, two=sc.judge is not None, score=score)
    tick("prior")
    # 3. the verdicts, per camera group (None: SDS)
    verdicts: list[Judgement | None] = [None] * (sc.B // sc.V)
    judged = []
    if sc.judge is not None:
        for g in range(sc.B // sc.V):
            sl = slice(g * sc.V, (g + 1) * sc.V)
            ctx = JudgeContext(step=step, t=(int(c.t[0, 0]), int(c.t[1, 0])), seeds=c.seeds, distance=c.distance[g],
                               cameras=cams[sl].as_dicts(), render=out.rgb[sl].detach(), run_id=run_id,
                               steps=cfg.steps)
            if c.distance[g] < cfg.dpo.min_distance:
                verdicts[g] = indistinct(c.distance[g])
            else:
                verdicts[g] = sc.judge.compare(c.images[0, sl], c.images[1, sl], cfg.prompt, ctx)
            judged.append((verdicts[g], c.images[0, sl], c.images[1, sl], ctx))
    late = sc.judge.late_decisions() if sc.judge is not None else []
    tick("judge")
    # 4. the gradient injected into z, people's late verdicts replayed, regularisers, AdamW
    #    (a step every group skipped changes nothing)
    grad = injected_gradient(sc.prior, z, c, verdicts, cfg)
    loss = losses.surrogate_loss(z.float(), grad) + w_orient * out.orientation
    if late:
        loss = loss + replayed_loss(cfg, sc, late, res)
    if cfg.schedule.sparsity_weight:
        loss = loss + cfg.schedule.sparsity_weight * losses.sparsity_loss(out.opacity)
    sc.optimizer.zero_grad(set_to_none=True)
    if late or not (sc.judge is not None and all(v.skip for v in verdicts)):
        loss.backward()
        sc.optimizer.step()
    tick("backward")
    row = {"step": step, "loss": float(loss.detach()), "grad_norm": float(grad.norm()), "t_a": int(c.t[0, 0]),
           "t_b": int(c.t[1, 0]), "resolution": res, "opacity": float(out.opacity_mean.detach()), **tick.times}
    if sc.judge is not None:
        row.update(verdict_columns([v for v in verdicts if v is not None], c, cfg), replayed=len(late))
    return row, judged, out.rgb.detach()


def replayed_loss(cfg: RunConfig, sc: Scene, late: list[LateDecision], res: int) -> torch.Tensor:
    """People's verdicts on earlier steps' pairs, as gradients at the current parameters (docs/method.md,
    "Late decisions"): each pair is made again from its own cameras, t and noise seeds, and its winner
    pulls and its loser is pushed by losses.preference_grad, as if people had answered at once."""
    total = torch.zeros((), device=sc.device)
    for d in late:
        cams = Cameras.from_dicts(d.cameras).to(sc.device)
        out = sc.renderer(cams, res, res, generator=generator(cfg.seed, d.step, Stream.BACKGROUND))
        z = sc.prior.encode(out.rgb)
        c = _predict(sc.prior, z, cams, sc.cond, cfg, d.t, list(d.seeds), cfg.dpo.variant == "timestep")
        verdicts = [d.verdict] * (len(z) // sc.prior.n_views)
        total = total + losses.surrogate_loss(z.float(), injected_gradient(sc.prior, z, c, verdicts, cfg))
    return total


def verdict_columns(vs: list[Judgement], c: Candidates, cfg: RunConfig) -> dict:
    """Every camera group's verdict in one metrics row: 'a/b/tie' strings, mean gap and push."""
    row = dict(winner="/".join(v.winner for v in vs), gap=sum(v.gap for v in vs) / len(vs),
               skip=sum(v.skip for v in vs),
               push=sum(losses.push_fraction(v.winner, v.gap, v.skip, cfg.dpo) for v in vs) / len(vs),
               source="/".join(dict.fromkeys(v.extra.get("source", v.judge) for v in vs)),
               distance=min(c.distance), draws=c.draws)
    learned = vs[0].extra  # a judge that learns from people reports how far it got
    if learned.get("learned_from") is not None:
        row.update(votes=learned["learned_from"], agreement=learned.get("agreement"))
    return row


def wait_while_paused(recorder: Recorder) -> str:
    """An admin may pause or cancel a run from the app: 'running' or 'cancelled' once not paused."""
    state = recorder.control()
    while state == "paused":
        time.sleep(0.5)
        state = recorder.control()
    return state


def export_outputs(cfg: RunConfig, renderer: Renderer, nerf: NeRFField, out_dir: Path):
    """Turntable (frames, GIF, contact sheet) and mesh of the finished object."""
    from dreamdpo import export

    frames = export.render_turntable(renderer, n_frames=cfg.test_views, resolution=cfg.test_resolution)
    outputs = dict(export.save_turntable(frames, out_dir / "turntable"))
    sheet = outputs.get("contact_sheet")
    if sheet:
        outputs["contact_sheet_png"] = Path(sheet).read_bytes()
        outputs["turntable_views_png"] = png_bytes(export.turntable_views(frames))  # arena pairs show these
    if cfg.export_mesh:
        try:
            mesh = export.extract_mesh(nerf, resolution=cfg.mesh_resolution, threshold=cfg.export.mesh_threshold)
            for suffix in (".obj", ".glb"):
                export.save_mesh(out_dir / f"mesh{suffix}", *mesh)
                outputs[f"mesh{suffix}"] = str(out_dir / f"mesh{suffix}")
        except UserError as e:
            warnings.warn(f"no mesh written: {e}", stacklevel=2)
    import numpy as np

    views = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    return outputs, views, orbit_cameras(cfg.test_views)


METRIC_COLUMNS = ["step", "loss", "grad_norm", "t_a", "t_b", "resolution", "opacity", "render_ms", "prior_ms",
                  "judge_ms", "backward_ms", "winner", "gap", "skip", "push", "source", "distance", "draws", "votes",
                  "agreement", "replayed"]


def open_metrics(path: Path, start: int):
    """metrics.csv, one row per step, flushed as it goes. A resumed run keeps the rows of the steps
    before its checkpoint and drops those a crashed process wrote after it (they are done again)."""
    kept = []
    if start > 0 and path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) < start]
    f = open(path, "w", newline="")
    writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(kept)
    return f, writer


class _Timer:
    """Wall time of each phase of a step, in ms (synchronising CUDA so the numbers are honest)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.last = device, {}, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[f"{name}_ms"] = (now - self.last) * 1000.0
        self.last = now

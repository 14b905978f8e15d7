"""The loop end to end on tiny random-weight diffusers models, loaded through the users' loader."""
from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from dreamdpo.cli import main as cli
from dreamdpo.config import load_config
from dreamdpo.judges.base import Judge, judgement_from_scores
from dreamdpo.optimize import load_prior, optimize, resolve_device
from dreamdpo.priors.tiny import make_tiny_sd
from dreamdpo.recording import ListRecorder

SMALL = [
    "field.n_levels=4", "field.log2_hashmap_size=12", "field.max_resolution=64", "field.hidden=16",
    "render.n_samples=16", "schedule.resolution=32", "schedule.resolution_milestones=[]",
    "test_views=4", "test_resolution=32", "mesh_resolution=32", "checkpoint_every=5", "device=cpu",
]


class BrightnessJudge(Judge):
    """A real (if simple-minded) judge: prefers the brighter candidate. Deterministic."""

    name = "brightness"

    def compare(self, images_a, images_b, prompt, context=None):
        return judgement_from_scores(self.name, images_a.mean(dim=(1, 2, 3)), images_b.mean(dim=(1, 2, 3)))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"), latent=True, resolution=32)


def config(tiny_sd, out, *extra, judge="none", steps=20):
    return load_config(flags={"prompt": "a red cube", "backbone": tiny_sd, "judge": judge, "steps": steps,
                              "out": str(out)}, overrides=SMALL + list(extra))


def params(result_dir):
    state = torch.load(result_dir / "checkpoints" / "last.pt", weights_only=False)
    return state["renderer"]


@pytest.mark.slow
def test_dreamdpo_and_sds_finish_with_finite_parameters_and_log_every_pair(tiny_sd, tmp_path):
    cfg = config(tiny_sd, tmp_path / "dpo", "dpo.tau=0.0")
    prior = load_prior(cfg, resolve_device("cpu"))
    rec = ListRecorder()
    res = optimize(cfg, prior=prior, judge=BrightnessJudge(), recorder=rec, progress=False)
    assert res.status == "finished" and res.steps_done == 20
    assert [s for s, _ in rec.judgements] == list(range(20))
    assert all(j.judge == "brightness" and j.gap >= 0 for _, j in rec.judgements)
    assert all(torch.isfinite(v).all() for v in params(res.out_dir).values() if v.is_floating_point())
    assert sum(m["push"] for m in res.metrics) == 20  # τ = 0: every step pushes
    assert (res.out_dir / "metrics.csv").read_text().count("\n") == 21
    assert res.test_views.shape == (4, 3, 32, 32)
    assert (res.out_dir / "turntable" / "turntable.gif").exists() or any(
        p.suffix == ".gif" for p in (res.out_dir / "turntable").iterdir())

    cfg_sds = config(tiny_sd, tmp_path / "sds")
    rec_sds = ListRecorder()
    res_sds = optimize(cfg_sds, prior=prior, recorder=rec_sds, progress=False)
    assert res_sds.status == "finished" and rec_sds.judgements == []
    assert all(torch.isfinite(v).all() for v in params(res_sds.out_dir).values() if v.is_floating_point())
    # the two runs started from the same parameters and went different ways
    a, b = params(res.out_dir), params(res_sds.out_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["none", "brightness"])
def test_resume_continues_bit_for_bit(tiny_sd, tmp_path, judge):
    make_judge = (lambda: BrightnessJudge()) if judge != "none" else (lambda: None)
    straight = config(tiny_sd, tmp_path / "straight", steps=12)
    prior = load_prior(straight, resolve_device("cpu"))
    optimize(straight, prior=prior, judge=make_judge(), progress=False)

    first = config(tiny_sd, tmp_path / "split", steps=6)
    optimize(first, prior=prior, judge=make_judge(), progress=False)
    second = config(tiny_sd, tmp_path / "split", steps=12)
    res = optimize(second, prior=prior, judge=make_judge(), resume=True, progress=False)
    assert res.steps_done == 12
    a, b = params(tmp_path / "straight"), params(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pull_only_below_tau_and_push_above(tiny_sd, tmp_path):
    cfg = config(tiny_sd, tmp_path / "big-tau", "dpo.tau=1000.0", steps=3)
    res = optimize(cfg, judge=BrightnessJudge(), progress=False)
    assert [m["push"] for m in res.metrics] == [0, 0, 0]


def run_cli(args, capsys):
    code = cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if "error" in line]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "x", "--backbone", "/no/such/model"], "/no/such/model"),
        (["--prompt", "x", "--judge", "oracle"], "unknown judge 'oracle'"),
        (["--prompt", "x", "--tau", "-1"], "tau must be ≥ 0"),
    ],
)
def test_cli_bad_input_one_line_nonzero(args, message, capsys, tmp_path):
    code, err = run_cli(["run", "--no-log", "--quiet", "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and len(err) == 1 and message in err[0]


def test_cli_resolution_not_multiple_of_8_for_a_vae_prior(tiny_sd, tmp_path, capsys):
    code, err = run_cli(["run", "--no-log", "--quiet", "--prompt", "x", "--backbone", tiny_sd, "--judge", "none",
                         "--out", str(tmp_path / "o"), "prior_resolution=30", *SMALL], capsys)
    assert code == 2 and len(err) == 1 and "multiple of 8" in err[0]


def test_cli_corrupted_checkpoint(tiny_sd, tmp_path, capsys):
    ck = tmp_path / "o" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"not a checkpoint")
    code, err = run_cli(["run", "--no-log", "--quiet", "--prompt", "x", "--backbone", tiny_sd, "--judge", "none",
                         "--out", str(tmp_path / "o"), "--resume", *SMALL], capsys)
    assert code == 2 and len(err) == 1 and "damaged" in err[0]


def test_existing_run_is_not_overwritten_without_resume(tiny_sd, tmp_path, capsys):
    args = ["run", "--no-log", "--quiet", "--prompt", "x", "--backbone", tiny_sd, "--judge", "none",
            "--steps", "2", "--out", str(tmp_path / "o"), *SMALL]
    assert cli(args) == 0
    code, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err[0]


def test_batch_not_multiple_of_views(tmp_path):
    class FourViews:
        n_views = 4

    cfg = load_config(flags={"backbone": "x", "judge": "none", "out": str(tmp_path)}, overrides=["batch_size=6"])
    from dreamdpo.errors import UserError

    with pytest.raises(UserError, match="not a multiple of the prior's 4 views"):
        optimize(cfg, prior=FourViews(), progress=False)


def test_step_seeds_are_distinct_and_stable():
    from dreamdpo.seeding import step_seed

    seeds = {step_seed(s, k, stream, i) for s in range(3) for k in range(200) for stream in range(9) for i in range(3)}
    assert len(seeds) == 3 * 200 * 9 * 3
    assert step_seed(0, 5, 1) == step_seed(0, 5, 1) and not math.isnan(step_seed(1, 1, 1))


def test_every_judged_pair_is_logged_in_the_preference_log(tiny_sd, tmp_path):
    from db import images, runs
    from db.engine import connect
    from db.read import pairs_frame, votes_frame
    from dreamdpo.recording import DbRecorder

    engine = connect(f"sqlite:///{tmp_path / 'log.sqlite'}")
    cfg = config(tiny_sd, tmp_path / "run", steps=5, judge="toy-reward")
    rec = DbRecorder(engine)
    res = optimize(cfg, judge=BrightnessJudge(), recorder=rec, progress=False)
    run = runs.get_run(engine, rec.run_id)
    assert run["status"] == "finished" and run["step"] == 4 and run["prompt"] == "a red cube"
    assert [h["step"] for h in run["metrics"]["history"]] == list(range(5))
    assert images.get_image(engine, run["metrics"]["turntable"]) is not None
    strip = Image.open(io.BytesIO(images.get_image(engine, run["metrics"]["turntable_views"])))
    assert strip.width == min(8, cfg.test_views) * strip.height  # square views side by side (arena pairs)
    votes, pairs = votes_frame(engine, run_id=rec.run_id), pairs_frame(engine, run_id=rec.run_id)
    assert sorted(pairs["step"]) == list(range(5)) and (pairs["winner"].notna()).all()
    assert (votes["judge"] == "brightness").all() and votes["annotator"].isna().all()
    # the log's choices are the loop's verdicts, step by step
    by_step = dict(zip(pairs["step"], pairs["winner"]))
    assert [by_step[m["step"]] for m in res.metrics] == [m["winner"] for m in res.metrics]
    # each pair can be regenerated: its seeds and timesteps are the loop's
    from dreamdpo.seeding import Stream, step_seed

    row = pairs.sort_values("step").iloc[2]
    assert int(row["seed_a"]) == step_seed(cfg.seed, 2, Stream.NOISE_A, int(res.metrics[2]["draws"]) - 1) and int(row["t"]) == res.metrics[2]["t_a"]


def test_a_tie_pulls_only_even_at_tau_zero():
    """A person's tie has no loser: the push branch must not fire, whatever τ (it did at τ = 0)."""
    from types import SimpleNamespace

    from dreamdpo import losses
    from dreamdpo.judges.base import Judgement
    from dreamdpo.optimize import Candidates, injected_gradient

    g = torch.Generator().manual_seed(0)
    eps_cfg, eps_cond, noise = (torch.randn(2, 1, 4, 2, 2, generator=g) for _ in range(3))
    c = Candidates(t=torch.full((2, 1), 500), noise=noise, eps_cfg=eps_cfg, eps_cond=eps_cond, images=torch.empty(0))
    prior = SimpleNamespace(weight=lambda t, like: torch.full((like.shape[0], 1, 1, 1), 0.5))
    z = torch.zeros(1, 4, 2, 2)
    cfg = SimpleNamespace(dpo=losses.DPOConfig(tau=0.0))
    tie = injected_gradient(prior, z, c, [Judgement(winner="tie", gap=0.0, judge="human")], cfg)
    assert torch.allclose(tie, 0.5 * (eps_cfg[0] - noise[0]))
    win_b = injected_gradient(prior, z, c, [Judgement(winner="b", gap=0.0, judge="human")], cfg)
    assert torch.allclose(win_b, 0.5 * (eps_cfg[1] - noise[1]) - 0.5 * (eps_cond[0] - noise[0]))


def test_a_late_decision_replayed_at_the_same_parameters_is_the_gradient_of_its_own_step(tiny_sd, tmp_path):
    """A person's verdict that arrives after its step (human.mode=async) is replayed from the pair's
    cameras, t and noise seeds: at unchanged parameters that is exactly the push-pull the step would
    have taken had the person answered at once, and the winner decides its direction."""
    import dataclasses

    from dreamdpo import losses
    from dreamdpo.cameras import random_cameras
    from dreamdpo.judges.base import Judgement, LateDecision
    from dreamdpo.optimize import Scene, build_scene, injected_gradient, make_candidates, replayed_loss
    from dreamdpo.seeding import Stream, generator

    cfg = config(tiny_sd, tmp_path / "run")
    device = torch.device("cpu")
    prior = load_prior(cfg, device)
    torch.manual_seed(0)
    _, _, renderer = build_scene(cfg, device)
    V, step, res = prior.n_views, 3, cfg.schedule.resolution
    sc = Scene(prior, BrightnessJudge(), renderer, torch.optim.SGD(renderer.parameters(), lr=0.0),
               prior.encode_prompt(cfg.prompt), dataclasses.replace(cfg.camera, n_views=V), V, V, device)

    def param_grad(loss):
        renderer.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in renderer.parameters() if p.grad is not None])

    cams = random_cameras(sc.camera_cfg, 1, generator(cfg.seed, step, Stream.CAMERAS))
    out = renderer(cams, res, res, generator=generator(cfg.seed, step, Stream.BACKGROUND))
    z = prior.encode(out.rgb)
    c = make_candidates(prior, z, cams, sc.cond, cfg, step, two=True)
    grads = {}
    for winner in ("a", "b"):
        verdict = Judgement(winner=winner, gap=1.0, judge="human")
        z = prior.encode(renderer(cams, res, res, generator=generator(cfg.seed, step, Stream.BACKGROUND)).rgb)
        at_once = param_grad(losses.surrogate_loss(z.float(), injected_gradient(prior, z, c, [verdict], cfg)))
        late = LateDecision(1, step, (int(c.t[0, 0]), int(c.t[1, 0])), c.seeds, cams.as_dicts(), verdict)
        grads[winner] = param_grad(replayed_loss(cfg, sc, [late], res))
        assert torch.allclose(grads[winner], at_once, rtol=1e-4, atol=1e-7), winner
    assert not torch.allclose(grads["a"], grads["b"], rtol=1e-2)

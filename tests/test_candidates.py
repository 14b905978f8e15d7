"""How a step makes its pair: N candidates (the two most different are judged), redraws of an
indistinct pair at a higher t, and the anchor a redrawn step keeps (the pull of its own t)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dreamdpo import losses
from dreamdpo.cameras import CameraConfig, random_cameras
from dreamdpo.errors import UserError
from dreamdpo.images import pixel_distance
from dreamdpo.judges.base import Judge, Judgement
from dreamdpo.optimize import best_worst, injected_gradient, make_candidates, most_different
from dreamdpo.priors.base import DiffusionPrior, NoisePrediction
from dreamdpo.seeding import Stream, step_seed


class PosteriorPrior(DiffusionPrior):
    """A pixel-space prior whose x̂0 depends on the noise only above t = 500, as a narrow posterior at low
    t does: below, every noise gives the same x̂0 (the input), above, x̂0 = input + 0.3·mean noise."""

    name = "posterior"

    def __init__(self):
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    def encode_prompt(self, prompt, negative_prompt=""):
        return prompt

    def encode(self, images):
        return images * 2 - 1

    def decode(self, z):
        return ((z + 1) / 2).clamp(0, 1)

    def predict_noise(self, z_t, t, cond, cameras, guidance_scale):
        a = self._abar(t, z_t)
        x_clean = self.clean  # the image the step noised (the test sets it)
        shift = torch.where(t.reshape(-1, 1, 1, 1) > 500, 0.3 * ((z_t - a.sqrt() * x_clean) / (1 - a).sqrt())
                            .mean(dim=(1, 2, 3), keepdim=True), torch.zeros(1))
        x0 = x_clean + shift
        eps = (z_t - a.sqrt() * x0) / (1 - a).sqrt()
        return NoisePrediction(eps_cfg=eps, eps_cond=eps)


def run_cfg(t0: float = 0.1, **dpo):
    """Step 0 draws t = 1000·t0 (100: where every noise gives the same x̂0)."""
    sched = SimpleNamespace(t_start=(t0, t0), t_end=(0.1, 0.9), t_anneal_steps=1000)
    return SimpleNamespace(seed=3, guidance_scale=7.5, schedule=sched, dpo=losses.DPOConfig(**dpo))


def setup():
    prior = PosteriorPrior()
    z = prior.encode(torch.full((1, 3, 8, 8), 0.5))
    prior.clean = z
    cams = random_cameras(CameraConfig(), 1, torch.Generator().manual_seed(0))
    return prior, z, cams


def test_most_different_picks_the_pair_that_differs_most():
    imgs = torch.zeros(4, 1, 3, 4, 4)
    imgs[1] += 0.2
    imgs[2] += 0.9
    imgs[3] += 0.5
    i, j, d = most_different(imgs, V=1)
    assert (i, j) == (0, 2) and d == [pytest.approx(pixel_distance(imgs[0], imgs[2]))]
    assert most_different(imgs[:2], V=1)[:2] == (0, 1)  # two candidates: the pair itself


def test_n_candidates_judge_the_two_most_different_of_one_prior_call():
    prior, z, cams = setup()
    calls = []
    predict = prior.predict_noise
    prior.predict_noise = lambda z_t, *a: calls.append(len(z_t)) or predict(z_t, *a)
    cfg = run_cfg(0.8, candidates=6)
    c = make_candidates(prior, z, cams, "x", cfg, step=0, two=True)
    assert calls == [6]  # one batched call for all six
    drawn = [step_seed(3, 0, Stream.NOISE_A), step_seed(3, 0, Stream.NOISE_B)] + [
        step_seed(3, 0, Stream.NOISE_MORE, i) for i in range(2, 6)]
    assert set(c.seeds) <= set(drawn) and c.seeds[0] != c.seeds[1]
    # the kept pair is at least as different as the paper's pair (the first two noises), usually more
    two = make_candidates(prior, z, cams, "x", run_cfg(0.8, candidates=2), step=0, two=True)
    assert two.seeds == tuple(drawn[:2])
    assert c.distance[0] >= two.distance[0] > 0
    # the logged seeds regenerate the kept candidates' noises
    for k, s in enumerate(c.seeds):
        assert torch.equal(c.noise[k], torch.randn(z.shape, generator=torch.Generator().manual_seed(s)))


def test_an_indistinct_pair_is_redrawn_higher_and_keeps_its_own_pull_as_anchor():
    prior, z, cams = setup()
    cfg = run_cfg(redraws=3, min_distance=0.01)
    c = make_candidates(prior, z, cams, "x", cfg, step=0, two=True)  # step 0: t = 100, indistinct there
    assert c.draws > 1 and int(c.t[0, 0]) > 500 and c.distance[0] >= 0.01
    assert c.anchor is not None and int(c.anchor.t[0, 0]) == 100 and c.anchor.anchor is None
    v = Judgement(winner="a", gap=1.0, judge="x")
    with_anchor = injected_gradient(prior, z, c, [v], cfg)
    c.anchor, anchor = None, c.anchor
    without = injected_gradient(prior, z, c, [v], cfg)
    sds = losses.sds_grad(anchor.eps_cfg[0], anchor.noise[0], prior.weight(anchor.t[0], z))
    assert torch.allclose(with_anchor - without, sds, atol=1e-6)
    # never redrawn: no anchor; still indistinct after every redraw: the step's own draw (a tie there)
    assert make_candidates(prior, z, cams, "x", run_cfg(redraws=0), step=0, two=True).anchor is None
    flat = make_candidates(prior, z, cams, "x", run_cfg(redraws=2, min_distance=0.99), step=0, two=True)
    assert flat.draws == 1 and flat.anchor is None and int(flat.t[0, 0]) == 100


def test_candidates_below_two_are_refused():
    with pytest.raises(UserError, match="dpo.candidates must be ≥ 2"):
        losses.DPOConfig(candidates=1)


def test_best_worst_keeps_the_highest_and_the_lowest_scored_candidates():
    imgs = torch.zeros(4, 2, 3, 4, 4)  # 4 candidates × 2 views
    for k, level in enumerate([0.3, 0.9, 0.1, 0.5]):
        imgs[k] += level
    i, j, d = best_worst(imgs, lambda x: x.mean(dim=(1, 2, 3)), V=2)  # score = brightness
    assert (i, j) == (1, 2) and d == [pytest.approx(pixel_distance(imgs[1], imgs[2]))]
    i, j, _ = best_worst(imgs, lambda x: -x.mean(dim=(1, 2, 3)), V=1)
    assert (i, j) == (2, 1)
    assert best_worst(imgs, lambda x: torch.zeros(len(x)), V=2)[:2] == (0, 1)  # all equal: the first two


def test_n_candidates_with_a_score_judge_the_best_against_the_worst():
    prior, z, cams = setup()
    cfg = run_cfg(0.8, candidates=6, pick="best_worst")
    scored = []

    def brightness(x):
        scored.append(len(x))
        return x.mean(dim=(1, 2, 3))

    c = make_candidates(prior, z, cams, "x", cfg, step=0, two=True, score=brightness)
    assert scored == [6]  # every candidate's views scored, once
    assert set(c.seeds) <= set(step_seed(3, 0, s) for s in (Stream.NOISE_A, Stream.NOISE_B)) | {
        step_seed(3, 0, Stream.NOISE_MORE, i) for i in range(2, 6)}
    # this prior's x̂0 is the input + 0.3·mean noise above t = 500: the brightest candidate has the noise
    # of highest mean among the six drawn, the darkest the lowest
    seeds = [step_seed(3, 0, Stream.NOISE_A), step_seed(3, 0, Stream.NOISE_B)] + [
        step_seed(3, 0, Stream.NOISE_MORE, i) for i in range(2, 6)]
    noise_mean = {s: float(torch.randn(z.shape, generator=torch.Generator().manual_seed(s)).mean()) for s in seeds}
    assert c.seeds == (max(seeds, key=noise_mean.get), min(seeds, key=noise_mean.get))
    means = [float(x.mean()) for x in c.images]
    assert means[0] > means[1]


def test_best_worst_needs_a_judge_that_scores_and_says_so_before_the_run(tmp_path):
    from dreamdpo.config import RunConfig
    from dreamdpo.optimize import optimize

    class PairOnly(Judge):
        name = "pair-only"

        def compare(self, a, b, prompt, context=None):
            return Judgement(winner="a", gap=1.0, judge=self.name)

    with pytest.raises(UserError, match="dpo.pick=best_worst needs a judge that scores single images"):
        optimize(RunConfig(prompt="a red cube", out=str(tmp_path / "r"), dpo=losses.DPOConfig(pick="best_worst")),
                 prior=PosteriorPrior(), judge=PairOnly())
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="dpo.pick must be"):
        losses.DPOConfig(pick="best")

"""The closed-form toy prior: exact MMSE maths, composition, camera conditioning, and what it makes."""
import math

import pytest
import torch

from dreamdpo.cameras import CameraConfig, random_cameras
from dreamdpo.errors import UserError
from dreamdpo.toyworld.bank import BankConfig, build_bank
from dreamdpo.toyworld.evaluate import evaluate_views
from dreamdpo.toyworld.prior import ToyPrior, ddim_sample
from dreamdpo.toyworld.render import colourize, layout, render_geometry
from dreamdpo.toyworld.vocab import COLOURS, SHAPES


@pytest.fixture(scope="module")
def small_prior(tmp_path_factory):
    bank = build_bank(BankConfig(n_cameras=3, resolution=32, supersample=1), cache=tmp_path_factory.mktemp("bank"),
                      progress=False)
    return ToyPrior(bank, k_cameras=3, camera_sigma=1e6)


@pytest.fixture()
def prior(toy_prior):
    """The default prior (conftest: its bank is built once per session)."""
    return toy_prior


def test_interface(small_prior):
    p = small_prior
    assert p.n_views == 1 and p.resolution == 32 and p.num_train_timesteps == 1000
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(p.decode(p.encode(x)), x, atol=1e-6)
    from diffusers import DDPMScheduler

    assert torch.allclose(p.alphas_cumprod, DDPMScheduler().alphas_cumprod.float())
    with pytest.raises(UserError, match="dragon"):
        p.encode_prompt("a red dragon")
    with pytest.raises(UserError, match="dragon"):
        p.encode_prompt("a red cube", negative_prompt="dragon")


def test_denoiser_is_the_exact_softmax_over_materialised_bank_images(small_prior):
    """The factorised full-resolution computation equals brute force over every 'red' image."""
    p, bank = small_prior, small_prior.bank
    cond = p.encode_prompt("a red cube")
    masks, _ = p._masks(cond)  # [red, cube, unconditional]
    query_cam = bank.cameras[0]
    t = 400
    a = float(p.alphas_cumprod[t])
    z = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8
    x0 = p.denoise(z, t, masks, 1, query_cam)
    red = torch.stack([p.encode(bank.images(1, c, g, ["red"])[None])[0]
                       for c in range(3) for g in range(len(SHAPES))]).double()
    logits = -((z.double()[None] - math.sqrt(a) * red) ** 2).flatten(1).sum(1) / (2 * (1 - a))
    ref = (torch.softmax(logits, 0)[:, None, None, None] * red).sum(0)
    assert torch.allclose(x0[0].double(), ref, atol=2e-3)
    assert masks[2].all() and masks[1].sum() == 8  # cube bank: the cube in all 8 colours


def test_guidance_composes_word_predictions_linearly(small_prior):
    p = small_prior
    cond = p.encode_prompt("a blue cone")
    cams = random_cameras(CameraConfig(), 2, torch.Generator().manual_seed(0))
    z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300, 600])
    e0, e1, e3 = (p.predict_noise(z, t, cond, cams, g) for g in (0.0, 1.0, 3.0))
    assert torch.allclose(e3.eps_cfg - e0.eps_cfg, 3 * (e1.eps_cfg - e0.eps_cfg), atol=1e-3)
    assert torch.allclose(e1.eps_cfg, e1.eps_cond, atol=1e-4)  # eps_cond = mean word prediction
    assert not torch.allclose(e0.eps_cfg, e1.eps_cfg, atol=1e-2)


def test_nearest_camera_of_a_bank_camera_is_itself(small_prior):
    bank = small_prior.bank
    for i in range(len(bank.cameras)):
        idx, logw = small_prior.nearest_cameras(bank.cameras[i])
        assert int(idx[0]) == i and abs(float(logw[0])) < 1e-9


@pytest.mark.slow  # the default bank: 22 s to build on 2 idle cores, minutes under load
def test_one_step_x0_from_a_grey_blob_shows_the_prompt(prior):
    """At moderate-to-high noise the one-step estimate from a featureless grey sphere is the
    prompt's object (what SDS pulls the NeRF towards). A prior that ignored the words, mixed up
    camera conditioning or botched the composition scores near chance (colour 1/8, shape 1/5)."""
    cams = random_cameras(CameraConfig(), 6, torch.Generator().manual_seed(7))
    grey = colourize(render_geometry(layout(("sphere",)), cams), torch.tensor([[0.6, 0.6, 0.6]]))
    z = prior.encode(grey)
    prompts = [f"a {c} {s}" for c, s in zip(COLOURS, SHAPES * 2)]
    colour, shape = [], []
    for i, prompt in enumerate(prompts):
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(i))
        t = torch.full((6,), 700)
        z_t = prior.add_noise(z, noise, t)
        eps = prior.predict_noise(z_t, t, prior.encode_prompt(prompt), cams, 3.0).eps_cfg
        ev = evaluate_views(prior.decode(prior.predict_x0(z_t, eps, t)), cams, prompt)
        colour.append(ev["colour_correct"])
        shape.append(ev["shape_correct"])
    assert sum(colour) / len(colour) >= 0.7, colour
    assert sum(shape) / len(shape) >= 0.6, shape


@pytest.mark.slow
def test_ddim_samples_from_noise_are_the_prompt_and_two_objects_are_ambiguous(prior):
    cams = random_cameras(CameraConfig(), 6, torch.Generator().manual_seed(3))
    prompts = [f"a {c} {s}" for c, s in zip(COLOURS, SHAPES * 2)]
    align = [evaluate_views(ddim_sample(prior, prior.encode_prompt(p), cams, 7.5, steps=20,
                                        generator=torch.Generator().manual_seed(i)), cams, p)["alignment"]
             for i, p in enumerate(prompts)]
    assert sum(align) / len(align) >= 0.75, align
    # two objects: the colours and shapes come out, but which colour sits on which shape is not fixed
    p = "a red cube and a blue sphere"
    evs = [evaluate_views(ddim_sample(prior, prior.encode_prompt(p), cams, 7.5, steps=20,
                                      generator=torch.Generator().manual_seed(100 + i)), cams, p) for i in range(4)]
    assert sum(e["colour_correct"] for e in evs) / 4 >= 0.6
    assert min(e["binding_correct"] for e in evs) < 0.9


def test_phrase_banks_hold_exactly_the_images_with_that_shape_in_that_colour(small_prior):
    L = small_prior._layouts[2]
    mask = L.phrase_mask("red", "cube")
    for g, shapes in enumerate(L.shapes):
        for n, colours in enumerate(L.colour_of):
            assert bool(mask[g, n]) == any(s == "cube" and c == "red" for s, c in zip(shapes, colours))
    assert torch.equal(L.phrase_mask(None, "cube"), L.word_mask("cube"))


def test_bound_phrases_give_the_two_objects_distinct_colours_where_words_alone_blend_them(small_prior):
    """'a red cube and a blue sphere' from a render with both objects purple: with words only (toy_binding 0)
    the red and blue banks pull both objects alike (SDS's fixed point is one blended colour); with bound
    phrases the one-step x̂0 gives the two objects more different colours, from every camera tried."""
    p = small_prior
    t = torch.tensor([700])
    gaps = {0.0: [], 1.0: []}
    try:
        for seed in range(6):
            cams = random_cameras(CameraConfig(), 1, torch.Generator().manual_seed(seed))
            maps = render_geometry(layout(("cube", "sphere")), cams, 32, 32, 1)
            own = [(maps.coverage[0, i] > 0.5) & ~(maps.coverage[0, 1 - i] > 0.5) for i in range(2)]
            purple = colourize(maps, torch.tensor([COLOURS["purple"], COLOURS["purple"]]))
            noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            z_t = p.add_noise(p.encode(purple), noise, t)
            for binding in gaps:
                p.binding = binding
                cond = p.encode_prompt("a red cube and a blue sphere")
                x0 = p.decode(p.predict_x0(z_t, p.predict_noise(z_t, t, cond, cams, 4.0).eps_cfg, t))[0]
                cube, sphere = (x0[:, o].mean(-1) for o in own)
                gaps[binding].append(float((cube - sphere).norm()))
    finally:
        p.binding = 0.0
    assert all(b > w for w, b in zip(gaps[0.0], gaps[1.0])), gaps
    assert sum(gaps[1.0]) - sum(gaps[0.0]) > 0.1 * len(gaps[0.0]), gaps

"""StableDiffusionPrior on tiny random-weight diffusers models saved and loaded like real ones."""
import math
import warnings

import pytest
import torch

from dreamdpo import losses
from dreamdpo.cameras import Cameras
from dreamdpo.errors import UserError
from dreamdpo.priors.stable_diffusion import StableDiffusionPrior, view_direction
from dreamdpo.priors.tiny import make_tiny_sd


@pytest.fixture(scope="module", autouse=True)
def offline():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def latent_dir(tiny_sd):
    return tiny_sd


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("px") / "tiny-px", latent=False)


@pytest.fixture(scope="module")
def prior(latent_dir):
    return StableDiffusionPrior.from_pretrained(latent_dir)


def cams(n, elevation=10.0, azimuth=None):
    az = torch.linspace(-180, 90, n) if azimuth is None else torch.tensor(azimuth, dtype=torch.float32)
    return Cameras(torch.full((n,), elevation), az, torch.full((n,), 2.0), torch.full((n,), 40.0))


class CallCounter:
    def __init__(self, module):
        self.calls, self.batches = 0, []
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.batches.append(args[0].shape[0])


def test_latent_prior_loads_in_fp32_with_scheduler_alphas(prior, latent_dir):
    from diffusers import DDPMScheduler

    assert prior.latent and prior.dtype == torch.float32 and prior.device.type == "cpu"
    assert prior.resolution == 32 and prior.scale_factor == 8  # native: U-Net sample_size 4 × 8
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in prior.unet.parameters())
    ref = DDPMScheduler.from_pretrained(latent_dir, subfolder="scheduler").alphas_cumprod
    assert torch.allclose(prior.alphas_cumprod, ref) and prior.num_train_timesteps == 1000


def test_encode_resizes_scales_and_keeps_gradient(prior):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    z = prior.encode(x)
    assert z.shape == (2, 4, 4, 4) and z.dtype == torch.float32
    small = torch.nn.functional.interpolate(x.detach(), (32, 32), mode="bilinear", align_corners=False)
    expected = prior.vae.encode(small * 2 - 1).latent_dist.mean * 0.18215
    assert torch.allclose(z.detach(), expected, atol=1e-6)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pair_of_two_views_is_one_unet_call(prior):
    counter = CallCounter(prior.unet)
    cond = prior.encode_prompt("a red cube")
    z_t = torch.randn(4, 4, 4, 4)  # 2 members × 2 views
    pred = prior.predict_noise(z_t, torch.full((4,), 500), cond, cams(4), 7.5)
    assert counter.calls == 1 and counter.batches == [8]  # [cond; neg] × 4
    assert pred.eps_cfg.shape == pred.eps_cond.shape == z_t.shape


def test_cfg_formula_and_negative_prompt_as_unconditional(prior):
    torch.manual_seed(0)
    z_t, t = torch.randn(2, 4, 4, 4), torch.tensor([300, 700])
    cond = prior.encode_prompt("a red cube", "blurry")
    pred = prior.predict_noise(z_t, t, cond, cams(2), 7.5)
    with torch.no_grad():
        e_c = prior.unet(z_t, t, encoder_hidden_states=cond.cond.expand(2, -1, -1)).sample
        e_n = prior.unet(z_t, t, encoder_hidden_states=cond.neg.expand(2, -1, -1)).sample
    assert torch.allclose(pred.eps_cond, e_c, atol=1e-5)
    assert torch.allclose(pred.eps_cfg, e_n + 7.5 * (e_c - e_n), atol=1e-4)
    other = prior.predict_noise(z_t, t, prior.encode_prompt("a red cube", "sharp"), cams(2), 7.5)
    assert torch.allclose(other.eps_cond, pred.eps_cond, atol=1e-6)
    assert not torch.allclose(other.eps_cfg, pred.eps_cfg, atol=1e-4)
    s1 = prior.predict_noise(z_t, t, cond, cams(2), 1.0)
    assert torch.allclose(s1.eps_cfg, s1.eps_cond, atol=1e-6)
    # a scalar timestep broadcasts to the batch
    s0 = prior.predict_noise(z_t, torch.tensor(300), cond, cams(2), 7.5)
    assert torch.allclose(s0.eps_cond[0], pred.eps_cond[0], atol=1e-6)


def test_x0_round_trip_and_decode_range(prior):
    torch.manual_seed(1)
    z, eps, t = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.tensor([20, 500, 980])
    z_t = prior.add_noise(z, eps, t)
    a = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(z_t, a.sqrt() * z + (1 - a).sqrt() * eps)
    assert torch.allclose(prior.predict_x0(z_t, eps, t), z, atol=1e-4)
    assert torch.allclose(prior.weight(t, z), 1 - a)
    img = prior.decode(z)
    assert img.shape == (3, 3, 32, 32) and img.min() >= 0 and img.max() <= 1 and not img.requires_grad


def test_pixel_space_prior(pixel_dir):
    p = StableDiffusionPrior.from_pretrained(pixel_dir)
    assert not p.latent and p.resolution == 32 and p.scale_factor == 1
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = p.encode(x)
    assert torch.allclose(z, x * 2 - 1)
    assert torch.allclose(p.decode(z), x.detach(), atol=1e-6)
    z.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))
    counter = CallCounter(p.unet)
    pred = p.predict_noise(z.detach(), torch.tensor([10, 10]), p.encode_prompt("a cube"), cams(2), 5.0)
    assert pred.eps_cfg.shape == (2, 3, 32, 32) and counter.calls == 1


def test_sds_gradient_reaches_the_render_through_the_vae(prior):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    z = prior.encode(x)
    t = torch.tensor([500])
    noise = torch.randn_like(z)
    pred = prior.predict_noise(prior.add_noise(z.detach(), noise, t), t, prior.encode_prompt("a cube"), cams(1), 7.5)
    grad = losses.sds_grad(pred.eps_cfg, noise, prior.weight(t, z))
    losses.surrogate_loss(z, grad).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_view_dependent_prompts(latent_dir):
    p = StableDiffusionPrior.from_pretrained(latent_dir, view_dependent_prompts=True)
    with pytest.warns(UserWarning) as rec:
        p.encode_prompt("a red cube " * 30)
    assert len(rec) == 1  # a cut prompt is reported once, not once per view
    cond = p.encode_prompt("a red cube")
    assert set(cond.views) == {"front", "side", "back", "overhead"}
    text = p._text_batch(cond, cams(3, azimuth=[0.0, 90.0, 180.0]), 3)
    assert torch.equal(text[0], cond.views["front"][0]) and torch.equal(text[1], cond.views["side"][0])
    assert torch.equal(text[2], cond.views["back"][0]) and not torch.equal(text[0], text[2])
    assert view_direction(10, 30) == "front" and view_direction(10, -170) == "back"
    assert view_direction(10, 60) == "side" and view_direction(75, 0) == "overhead"


def test_v_prediction_models_are_converted_to_noise(tmp_path):
    p = StableDiffusionPrior.from_pretrained(make_tiny_sd(tmp_path / "v", prediction_type="v_prediction"))
    z_t, t = torch.randn(1, 4, 4, 4), torch.tensor([400])
    cond = p.encode_prompt("a cube")
    with torch.no_grad():
        v = p.unet(z_t, t, encoder_hidden_states=cond.cond).sample
    a = float(p.alphas_cumprod[400])
    pred = p.predict_noise(z_t, t, cond, cams(1), 7.5)
    assert torch.allclose(pred.eps_cond, math.sqrt(a) * v + math.sqrt(1 - a) * z_t, atol=1e-5)


def test_long_prompt_warns_what_was_cut(prior):
    long = "a red cube " * 30
    with pytest.warns(UserWarning, match="cut") as rec:
        prior.encode_prompt(long)
    msg = str(rec[0].message)
    assert len(rec) == 1 and "\n" not in msg and "77" in msg and "red" in msg and "the prompt" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.encode_prompt("a red cube")  # a short prompt does not warn


def test_bad_inputs_are_one_line_user_errors(latent_dir, tmp_path):
    cases = [
        lambda: StableDiffusionPrior.from_pretrained(str(tmp_path / "missing")),
        lambda: StableDiffusionPrior.from_pretrained("someone/not-a-cached-model"),
        lambda: StableDiffusionPrior.from_pretrained(str(tmp_path)),  # a folder without unet/
        lambda: StableDiffusionPrior.from_pretrained(latent_dir, resolution=30),
    ]
    for case in cases:
        with pytest.raises(UserError) as e:
            case()
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="hf download someone/not-a-cached-model"):
        cases[1]()
    with pytest.raises(UserError, match="multiple of 8"):
        cases[3]()
    assert StableDiffusionPrior.from_pretrained(latent_dir, resolution=64).encode(torch.rand(1, 3, 16, 16)).shape[-1] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_half_precision_matches_cpu_fp32(latent_dir, prior):
    gpu = StableDiffusionPrior.from_pretrained(latent_dir, device="cuda")
    assert gpu.dtype == torch.float16 and next(gpu.unet.parameters()).dtype == torch.float16
    torch.manual_seed(4)
    x = torch.rand(2, 3, 32, 32)
    xg = x.cuda().requires_grad_(True)
    z = gpu.encode(xg)
    assert z.dtype == torch.float32 and torch.allclose(z.cpu(), prior.encode(x).detach(), atol=2e-2)
    z.sum().backward()
    assert torch.isfinite(xg.grad).all()
    t, z_t = torch.tensor([300, 600]), torch.randn(2, 4, 4, 4)
    ref = prior.predict_noise(z_t, t, prior.encode_prompt("a red cube"), cams(2), 7.5)
    got = gpu.predict_noise(z_t.cuda(), t.cuda(), gpu.encode_prompt("a red cube"), cams(2), 7.5)
    assert got.eps_cfg.dtype == torch.float32
    assert torch.allclose(got.eps_cond.cpu(), ref.eps_cond, atol=2e-2)
    assert torch.allclose(got.eps_cfg.cpu(), ref.eps_cfg, atol=1e-1)  # CFG multiplies fp16 error by 7.5


# ---------------------------------------------------------------- MVDream (4 views, camera-conditioned)

from dreamdpo.priors.mvdream import MultiViewAttnProcessor, MVDreamPrior, camera_condition  # noqa: E402
from dreamdpo.priors.tiny import make_tiny_mvdream  # noqa: E402


@pytest.fixture(scope="module")
def mvdream(latent_dir, tmp_path_factory):
    pt, ref = make_tiny_mvdream(tmp_path_factory.mktemp("mv") / "sd-v2.1-base-4view.pt", latent_dir)
    return MVDreamPrior.from_pretrained(pt, base=latent_dir, resolution=32), ref


def group_cams(groups):
    from dreamdpo.cameras import CameraConfig, random_cameras

    return random_cameras(CameraConfig(n_views=4), groups, torch.Generator().manual_seed(0))


def test_mvdream_checkpoint_converts_exactly(mvdream):
    prior, ref = mvdream
    state = prior.unet.state_dict()
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    assert prior.n_views == 4 and prior.latent and prior.resolution == 32
    assert prior.unet.config.class_embed_type == "projection"


def test_mvdream_views_of_a_group_attend_jointly(mvdream, prior):
    mv, _ = mvdream
    torch.manual_seed(6)
    z_t, t = torch.randn(8, 4, 4, 4), torch.full((8,), 400)
    cams8 = group_cams(2)
    counter = CallCounter(mv.unet)
    base = mv.predict_noise(z_t, t, mv.encode_prompt("a cube"), cams8, 7.5).eps_cond
    assert counter.calls == 1 and counter.batches == [16]  # 2 groups × 4 views × [prompt; negative]
    z2 = z_t.clone()
    z2[1] += 5.0 * torch.randn(4, 4, 4)  # change view 1 of group 0 only
    moved = mv.predict_noise(z2, t, mv.encode_prompt("a cube"), cams8, 7.5).eps_cond
    # small random weights make attention nearly uniform, so the effect is small but far above rounding
    assert (moved[0] - base[0]).abs().max() > 1e-6  # view 0 sees view 1
    assert (moved[4:] - base[4:]).abs().max() < 1e-7  # the other group does not
    sd_base = prior.predict_noise(z_t, t, prior.encode_prompt("a cube"), cams8, 7.5).eps_cond
    sd_moved = prior.predict_noise(z2, t, prior.encode_prompt("a cube"), cams8, 7.5).eps_cond
    assert (sd_moved[0] - sd_base[0]).abs().max() < 1e-7  # plain SD views are independent


def test_multiview_attention_matches_joint_softmax():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(7)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(8, 5, 16)  # 2 groups × 4 views, 5 tokens each
    got = MultiViewAttnProcessor(4)(attn, x)
    joint = x.reshape(2, 20, 16)
    q, k, v = (lin(joint).reshape(2, 20, 2, 8).transpose(1, 2) for lin in (attn.to_q, attn.to_k, attn.to_v))
    w = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    ref = attn.to_out[0]((w @ v).transpose(1, 2).reshape(2, 20, 16)).reshape(8, 5, 16)
    assert torch.allclose(got, ref, atol=1e-5)


def test_mvdream_camera_conditioning(mvdream):
    mv, _ = mvdream
    cams4 = group_cams(1)
    cond = camera_condition(cams4)
    m = cams4.c2w()
    assert cond.shape == (4, 16)
    assert torch.allclose(cond.reshape(4, 4, 4)[:, :3, :3], m[:, :3, :3])
    assert torch.allclose(cond.reshape(4, 4, 4)[:, :3, 3].norm(dim=1), torch.ones(4), atol=1e-5)
    z_t, t = torch.randn(4, 4, 4, 4), torch.full((4,), 400)
    c = mv.encode_prompt("a cube")
    turned = Cameras(cams4.elevation, cams4.azimuth + 30.0, cams4.distance, cams4.fovy)
    a = mv.predict_noise(z_t, t, c, cams4, 7.5).eps_cond
    b = mv.predict_noise(z_t, t, c, turned, 7.5).eps_cond
    assert not torch.allclose(a, b, atol=1e-5)
    far = Cameras(cams4.elevation, cams4.azimuth, cams4.distance * 3, cams4.fovy)  # distance is normalised away
    assert torch.allclose(mv.predict_noise(z_t, t, c, far, 7.5).eps_cond, a, atol=1e-5)


def test_mvdream_bad_inputs(mvdream, latent_dir, tmp_path):
    mv, _ = mvdream
    with pytest.raises(UserError, match="groups of 4"):
        mv.predict_noise(torch.randn(6, 4, 4, 4), torch.full((6,), 10), mv.encode_prompt("a"), cams(6), 7.5)
    with pytest.raises(UserError, match="MVDream/MVDream") as e:
        MVDreamPrior.from_pretrained(str(tmp_path / "missing.pt"), base=latent_dir)
    assert "\n" not in str(e.value)
    no_camera = {k: v for k, v in torch.load(mv_checkpoint(tmp_path, latent_dir))["state_dict"].items()
                 if "camera_embed" not in k}
    torch.save(no_camera, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="camera embedding"):
        MVDreamPrior.from_pretrained(str(tmp_path / "plain.pt"), base=latent_dir)


def mv_checkpoint(tmp_path, latent_dir):
    return make_tiny_mvdream(tmp_path / "mv.pt", latent_dir)[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mvdream_cuda_half_precision_matches_cpu(mvdream, latent_dir, tmp_path):
    mv, _ = mvdream
    gpu = MVDreamPrior.from_pretrained(mv_checkpoint(tmp_path, latent_dir), base=latent_dir, resolution=32,
                                       device="cuda")
    assert gpu.dtype == torch.float16
    z_t, t, c4 = torch.randn(8, 4, 4, 4), torch.full((8,), 400), group_cams(2)
    ref = mv.predict_noise(z_t, t, mv.encode_prompt("a cube"), c4, 7.5).eps_cond
    got = gpu.predict_noise(z_t.cuda(), t.cuda(), gpu.encode_prompt("a cube"), c4.to("cuda"), 7.5).eps_cond
    assert torch.allclose(got.cpu(), ref, atol=2e-2)

"""Time the Stable-Diffusion prior: predict_noise (one batched U-Net call, CFG), encode fwd+bwd, decode.

    python bench/bench_prior.py                          # tiny random model, CPU, batches 1 2 4 8
    python bench/bench_prior.py --device cuda --arch sd21  # SD 2.1-base architecture, random weights
    python bench/bench_prior.py --device cuda --arch mvdream --batches 4 8  # MVDream architecture (4 views)

`--arch tiny` writes the tiny model (dreamdpo/priors/tiny.py) to a temp dir and loads it through
StableDiffusionPrior.from_pretrained, as users load real weights. `--arch sd21` builds the SD 2.1-base
U-Net, VAE and text encoder from their configs with random weights (no hub here): timings only.
Batch N = N latents, so the U-Net sees 2N (cond + negative); a DreamDPO pair of V views is N = 2V.
Prints a markdown table for bench/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamdpo.cameras import CameraConfig, random_cameras
from dreamdpo.priors.stable_diffusion import StableDiffusionPrior


def sd21_prior(device: torch.device, resolution: int | None = None, mvdream: bool = False) -> StableDiffusionPrior:
    """SD 2.1-base's architecture (diffusers configs of stabilityai/stable-diffusion-2-1-base), random weights;
    mvdream=True: MVDream's variant (camera embedding, joint 4-view self-attention, 256 px)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamdpo.priors.mvdream import MVDreamPrior, mvdream_unet_config
    from dreamdpo.priors.tiny import write_clip_tokenizer

    unet_cfg = dict(
        sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        block_out_channels=(320, 640, 1280, 1280), use_linear_projection=True, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    unet = UNet2DConditionModel(**(mvdream_unet_config(unet_cfg) if mvdream else unet_cfg))
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        hidden_act="gelu", projection_dim=512,
    ))
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok"))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cls = MVDreamPrior if mvdream else StableDiffusionPrior
    return cls(unet, text, tok, sched.alphas_cumprod, vae=vae, name=("mvdream" if mvdream else "sd21") + "-arch-random",
               device=device, resolution=resolution)


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> str:
    """'median (min)' wall time in ms, CUDA synchronised; the min shows the cost without other load."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return f"{statistics.median(times):.1f} ({min(times):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", choices=["tiny", "sd21", "mvdream"], default="tiny")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--render", type=int, default=64, help="render size fed to encode (resized to the prior's)")
    ap.add_argument("--resolution", type=int, default=None, help="prior input size (default: the model's native)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.arch == "tiny":
        from dreamdpo.priors.tiny import make_tiny_sd

        prior = StableDiffusionPrior.from_pretrained(make_tiny_sd(Path(tempfile.mkdtemp()) / "tiny"), device=device,
                                                 resolution=args.resolution)
    else:
        prior = sd21_prior(device, args.resolution, mvdream=args.arch == "mvdream")
    cond = prior.encode_prompt("a DSLR photo of a red cube on a wooden table")
    cpu = f"CPU ({platform.processor() or 'x86-64'}, {torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"prior {prior.name}, {prior.dtype}, resolution {prior.resolution}, device {name}, torch {torch.__version__}")
    print("| batch N (U-Net sees 2N) | predict_noise ms, median (min) | encode fwd+bwd ms | decode ms |")
    print("|---|---|---|---|")
    for n in args.batches:
        x = torch.rand(n, 3, args.render, args.render, device=device)
        z = prior.encode(x).detach()
        t = torch.full((n,), 500, device=device)
        z_t = prior.add_noise(z, torch.randn_like(z), t)
        cams = random_cameras(CameraConfig(n_views=prior.n_views), n // prior.n_views)
        predict = timed(lambda z_t=z_t, t=t, cams=cams: prior.predict_noise(z_t, t, cond, cams, 7.5),
                        device, args.repeats)

        def enc_bwd(x=x):
            xr = x.clone().requires_grad_(True)
            prior.encode(xr).sum().backward()

        encode = timed(enc_bwd, device, args.repeats)
        decode = timed(lambda z=z: prior.decode(z), device, args.repeats)
        print(f"| {n} | {predict} | {encode} | {decode} |")


if __name__ == "__main__":
    main()

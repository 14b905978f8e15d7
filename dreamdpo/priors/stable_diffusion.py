"""Any diffusers Stable-Diffusion-style model as a prior: SD 2.1 by hub id or local folder.

Components are read from the diffusers folder layout: unet/, text_encoder/, tokenizer/, scheduler/
and, for a latent-space model, vae/. Without vae/ the U-Net works on pixels in [-1, 1].
Weights come from a local folder or the local Hugging Face cache; the hub is contacted only when the
caller asks for it (local_files_only=False), never silently.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.errors import UserError
from dreamdpo.priors.base import DiffusionPrior, NoisePrediction

# files a Stable-Diffusion-style folder needs (safetensors only when downloading on request)
_ALLOW_PATTERNS = [
    "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
    "text_encoder/model.safetensors", "tokenizer/*", "scheduler/*",
]

# threestudio's view-dependent prompting: later rules override earlier ones (overhead wins)
VIEW_SUFFIXES = ("side", "front", "back", "overhead")


def view_direction(elevation: float, azimuth: float, front_threshold: float = 45.0,
                   back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> str:
    """'front' | 'side' | 'back' | 'overhead' for a camera (degrees; azimuth 0 = front)."""
    az = (azimuth + 180.0) % 360.0 - 180.0
    name = "side"
    if -front_threshold < az < front_threshold:
        name = "front"
    if abs(az) > 180.0 - back_threshold:
        name = "back"
    if elevation > overhead_threshold:
        name = "overhead"
    return name


@dataclass
class SDConditioning:
    """Text embeddings [1, L, D]: the prompt, the negative prompt, and per-view variants if enabled."""

    cond: Tensor
    neg: Tensor
    views: dict[str, Tensor] = field(default_factory=dict)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model_dir(model_id_or_path: str, local_files_only: bool | None = None) -> Path:
    """A local folder, or the cached snapshot of a hub id. Fails fast with a one-line UserError."""
    path = Path(model_id_or_path).expanduser()
    if path.is_dir():
        return path
    how = (f"download it on a connected machine with `hf download {model_id_or_path}` "
           "(it lands in the Hugging Face cache) or pass a local folder in the diffusers layout")
    looks_like_path = model_id_or_path.startswith(("/", ".", "~")) or model_id_or_path.count("/") != 1
    if looks_like_path:
        raise UserError(
            f"no model folder at '{model_id_or_path}'; pass a folder in the diffusers layout (unet/, text_encoder/, "
            "tokenizer/, scheduler/, optional vae/) or a hub id such as stabilityai/stable-diffusion-2-1-base "
            "that is in the local Hugging Face cache")
    from huggingface_hub import snapshot_download

    only_local = True if local_files_only is None else local_files_only
    try:
        return Path(snapshot_download(model_id_or_path, allow_patterns=_ALLOW_PATTERNS,
                                      local_files_only=only_local or _offline()))
    except Exception as e:  # LocalEntryNotFoundError, network errors, unknown repo …
        raise UserError(f"model '{model_id_or_path}' is not available here ({type(e).__name__}); {how}") from None


class StableDiffusionPrior(DiffusionPrior):
    """Frozen SD-style U-Net with classifier-free guidance; the negative prompt is the unconditional branch."""

    def __init__(self, unet, text_encoder, tokenizer, alphas_cumprod: Tensor, *, vae=None,
                 name: str = "stable-diffusion", device=None, dtype=None, resolution: int | None = None,
                 view_dependent_prompts: bool = False, prediction_type: str = "epsilon"):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.name = name
        self.unet = self._frozen(unet)
        self.text_encoder = self._frozen(text_encoder)
        self.vae = self._frozen(vae) if vae is not None else None
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise UserError(f"{name}: unsupported scheduler prediction_type '{prediction_type}'")
        self.prediction_type = prediction_type
        self.view_dependent_prompts = view_dependent_prompts
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215)) if vae is not None else 1.0
        native = int(unet.config.sample_size) * self.scale_factor
        self.resolution = int(resolution) if resolution is not None else native
        if self.resolution <= 0 or self.resolution % self.scale_factor:
            raise UserError(
                f"resolution {self.resolution} is not a multiple of {self.scale_factor} (the VAE's downsampling) "
                f"for {name}; use e.g. "
                f"{max(self.scale_factor, self.resolution // self.scale_factor * self.scale_factor)}"
            )

    def _frozen(self, module):
        module = module.to(device=self.device)
        if module.dtype != self.dtype:
            module = module.to(dtype=self.dtype)
        return module.eval().requires_grad_(False)

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, *, device=None, dtype=None,
                        view_dependent_prompts: bool = False, resolution: int | None = None,
                        local_files_only: bool | None = None) -> StableDiffusionPrior:
        """Load by hub id (from the local cache unless local_files_only=False) or local folder."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = resolve_model_dir(model_id_or_path, local_files_only)
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        kw = {"torch_dtype": dtype, "low_cpu_mem_usage": False}
        if not (root / "unet").is_dir():
            raise UserError(f"'{model_id_or_path}' is not a Stable-Diffusion-style model folder (no unet/ inside)")
        try:
            unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
            vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw) if (root / "vae").is_dir() else None
            text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
            with warnings.catch_warnings():  # SD folders ship a PNDM config: same betas, same ᾱ_t
                warnings.simplefilter("ignore")
                scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load '{model_id_or_path}' as a Stable-Diffusion-style model: {first}") from None
        return cls(unet, text_encoder, tokenizer, scheduler.alphas_cumprod, vae=vae, name=str(model_id_or_path),
                   device=device, dtype=dtype, resolution=resolution,
                   view_dependent_prompts=view_dependent_prompts,
                   prediction_type=scheduler.config.prediction_type)

    # ---------------------------------------------------------------- text
    def _embed(self, text: str) -> tuple[Tensor, str | None]:
        """Text → [1, L, D] embeddings, and the end of the text that did not fit (None if it all fit)."""
        tok = self.tokenizer
        max_len = tok.model_max_length
        full = tok(text, truncation=False, verbose=False).input_ids
        cut = tok.decode(full[max_len - 1: -1]) if len(full) > max_len else None
        ids = tok(text, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = ids.attention_mask.to(self.device) if use_mask else None
        with torch.no_grad():
            return self.text_encoder(ids.input_ids.to(self.device), attention_mask=mask)[0], cut

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> SDConditioning:
        """Embeddings of the prompt, the negative prompt and (if enabled) the prompt + ', <view> view'.
        Warns once per text that does not fit the text encoder, saying what was cut."""
        texts = {"prompt": prompt, "negative prompt": negative_prompt}
        if self.view_dependent_prompts:
            texts.update({v: f"{prompt}, {v} view" for v in VIEW_SUFFIXES})
        out, max_len, prompt_cut = {}, self.tokenizer.model_max_length, False
        for key, text in texts.items():
            out[key], cut = self._embed(text)
            view = key in VIEW_SUFFIXES
            if cut is not None and not (view and prompt_cut):  # a cut prompt is reported once, not per view
                label = f"{key}-view prompt" if view else key
                warnings.warn(f"the {label} is longer than the {max_len} tokens the text encoder takes; "
                              f"this end was cut: '{cut}'", UserWarning, stacklevel=2)
            prompt_cut = prompt_cut or (key == "prompt" and cut is not None)
        return SDConditioning(cond=out["prompt"], neg=out["negative prompt"],
                              views={v: out[v] for v in VIEW_SUFFIXES if v in out})

    # ---------------------------------------------------------------- images ↔ z
    def encode(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] → z (float32), resized to self.resolution; keeps the autograd graph.
        The VAE posterior mean is used (deterministic, so resumed runs repeat exactly)."""
        x = images
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        z = self.vae.encode(x.to(self.dtype)).latent_dist.mean
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        if self.vae is not None:
            z = self.vae.decode((z / self.scaling_factor).to(self.dtype)).sample
        return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- noise
    def _text_batch(self, cond: SDConditioning, cameras: Cameras, n: int) -> Tensor:
        if not (self.view_dependent_prompts and cond.views):
            return cond.cond.expand(n, -1, -1)
        if len(cameras) != n:
            raise ValueError(f"predict_noise got {n} latents but {len(cameras)} cameras")
        names = [view_direction(float(e), float(a)) for e, a in zip(cameras.elevation, cameras.azimuth)]
        return torch.cat([cond.views[v] for v in names])

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Tensor, cond: SDConditioning, cameras: Cameras,
                      guidance_scale: float) -> NoisePrediction:
        n = z_t.shape[0]
        text = torch.cat([self._text_batch(cond, cameras, n), cond.neg.expand(n, -1, -1)])
        t = t.to(self.device).long().reshape(-1)
        t = t.expand(n) if t.numel() == 1 else t
        zz, tt = torch.cat([z_t, z_t]).to(self.device), torch.cat([t, t])
        out = self.unet(
            zz.to(self.dtype), tt, encoder_hidden_states=text.to(self.dtype), **self._unet_inputs(cameras, n),
        ).sample.float()
        eps_cond, eps_neg = self._to_eps(out, zz.float(), tt).chunk(2)
        return NoisePrediction(eps_cfg=eps_neg + guidance_scale * (eps_cond - eps_neg), eps_cond=eps_cond)

    def _unet_inputs(self, cameras: Cameras, n: int) -> dict:
        """Extra U-Net inputs for the [prompt; negative] batch of 2n (camera conditioning in subclasses)."""
        return {}

    def _to_eps(self, out: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """The U-Net's output as a noise prediction, whatever the scheduler's prediction_type."""
        if self.prediction_type == "epsilon":
            return out
        a = self._abar(t, z_t)
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x0  ⇒  ε = √ᾱ v + √(1−ᾱ) z_t
            return a.sqrt() * out + (1 - a).sqrt() * z_t
        return (z_t - a.sqrt() * out) / (1 - a).sqrt()  # 'sample': out = x0

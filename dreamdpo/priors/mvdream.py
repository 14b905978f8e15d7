"""MVDream (4-view, camera-conditioned Stable Diffusion 2.1-base) as a prior, on diffusers classes.

MVDream's U-Net is SD 2.1-base's with two changes (bytedance/MVDream, openaimodel.MultiViewUNetModel):
- a camera embedding, Linear(16→4C)·SiLU·Linear(4C→4C) of the flattened 4×4 camera-to-world matrix,
  added to the timestep embedding: diffusers' `class_embed_type="projection"` is the same layer;
- in every transformer block the self-attention (attn1) runs over the tokens of all views of a group
  at once ("(b f) l c → b (f l) c"): `MultiViewAttnProcessor` below.
The released checkpoint (sd-v2.1-base-4view.pt, hub repo MVDream/MVDream) is an ldm state dict; its
U-Net is converted with diffusers' own ldm converter. The VAE, text encoder (OpenCLIP ViT-H, penultimate
layer), tokenizer and noise schedule are SD 2.1-base's, which MVDream kept frozen, so they are loaded
from an SD 2.1-base folder or cached hub id in the diffusers layout.

Camera convention: the reference code (threestudio) feeds its camera-to-world matrices (z-up world,
OpenGL camera axes) with the translation scaled to unit length; dreamdpo.cameras uses the same
convention, so `Cameras.c2w()` is passed the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dreamdpo.cameras import Cameras
from dreamdpo.errors import UserError
from dreamdpo.priors.stable_diffusion import StableDiffusionPrior

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
MVDREAM_REPO, MVDREAM_FILE = "MVDream/MVDream", "sd-v2.1-base-4view.pt"
CAMERA_DIM = 16


class MultiViewAttnProcessor:
    """Self-attention across the views of each group: [B·F, L, C] → attend over F·L tokens → back."""

    def __init__(self, num_views: int):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.num_views, self.inner = num_views, AttnProcessor2_0()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> Tensor:
        n, length, c = hidden_states.shape
        f = self.num_views
        joint = hidden_states.reshape(n // f, f * length, c)
        out = self.inner(attn, joint, encoder_hidden_states, attention_mask, temb)
        return out.reshape(n, length, c)


def set_multiview_attention(unet, num_views: int) -> None:
    """Make every self-attention (attn1) of the U-Net attend jointly over groups of num_views images."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor({
        name: MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    })


def camera_condition(cameras: Cameras) -> Tensor:
    """[N, 16]: camera-to-world matrices with the position scaled to unit length, flattened (MVDream's input)."""
    m = cameras.c2w().clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (t.norm(dim=1, keepdim=True) + 1e-8)
    return m.reshape(-1, 16)


def mvdream_unet_config(base_unet_config: dict, sample_size: int = 32) -> dict:
    """SD 2.1-base's U-Net config plus the camera embedding; MVDream was trained at 256 px (latents 32)."""
    cfg = {k: v for k, v in dict(base_unet_config).items() if not k.startswith("_")}
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM,
               sample_size=sample_size)
    return cfg


def ldm_to_diffusers_unet(state: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """MVDream ldm keys (model.diffusion_model.*) → UNet2DConditionModel keys, camera embedding included."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    plain = {k: v for k, v in config.items() if k not in ("class_embed_type", "projection_class_embeddings_input_dim")}
    out = convert_ldm_unet_checkpoint(state, plain)
    prefix = "model.diffusion_model.camera_embed."
    for ldm, hf in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            key = f"{prefix}{ldm}.{p}"
            if key not in state:
                raise UserError("the checkpoint has no camera embedding (model.diffusion_model.camera_embed.*): "
                                "is it an MVDream 4-view checkpoint?")
            out[f"class_embedding.{hf}.{p}"] = state[key]
    return out


class MVDreamPrior(StableDiffusionPrior):
    """4 views 90° apart, denoised jointly; batches are groups of n_views consecutive images."""

    def __init__(self, *args, n_views: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_views = n_views
        set_multiview_attention(self.unet, n_views)

    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, *, base: str = SD21_BASE, device=None, dtype=None,
                        resolution: int | None = None, view_dependent_prompts: bool = False,
                        local_files_only: bool | None = None, n_views: int = 4) -> MVDreamPrior:
        """checkpoint: sd-v2.1-base-4view.pt (None → the copy in the Hugging Face cache of MVDream/MVDream);
        base: SD 2.1-base (diffusers layout) for the VAE, text encoder, tokenizer and schedule."""
        from diffusers import UNet2DConditionModel

        ckpt = _find_checkpoint(checkpoint)
        sd = StableDiffusionPrior.from_pretrained(base, device="cpu", dtype=torch.float32,
                                                  local_files_only=local_files_only)
        if sd.vae is None:
            raise UserError(f"MVDream needs a latent SD 2.1-base as its base; '{base}' has no vae/")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise UserError(
                f"cannot read MVDream weights at {ckpt} ({type(e).__name__}); download the file again"
            ) from None
        state = state.get("state_dict", state)
        config = mvdream_unet_config(sd.unet.config)
        unet = UNet2DConditionModel.from_config(config)
        missing, unexpected = unet.load_state_dict(ldm_to_diffusers_unet(state, config), strict=False)
        if missing or unexpected:
            raise UserError(f"{ckpt} does not fit the SD 2.1-base U-Net of '{base}' "
                            f"(missing {list(missing)[:2]}, unexpected {list(unexpected)[:2]})")
        del state
        return cls(unet, sd.text_encoder, sd.tokenizer, sd.alphas_cumprod.cpu(), vae=sd.vae,
                   name=f"mvdream:{Path(ckpt).name}", device=device, dtype=dtype, resolution=resolution,
                   view_dependent_prompts=view_dependent_prompts,
                   prediction_type=sd.prediction_type, n_views=n_views)

    def _unet_inputs(self, cameras: Cameras, n: int) -> dict:
        if n % self.n_views:
            raise UserError(f"MVDream denoises groups of {self.n_views} views; got a batch of {n}")
        if len(cameras) != n:
            raise ValueError(f"predict_noise got {n} latents but {len(cameras)} cameras")
        cam = camera_condition(cameras).to(self.device, self.dtype)
        return {"class_labels": torch.cat([cam, cam])}  # the same cameras for the prompt and negative halves


def _find_checkpoint(path: str | None) -> Path:
    how = (f"download it on a connected machine (`hf download {MVDREAM_REPO} {MVDREAM_FILE}`) and pass its path")
    if path is None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(MVDREAM_REPO, MVDREAM_FILE)
        if isinstance(found, str):
            return Path(found)
        raise UserError(f"MVDream weights not found in the local Hugging Face cache; {how}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"MVDream weights not found at {p}; {how}")
    return p


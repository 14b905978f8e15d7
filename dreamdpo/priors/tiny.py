"""Tiny random-weight diffusers models, built in code and saved like a real hub folder.

For smoke tests and benchmarks without weights (no hub is needed): `make_tiny_sd(path)` writes the
Stable Diffusion layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/) with `save_pretrained`, so
callers load it through the same loader users call with real weights. The CLIP tokenizer's vocab.json
and merges.txt are written here, offline. Used by tests/ and bench/ alike.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# a few merges so that common words become single tokens (and the vocab is not only bytes)
MERGES = [("r", "e"), ("e", "d</w>"), ("c", "u"), ("cu", "b"), ("cub", "e</w>"), ("a", "n"), ("t", "h")]


def write_clip_tokenizer(path: str | Path, model_max_length: int = 77) -> Path:
    """A byte-level CLIP BPE tokenizer (vocab.json + merges.txt) loadable with CLIPTokenizer.from_pretrained."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": model_max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))
    return path


def make_tiny_sd(
    path: str | Path,
    latent: bool = True,
    *,
    resolution: int = 32,
    prediction_type: str = "epsilon",
    model_max_length: int = 77,
    seed: int = 0,
) -> str:
    """Write a tiny SD-style model folder at `path` and return it as a string.

    latent=True: VAE with 8× downsampling (like SD), 4 latent channels; the U-Net works at resolution/8.
    latent=False: no vae/ folder, a pixel-space U-Net on 3-channel images at `resolution`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(root / "tokenizer", model_max_length)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    channels = 4 if latent else 3
    if latent:
        AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=4, sample_size=resolution,
        ).save_pretrained(root / "vae")
    UNet2DConditionModel(
        sample_size=resolution // 8 if latent else resolution, in_channels=channels, out_channels=channels,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    ).save_pretrained(root / "unet")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    return str(root)


def diffusers_unet_to_ldm(state: dict, config: dict) -> dict:
    """UNet2DConditionModel state dict → original ldm (openaimodel) names, the layout MVDream's .pt uses.
    The inverse of diffusers' convert_ldm_unet_checkpoint for SD-shaped U-Nets (tests check the round trip)."""
    L = config["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    n = len(down_attn)
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("class_embedding.linear_1.", "camera_embed.0."), ("class_embedding.linear_2.", "camera_embed.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                ("mid_block.attentions.0.", "middle_block.1.")]
    prefixes += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(n):
        for j in range(L):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.0."))
            if down_attn[i]:
                prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.1."))
        if i < n - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(L + 1) * (i + 1)}.0.op."))
        for j in range(L + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(L + 1) * i + j}.0."))
            if up_attn[i]:
                prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(L + 1) * i + j}.1."))
        if i < n - 1:
            up_sampler = f"output_blocks.{(L + 1) * i + L}.{2 if up_attn[i] else 1}."
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", up_sampler))
    resnet = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
              ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]
    out = {}
    for key, v in state.items():
        hf, ldm = max(((h, s) for h, s in prefixes if key.startswith(h)), key=lambda p: len(p[0]))
        rest = key[len(hf):]
        if ".resnets." in hf:
            for a, b in resnet:
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
        out["model.diffusion_model." + ldm + rest] = v
    return out


def make_tiny_mvdream(path: str | Path, base_dir: str | Path, *, seed: int = 1) -> tuple[str, dict]:
    """An MVDream-format checkpoint (ldm names, camera embedding) for the tiny SD at base_dir.
    Returns the .pt path and the diffusers state dict it was made from (to check the loader)."""
    from diffusers import UNet2DConditionModel

    from dreamdpo.priors.mvdream import mvdream_unet_config

    base = UNet2DConditionModel.load_config(Path(base_dir) / "unet")
    config = mvdream_unet_config(base, sample_size=base["sample_size"])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    for p in unet.parameters():  # diffusers zero-initialises some outputs; random everywhere tests more
        torch.nn.init.normal_(p, std=0.05)
    state = unet.state_dict()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": diffusers_unet_to_ldm(state, config)}, path)
    return str(path), state

"""Reward-model judges: HPSv2 and ImageReward, loaded through transformers' CLIP and BLIP classes.

Why not the published packages: `hpsv2` 1.2 ships without its tokenizer vocabulary and pins old
pytest/protobuf; `image-reward` 1.5 breaks on transformers 5 and drags a CUDA torchvision in; and
open_clip needs torchvision, which does not import beside CPU torch (shared/FINDINGS.md). Both models
are plain architectures, so their published state dicts are loaded here into the maintained classes:

- HPSv2 = open_clip ViT-H-14 fine-tuned end to end. Its checkpoint (HPS_v2_compressed.pt or
  HPS_v2.1_compressed.pt from the hub repo xswu/HPSv2, `{"state_dict": ...}` in open_clip names) is
  renamed into `transformers.CLIPModel`. Score = cosine similarity of the normalised image and text
  embeddings, NOT multiplied by the logit scale: exactly what `hpsv2.score` returns (≈ 0.2–0.3).
- ImageReward = BLIP ViT-L/16 image encoder + BERT-base text encoder with cross-attention + an MLP
  head. Its checkpoint (ImageReward.pt + med_config.json from the hub repo THUDM/ImageReward, BLIP's
  original names) is renamed into `BlipVisionModel` / `BlipTextModel`. Score = (MLP(text [CLS]
  feature) − 0.16717) / 1.03334, the package's z-normalised reward. Tokenizer: bert-base-uncased
  plus BLIP's [DEC]/[ENC] tokens, prompts padded/cut to 35 tokens, as in the package.

Both take [V,3,H,W] images in [0,1] (blurry one-step estimates are fine) and preprocess them exactly as
the originals' scoring paths do, for every size and aspect ratio (`hps_preprocess`,
`imagereward_preprocess`): HPSv2 resizes the longest side and pads, ImageReward resizes the short side
with PIL and centre-crops.
Nothing here downloads: weights come from a path or the local caches; otherwise a one-line UserError.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamdpo.errors import UserError
from dreamdpo.judges.base import Judge, JudgeContext, Judgement, judgement_from_scores

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # any OpenAI-BPE CLIP tokenizer is the same
HPS_FILES = ("HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt")


class Scorer(Protocol):
    def score(self, images: Tensor, prompt: str) -> Tensor:
        """[V,3,H,W] in [0,1] → [V] scores (higher is better)."""

    def features(self, images: Tensor) -> Tensor:
        """[V,3,H,W] in [0,1] → [V,D] the image embedding the score is computed from."""


class RewardJudge(Judge):
    """Scores both candidates in one batched call; winner by mean score over views (ties → 'a')."""

    def __init__(self, scorer: Scorer, name: str):
        self.scorer, self.name = scorer, name

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        scores = self.scorer.score(torch.cat([images_a, images_b]), prompt).float().cpu()
        v = images_a.shape[0]
        return judgement_from_scores(self.name, scores[:v], scores[v:])

    def score(self, images: Tensor, prompt: str) -> Tensor:
        return self.scorer.score(images, prompt).float().cpu()

    def features(self, images: Tensor) -> Tensor:
        return self.scorer.features(images).float().cpu()


def _normalise(x: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - m) / s


def hps_preprocess(images: Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """hpsv2's `score()` preprocessing (`preprocess_val` of its open_clip: `ResizeMaxSize(size)`, ToTensor,
    Normalize) applied to a float image tensor, as torchvision applies it to tensors: scale = size / max(H, W);
    bicubic resize to (round(H·scale), round(W·scale)) with antialiasing on (torchvision's tensor default, PIL's
    bicubic filter, also when upscaling), on the float values as given (no clamp before or after); zero padding
    of pad_w//2 left, pad_h//2 top and the rest right/bottom to size×size; then CLIP mean/std (the padding
    becomes −mean/std, as in the original, which pads before normalising). Where the original does nothing
    (longest side already `size`), nothing is done, except that a non-square image is still padded square
    (the original would hand the model a non-square image, which the ViT cannot take)."""
    x = images.float()
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(x, (nh, nw), mode="bicubic", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    pad_h, pad_w = size - h, size - w
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return _normalise(x, mean, std)


def imagereward_preprocess(images: Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """image-reward's `ImageReward.score` preprocessing, exactly, on the PNG the log stores for each view:
    each [0,1] view is rounded to uint8 as `dreamdpo.images.to_uint8` does (the original takes PIL images
    only), then BLIP's transform runs through PIL itself: torchvision's Resize(size, BICUBIC) on a PIL image =
    `Image.resize` of the short side to `size` and the long side to int(size·long/short), PIL's antialiased
    bicubic with uint8 rounding; CenterCrop(size) with offsets int(round((H − size)/2)); ToTensor (/255);
    Normalize with the CLIP mean/std BLIP uses."""
    import numpy as np
    from PIL import Image

    from dreamdpo.images import to_uint8

    views = []
    for arr in to_uint8(images):
        img = Image.fromarray(arr)
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short != size:
            new_long = int(size * long / short)
            img = img.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
        w, h = img.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        views.append(np.asarray(img.crop((left, top, left + size, top + size))))
    x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).to(images.device).float() / 255.0
    return _normalise(x, mean, std)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _torch_load(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {what} weights at {path} ({type(e).__name__}); download the file again") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a {what} state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repo if it is already in the local Hugging Face cache (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


# ====================================================================== HPSv2


def open_clip_to_hf_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an open_clip CLIP state dict (OpenAI layout) to transformers.CLIPModel's names."""
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        m = re.match(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", key)
        if m:
            tower = "vision_model" if m.group(1) else "text_model"
            pre, rest = f"{tower}.encoder.layers.{m.group(2)}.", m.group(3)
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[-1]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{pre}self_attn.{name}.{kind}"] = part
                continue
            rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[pre + rest] = v
            continue
        simple = {
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
            "logit_scale": "logit_scale",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
            "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "visual.ln_post.weight": "vision_model.post_layernorm.weight",
            "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        }
        if key in simple:
            out[simple[key]] = v
        elif key == "text_projection":  # open_clip: x @ P ; transformers: Linear (x @ Wᵀ)
            out["text_projection.weight"] = v.t().contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif key == "attn_mask":
            continue  # open_clip's causal mask buffer
        else:
            raise UserError(f"unexpected key '{key}' in the HPSv2 checkpoint: is it an open_clip ViT-H-14 state dict?")
    return out


def hf_clip_config_from_open_clip(state: dict[str, Tensor], vision_head_width: int = 80,
                                  text_head_width: int = 64):
    """CLIPConfig read off an open_clip state dict's shapes (head widths: ViT-H-14's 80 and 64)."""
    from transformers import CLIPConfig

    n_layers = lambda prefix: len({k.split(".")[prefix.count(".")]  # noqa: E731
                                   for k in state if k.startswith(prefix)})
    v_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    t_width = state["ln_final.weight"].shape[0]
    return CLIPConfig(
        projection_dim=state["visual.proj"].shape[1],
        text_config=dict(
            vocab_size=state["token_embedding.weight"].shape[0], hidden_size=t_width,
            intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=n_layers("transformer.resblocks."), num_attention_heads=t_width // text_head_width,
            max_position_embeddings=state["positional_embedding"].shape[0], hidden_act="gelu",
            layer_norm_eps=1e-5, bos_token_id=None, pad_token_id=None,
            eos_token_id=2,  # 2 = pool at argmax(token id), as open_clip does
        ),
        vision_config=dict(
            hidden_size=v_width, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=n_layers("visual.transformer.resblocks."),
            num_attention_heads=v_width // vision_head_width, image_size=grid * patch, patch_size=patch,
            hidden_act="gelu", layer_norm_eps=1e-5,
        ),
    )


class HPSv2Scorer:
    """HPS v2 / v2.1 (open_clip ViT-H-14 weights) on transformers.CLIPModel; score = raw cosine similarity."""

    def __init__(self, model, tokenizer, device=None, dtype=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or _default_dtype(self.device)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self._text_cache: tuple[str, Tensor] | None = None

    @classmethod
    def from_pretrained(cls, checkpoint_path: str | None = None, *, tokenizer: str | None = None,
                        device=None, dtype=None, vision_head_width: int = 80,
                        text_head_width: int = 64) -> HPSv2Scorer:
        """checkpoint_path: HPS_v2*.pt, or a folder holding it (and optionally the tokenizer files);
        None → the file cached from the hub repo xswu/HPSv2. tokenizer: a CLIP tokenizer folder or
        cached hub id (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."""
        from transformers import CLIPModel, CLIPTokenizer

        ckpt = _find_hps_checkpoint(checkpoint_path)
        state = _torch_load(ckpt, "HPSv2")
        if "visual.conv1.weight" not in state:
            raise UserError(f"{ckpt} is not an open_clip CLIP state dict (no visual.conv1.weight); pass HPS_v2*.pt")
        config = hf_clip_config_from_open_clip(state, vision_head_width, text_head_width)
        model = CLIPModel(config)
        missing, unexpected = model.load_state_dict(open_clip_to_hf_clip(state), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise UserError(f"{ckpt} does not fit ViT-H-14 (missing {missing[:2]}, unexpected {unexpected[:2]})")
        tok_source = tokenizer or _local_tokenizer_dir(ckpt.parent) or HPS_TOKENIZER
        try:
            tok = CLIPTokenizer.from_pretrained(tok_source, local_files_only=True)
        except Exception:
            raise UserError(
                f"the HPSv2 text tokenizer '{tok_source}' is not available here; download it on a connected machine "
                f"(`hf download {HPS_TOKENIZER} vocab.json merges.txt tokenizer_config.json "
                "special_tokens_map.json`) or put vocab.json and merges.txt beside the checkpoint") from None
        return cls(model, tok, device=device, dtype=dtype)

    def _text_features(self, prompt: str) -> Tensor:
        if self._text_cache is None or self._text_cache[0] != prompt:
            ids = self.tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings,
                                 return_tensors="pt").input_ids.to(self.device)
            pooled = self.model.text_model(input_ids=ids).pooler_output
            feats = F.normalize(self.model.text_projection(pooled).float(), dim=-1)
            self._text_cache = (prompt, feats)
        return self._text_cache[1]

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The unit-norm CLIP image embedding that HPSv2 scores against the prompt."""
        x = hps_preprocess(images.to(self.device), self.image_size).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def score(self, images: Tensor, prompt: str) -> Tensor:
        return (self.features(images) @ self._text_features(prompt).T).squeeze(-1)


def _local_tokenizer_dir(folder: Path) -> str | None:
    for d in (folder, folder / "tokenizer"):
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            return str(d)
    return None


def _find_hps_checkpoint(path: str | None) -> Path:
    how = ("download it on a connected machine (`hf download xswu/HPSv2 HPS_v2_compressed.pt`, or "
           "HPS_v2.1_compressed.pt) and pass its path (--judge hpsv2:PATH)")
    if path is None:
        for name in HPS_FILES:
            found = _cached_hub_file("xswu/HPSv2", name)
            if found is not None:
                return found
        raise UserError(f"HPSv2 weights not found in the local Hugging Face cache; {how}")
    p = Path(path).expanduser()
    if p.is_dir():
        files = [p / n for n in HPS_FILES if (p / n).is_file()] or sorted(p.glob("*.pt"))
        if files:
            return files[0]
        raise UserError(f"no HPSv2 checkpoint (*.pt) in {p}; {how}")
    if p.is_file():
        return p
    raise UserError(f"HPSv2 weights not found at {p}; {how}")


# ====================================================================== ImageReward


class RewardHead(nn.Sequential):
    """ImageReward's MLP (its dropouts keep the state-dict indices 0, 2, 4, 6, 7)."""

    def __init__(self, width: int = 768):
        super().__init__(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def blip_to_hf(state: dict[str, Tensor]) -> tuple[dict, dict, dict]:
    """Split an ImageReward state dict (BLIP names) into BlipVisionModel, BlipTextModel and head weights."""
    vision, text, head = {}, {}, {}
    for key, v in state.items():
        if key.startswith("blip.visual_encoder."):
            k = key.removeprefix("blip.visual_encoder.")
            k = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
                 "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                 "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
                 "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}.get(k, k)
            k = re.sub(r"^blocks\.(\d+)\.", r"encoder.layers.\1.", k)
            k = (k.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
                 .replace(".attn.qkv.", ".self_attn.qkv.").replace(".attn.proj.", ".self_attn.projection."))
            vision[k] = v
        elif key.startswith("blip.text_encoder."):
            text[key.removeprefix("blip.text_encoder.")] = v
        elif key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = v
    return vision, text, head


def blip_vision_config(vision: dict[str, Tensor], num_heads: int | None = None):
    """BlipVisionConfig from BLIP ViT weights' shapes (BLIP heads are 64 wide; LayerNorm eps 1e-6)."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    layers = len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")})
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=num_heads or width // 64, image_size=grid * patch,
        patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    )


def blip_text_config(med_config: dict, encoder_width: int):
    """BlipTextConfig from ImageReward's med_config.json (a BERT config with cross-attention)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        encoder_hidden_size=encoder_width, intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"], num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"), layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0), is_decoder=True,  # is_decoder builds the cross-attention
    )


class ImageRewardScorer:
    """ImageReward v1.0 on transformers' BLIP classes; score = the package's z-normalised reward."""

    max_text_length = 35  # the package pads/cuts prompts to 35 BERT tokens

    def __init__(self, vision, text, head: RewardHead, tokenizer, device=None, dtype=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or torch.float32  # the package runs ImageReward in fp32 on every device
        self.vision = vision.to(self.device, self.dtype).eval().requires_grad_(False)
        self.text = text.to(self.device, self.dtype).eval().requires_grad_(False)
        self.head = head.to(self.device, torch.float32).eval().requires_grad_(False)  # the package runs it in fp32
        self.tokenizer = tokenizer
        self.image_size = int(vision.config.image_size)

    @classmethod
    def from_pretrained(cls, path_or_name: str = "ImageReward-v1.0", *, med_config: str | None = None,
                        tokenizer: str | None = None, download_root: str | None = None, device=None, dtype=None,
                        vision_num_heads: int | None = None) -> ImageRewardScorer:
        """path_or_name: 'ImageReward-v1.0' (looked up in download_root or ~/.cache/ImageReward, where the
        package keeps it, then in the Hugging Face cache of THUDM/ImageReward), a folder holding
        ImageReward.pt and med_config.json, or the .pt file itself. tokenizer: a bert-base-uncased folder or
        cached hub id (default: a tokenizer/ folder beside the checkpoint, else bert-base-uncased)."""
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

        ckpt, med_path = _find_imagereward_files(path_or_name, med_config, download_root)
        try:
            med = json.loads(Path(med_path).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read ImageReward's med_config at {med_path} ({type(e).__name__})") from None
        vision_sd, text_sd, head_sd = blip_to_hf(_torch_load(ckpt, "ImageReward"))
        if not vision_sd or not text_sd or not head_sd:
            raise UserError(f"{ckpt} is not an ImageReward checkpoint "
                            "(needs blip.visual_encoder, blip.text_encoder, mlp)")
        vision = BlipVisionModel(blip_vision_config(vision_sd, vision_num_heads))
        text = BlipTextModel(blip_text_config(med, vision.config.hidden_size), add_pooling_layer=False)
        head = RewardHead(med["hidden_size"])
        for module, sd, what in ((vision, vision_sd, "image encoder"), (text, text_sd, "text encoder"),
                                 (head, head_sd, "reward head")):
            missing, unexpected = module.load_state_dict(sd, strict=False)
            # position_ids: a persistent buffer in the package's BERT (saved in ImageReward.pt), not in transformers'
            missing = [k for k in missing if not k.endswith("position_ids")]
            unexpected = [k for k in unexpected if not k.endswith("position_ids")]
            if missing or unexpected:
                raise UserError(f"{ckpt}: the {what} does not fit (missing {missing[:2]}, unexpected {unexpected[:2]})")
        tok_source = tokenizer or _bert_tokenizer_dir(ckpt.parent) or "bert-base-uncased"
        try:
            tok = BertTokenizer.from_pretrained(tok_source, local_files_only=True)
        except Exception:
            raise UserError(
                f"ImageReward's text tokenizer '{tok_source}' is not available here; download bert-base-uncased on a "
                "connected machine (`hf download bert-base-uncased vocab.txt tokenizer_config.json`) "
                "or put its vocab.txt in a tokenizer/ folder beside ImageReward.pt") from None
        tok.add_special_tokens({"bos_token": "[DEC]"})  # as BLIP's init_tokenizer does
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return cls(vision, text, head, tok, device=device, dtype=dtype)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """BLIP's image CLS embedding (unit norm), what ImageReward's text encoder attends to."""
        x = imagereward_preprocess(images.to(self.device), self.image_size).to(self.dtype)
        return F.normalize(self.vision(pixel_values=x).last_hidden_state[:, 0].float(), dim=-1)

    @torch.no_grad()
    def score(self, images: Tensor, prompt: str) -> Tensor:
        x = imagereward_preprocess(images.to(self.device), self.image_size).to(self.dtype)
        image_embeds = self.vision(pixel_values=x).last_hidden_state
        tok = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=self.max_text_length,
                             return_tensors="pt").to(self.device)
        n = x.shape[0]
        out = self.text(
            input_ids=tok.input_ids.expand(n, -1), attention_mask=tok.attention_mask.expand(n, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
        ).last_hidden_state[:, 0, :].float()
        return ((self.head(out) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)


def _bert_tokenizer_dir(folder: Path) -> str | None:
    for d in (folder / "tokenizer", folder):
        if (d / "vocab.txt").is_file():
            return str(d)
    return None


def _find_imagereward_files(path_or_name: str, med_config: str | None,
                            download_root: str | None) -> tuple[Path, Path]:
    how = ("download them on a connected machine (`hf download THUDM/ImageReward ImageReward.pt med_config.json "
           "--local-dir DIR`) and pass the folder (--judge imagereward:DIR)")
    if path_or_name == "ImageReward-v1.0":
        root = Path(download_root or os.path.expanduser("~/.cache/ImageReward"))
        ckpt = root / "ImageReward.pt" if (root / "ImageReward.pt").is_file() else _cached_hub_file(
            "THUDM/ImageReward", "ImageReward.pt")
        if ckpt is None:
            raise UserError(f"ImageReward-v1.0 weights not found in {root} or the Hugging Face cache; {how}")
    else:
        p = Path(path_or_name).expanduser()
        ckpt = p / "ImageReward.pt" if p.is_dir() else p
        if not ckpt.is_file():
            raise UserError(f"ImageReward weights not found at {ckpt}; {how}")
    med = Path(med_config) if med_config else ckpt.parent / "med_config.json"
    if not med.is_file():
        cached = _cached_hub_file("THUDM/ImageReward", "med_config.json") if not med_config else None
        if cached is None:
            raise UserError(f"ImageReward's med_config.json not found at {med}; {how}")
        med = cached
    return ckpt, med


# ====================================================================== factory

JUDGES = ("imagereward", "hpsv2")


def load_judge(name: str, *, device=None, weights: str | None = None) -> Judge:
    """A reward-model judge by name; weights = a local path (None → the models' usual cache locations)."""
    if name == "imagereward":
        return RewardJudge(ImageRewardScorer.from_pretrained(weights or "ImageReward-v1.0", device=device), name)
    if name == "hpsv2":
        return RewardJudge(HPSv2Scorer.from_pretrained(weights, device=device), name)
    raise UserError(f"unknown reward judge '{name}'; known: {', '.join(JUDGES)}")

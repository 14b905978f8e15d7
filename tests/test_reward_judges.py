"""HPSv2 and ImageReward judges on tiny random-weight checkpoints in the ORIGINAL formats.

The checkpoints are written with the original key names and layouts (open_clip for HPSv2, BLIP for
ImageReward); the scores of the ported models are compared with a plain-torch forward written from
the original architectures, so a wrong rename, transpose, norm epsilon or pooling rule fails here.
When open_clip itself is importable, the HPSv2 port is also compared with open_clip's own model.
The preprocessing is compared, on non-square images smaller and larger than the models' input, with
plain restatements of the originals' (hpsv2's ResizeMaxSize + pad; BLIP's PIL Resize + CenterCrop).
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dreamdpo.errors import UserError
from dreamdpo.judges.base import Judgement
from dreamdpo.judges.reward import (
    CLIP_MEAN,
    CLIP_STD,
    HPSv2Scorer,
    ImageRewardScorer,
    RewardJudge,
    hps_preprocess,
    imagereward_preprocess,
    load_judge,
)
from dreamdpo.priors.tiny import write_clip_tokenizer

# ---------------------------------------------------------------- tiny checkpoints

HPS = dict(v_width=160, v_layers=2, patch=14, grid=2, t_width=64, t_layers=2, embed=32, context=77)


def _block(prefix, width, g, mlp=2):
    return {
        f"{prefix}ln_1.weight": 1 + 0.1 * torch.randn(width, generator=g), f"{prefix}ln_1.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}attn.in_proj_weight": torch.randn(3 * width, width, generator=g) / math.sqrt(width),
        f"{prefix}attn.in_proj_bias": 0.1 * torch.randn(3 * width, generator=g),
        f"{prefix}attn.out_proj.weight": torch.randn(width, width, generator=g) / math.sqrt(width),
        f"{prefix}attn.out_proj.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}ln_2.weight": 1 + 0.1 * torch.randn(width, generator=g), f"{prefix}ln_2.bias": 0.1 * torch.randn(width, generator=g),
        f"{prefix}mlp.c_fc.weight": torch.randn(mlp * width, width, generator=g) / math.sqrt(width),
        f"{prefix}mlp.c_fc.bias": 0.1 * torch.randn(mlp * width, generator=g),
        f"{prefix}mlp.c_proj.weight": torch.randn(width, mlp * width, generator=g) / math.sqrt(mlp * width),
        f"{prefix}mlp.c_proj.bias": 0.1 * torch.randn(width, generator=g),
    }


def open_clip_state(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, vw, tw = HPS, HPS["v_width"], HPS["t_width"]
    sd = {
        "token_embedding.weight": 0.1 * torch.randn(vocab, tw, generator=g),
        "positional_embedding": 0.1 * torch.randn(c["context"], tw, generator=g),
        "ln_final.weight": 1 + 0.1 * torch.randn(tw, generator=g), "ln_final.bias": 0.1 * torch.randn(tw, generator=g),
        "text_projection": torch.randn(tw, c["embed"], generator=g) / math.sqrt(tw),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.class_embedding": 0.1 * torch.randn(vw, generator=g),
        "visual.positional_embedding": 0.1 * torch.randn(c["grid"] ** 2 + 1, vw, generator=g),
        "visual.conv1.weight": torch.randn(vw, 3, c["patch"], c["patch"], generator=g) / c["patch"],
        "visual.ln_pre.weight": 1 + 0.1 * torch.randn(vw, generator=g), "visual.ln_pre.bias": 0.1 * torch.randn(vw, generator=g),
        "visual.ln_post.weight": 1 + 0.1 * torch.randn(vw, generator=g), "visual.ln_post.bias": 0.1 * torch.randn(vw, generator=g),
        "visual.proj": torch.randn(vw, c["embed"], generator=g) / math.sqrt(vw),
    }
    for i in range(c["t_layers"]):
        sd.update(_block(f"transformer.resblocks.{i}.", tw, g))
    for i in range(c["v_layers"]):
        sd.update(_block(f"visual.transformer.resblocks.{i}.", vw, g))
    return sd


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hps")
    write_clip_tokenizer(d)  # vocab.json + merges.txt beside the checkpoint
    from transformers import CLIPTokenizer

    vocab = len(CLIPTokenizer.from_pretrained(d))
    torch.save({"state_dict": open_clip_state(vocab)}, d / "HPS_v2_compressed.pt")
    return d


@pytest.fixture(scope="module")
def hps(hps_dir):
    return HPSv2Scorer.from_pretrained(str(hps_dir))


IR = dict(v_width=128, v_layers=2, patch=16, grid=2, hidden=64, layers=2, heads=2, inter=128, max_pos=40)
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "cube", "sphere", "on",
              "the", "table", "of", "photo", "green", "##s", ",", "."]


def blip_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = IR
    r = lambda *s, scale=1.0: scale * torch.randn(*s, generator=g)  # noqa: E731
    vw, h = c["v_width"], c["hidden"]
    sd = {
        "blip.visual_encoder.cls_token": r(1, 1, vw, scale=0.1),
        "blip.visual_encoder.pos_embed": r(1, c["grid"] ** 2 + 1, vw, scale=0.1),
        "blip.visual_encoder.patch_embed.proj.weight": r(vw, 3, c["patch"], c["patch"], scale=1 / c["patch"]),
        "blip.visual_encoder.patch_embed.proj.bias": r(vw, scale=0.1),
        "blip.visual_encoder.norm.weight": 1 + r(vw, scale=0.1), "blip.visual_encoder.norm.bias": r(vw, scale=0.1),
    }
    for i in range(c["v_layers"]):
        p = f"blip.visual_encoder.blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(vw, scale=0.1), p + "norm1.bias": r(vw, scale=0.1),
            p + "attn.qkv.weight": r(3 * vw, vw, scale=vw ** -0.5), p + "attn.qkv.bias": r(3 * vw, scale=0.1),
            p + "attn.proj.weight": r(vw, vw, scale=vw ** -0.5), p + "attn.proj.bias": r(vw, scale=0.1),
            p + "norm2.weight": 1 + r(vw, scale=0.1), p + "norm2.bias": r(vw, scale=0.1),
            p + "mlp.fc1.weight": r(2 * vw, vw, scale=vw ** -0.5), p + "mlp.fc1.bias": r(2 * vw, scale=0.1),
            p + "mlp.fc2.weight": r(vw, 2 * vw, scale=(2 * vw) ** -0.5), p + "mlp.fc2.bias": r(vw, scale=0.1),
        })
    t = "blip.text_encoder."
    sd.update({
        # the package's BERT keeps position_ids as a persistent buffer: its ImageReward.pt holds it
        t + "embeddings.position_ids": torch.arange(c["max_pos"]).expand((1, -1)),
        t + "embeddings.word_embeddings.weight": r(len(BERT_WORDS) + 2, h, scale=0.5),
        t + "embeddings.position_embeddings.weight": r(c["max_pos"], h, scale=0.1),
        t + "embeddings.LayerNorm.weight": 1 + r(h, scale=0.1), t + "embeddings.LayerNorm.bias": r(h, scale=0.1),
    })

    def lin(name, o, i):
        sd[name + ".weight"], sd[name + ".bias"] = r(o, i, scale=i ** -0.5), r(o, scale=0.1)

    for i in range(c["layers"]):
        p = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", h), ("crossattention", vw)):
            lin(p + att + ".self.query", h, h)
            lin(p + att + ".self.key", h, kv_in)
            lin(p + att + ".self.value", h, kv_in)
            lin(p + att + ".output.dense", h, h)
            sd[p + att + ".output.LayerNorm.weight"], sd[p + att + ".output.LayerNorm.bias"] = 1 + r(h, scale=0.1), r(h, scale=0.1)
        lin(p + "intermediate.dense", c["inter"], h)
        lin(p + "output.dense", h, c["inter"])
        sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"] = 1 + r(h, scale=0.1), r(h, scale=0.1)
    for idx, (o, i) in {0: (1024, h), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}.items():
        sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"] = r(o, i, scale=i ** -0.5), r(o, scale=0.1)
    return sd


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imagereward")
    torch.save(blip_state(), d / "ImageReward.pt")
    med = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": IR["hidden"],
           "intermediate_size": IR["inter"], "layer_norm_eps": 1e-12, "max_position_embeddings": IR["max_pos"],
           "model_type": "bert", "num_attention_heads": IR["heads"], "num_hidden_layers": IR["layers"],
           "pad_token_id": 0, "vocab_size": len(BERT_WORDS) + 2, "encoder_width": IR["hidden"],
           "add_cross_attention": True}
    (d / "med_config.json").write_text(json.dumps(med))
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    return d


@pytest.fixture(scope="module")
def imagereward(ir_dir):
    return ImageRewardScorer.from_pretrained(str(ir_dir))


# ---------------------------------------------------------------- plain-torch reference forwards


def _mha(x, kv, wq, bq, wk, bk, wv, bv, heads, mask=None):
    B, N, D = x.shape
    q = (x @ wq.T + bq).reshape(B, N, heads, -1).transpose(1, 2)
    k = (kv @ wk.T + bk).reshape(B, kv.shape[1], heads, -1).transpose(1, 2)
    v = (kv @ wv.T + bv).reshape(B, kv.shape[1], heads, -1).transpose(1, 2)
    att = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        att = att + mask
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1)


def _oc_block(x, sd, p, heads, mask=None):
    """open_clip ResidualAttentionBlock (pre-norm, nn.MultiheadAttention, GELU)."""
    w, b = sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]
    D = x.shape[-1]
    h = F.layer_norm(x, (D,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5)
    a = _mha(h, h, w[:D], b[:D], w[D:2 * D], b[D:2 * D], w[2 * D:], b[2 * D:], heads, mask)
    x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = F.layer_norm(x, (D,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
    h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def open_clip_reference_score(sd, pixels, ids):
    """HPSv2 score the way open_clip's CLIP computes it: cosine of normalised image and text features."""
    vw, tw = HPS["v_width"], HPS["t_width"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=HPS["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (vw,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
    for i in range(HPS["v_layers"]):
        x = _oc_block(x, sd, f"visual.transformer.resblocks.{i}.", vw // 80)
    img = F.layer_norm(x[:, 0], (vw,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], 1e-5) @ sd["visual.proj"]
    n = ids.shape[1]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(HPS["t_layers"]):
        t = _oc_block(t, sd, f"transformer.resblocks.{i}.", tw // 64, causal)
    t = F.layer_norm(t, (tw,), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    txt = t[torch.arange(t.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)


def blip_reference_score(sd, pixels, ids, mask):
    """ImageReward.score the way BLIP's vit.py + med.py + the MLP head compute it."""
    vw, h = IR["v_width"], IR["hidden"]
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=IR["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[v + "pos_embed"]
    for i in range(IR["v_layers"]):
        p = f"{v}blocks.{i}."
        y = F.layer_norm(x, (vw,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        w, b = sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]
        a = _mha(y, y, w[:vw], b[:vw], w[vw:2 * vw], b[vw:2 * vw], w[2 * vw:], b[2 * vw:], vw // 64)
        x = x + a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.layer_norm(x, (vw,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    img = F.layer_norm(x, (vw,), sd[v + "norm.weight"], sd[v + "norm.bias"], 1e-6)
    t = "blip.text_encoder."
    e = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    s = F.layer_norm(e, (h,), sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"], 1e-12)
    s = s.expand(img.shape[0], -1, -1)
    pad = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    L = lambda name, z: z @ sd[name + ".weight"].T + sd[name + ".bias"]  # noqa: E731
    for i in range(IR["layers"]):
        p = f"{t}encoder.layer.{i}."
        for att, kv, m in (("attention", None, pad), ("crossattention", img, None)):
            q = p + att + ".self."
            src = s if kv is None else kv
            a = _mha(s, src, sd[q + "query.weight"], sd[q + "query.bias"], sd[q + "key.weight"], sd[q + "key.bias"],
                     sd[q + "value.weight"], sd[q + "value.bias"], IR["heads"], m)
            s = F.layer_norm(L(p + att + ".output.dense", a) + s, (h,), sd[p + att + ".output.LayerNorm.weight"],
                             sd[p + att + ".output.LayerNorm.bias"], 1e-12)
        y = L(p + "output.dense", F.gelu(L(p + "intermediate.dense", s)))
        s = F.layer_norm(y + s, (h,), sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"], 1e-12)
    r = s[:, 0]
    for idx in (0, 2, 4, 6, 7):
        r = L(f"mlp.layers.{idx}", r)
    return ((r - 0.16717362830052426) / 1.0333394966054072).squeeze(-1)


# ---------------------------------------------------------------- tests


MEAN, STD = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)


def hpsv2_reference_preprocess(images, max_size):
    """hpsv2's preprocess_val, restated in plain torch: ResizeMaxSize (torchvision F.resize of a tensor:
    bicubic, antialias=True, no clamp) + F.pad([left, top, right, bottom], fill=0) + ToTensor'd Normalize."""
    out = []
    for img in images:                       # one [3,H,W] image at a time, as the original
        height, width = img.shape[-2:]
        scale = max_size / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            img = F.interpolate(img[None], size=new_size, mode="bicubic", align_corners=False, antialias=True)[0]
            pad_h, pad_w = max_size - new_size[0], max_size - new_size[1]
            left, top, right, bottom = pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2
            canvas = torch.zeros(3, max_size, max_size)
            canvas[:, top: max_size - bottom, left: max_size - right] = img
            img = canvas
        out.append((img - MEAN[0]) / STD[0])
    return torch.stack(out)


def blip_reference_preprocess(images, size):
    """BLIP's transform on PIL images (Resize(size, BICUBIC), CenterCrop(size), ToTensor, Normalize), restated
    with PIL and torchvision's size arithmetic, on the uint8 PNG pixels of each view."""
    import numpy as np
    from PIL import Image

    out = []
    for view in images:
        arr = (view.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        img = Image.fromarray(arr)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        out.append((torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0 - MEAN[0]) / STD[0])
    return torch.stack(out)


SIZES = [(40, 56), (56, 40), (20, 30), (30, 20), (28, 28), (28, 20), (13, 64), (100, 100)]


@pytest.mark.parametrize("hw", [s for s in SIZES if s != (28, 20)])
def test_hps_preprocess_equals_resize_max_size_and_pad(hw):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *hw) * 1.2 - 0.1  # one-step estimates leave [0, 1]: the original clamps nothing
    got, ref = hps_preprocess(x, 28), hpsv2_reference_preprocess(x, 28)
    assert got.shape == (2, 3, 28, 28) and torch.allclose(got, ref, atol=1e-6, rtol=0)


def test_hps_preprocess_pads_where_the_original_would_pass_a_non_square_image():
    x = torch.rand(1, 3, 28, 20)  # longest side already 28: ResizeMaxSize returns it as is (28×20)
    assert hpsv2_reference_preprocess(x, 28).shape[-2:] == (28, 20)
    got = hps_preprocess(x, 28)
    assert got.shape[-2:] == (28, 28) and torch.allclose(got[..., 4:24], (x - MEAN) / STD, atol=1e-6)


@pytest.mark.parametrize("hw", SIZES)
def test_imagereward_preprocess_equals_blip_pil_transform(hw):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *hw)
    got, ref = imagereward_preprocess(x, 32), blip_reference_preprocess(x, 32)
    assert got.shape == (2, 3, 32, 32) and torch.equal(got, ref)


def test_preprocess_keeps_a_flat_image_flat_and_pads_with_zero():
    grey = torch.full((1, 3, 8, 12), 0.5)  # upsampled blurry image stays flat
    hps = hps_preprocess(grey, 24)          # 8×12 → 16×24, 4 rows of zero padding above and below
    assert torch.allclose(hps[..., 4:20, :], ((0.5 - MEAN) / STD).expand(1, 3, 16, 24), atol=1e-5)
    assert torch.allclose(hps[..., :4, :], ((0 - MEAN) / STD).expand(1, 3, 4, 24), atol=1e-6)
    ir = imagereward_preprocess(grey, 24)
    assert torch.allclose(ir, ((128 / 255 - MEAN) / STD).expand(1, 3, 24, 24), atol=1e-6)


@pytest.mark.parametrize("hw", [(40, 56), (70, 30), (28, 28)])
def test_hps_score_equals_the_original_on_non_square_images(hps, hps_dir, hw):
    torch.manual_seed(4)
    images = torch.rand(3, 3, *hw)
    prompt = "a red cube on the table"
    sd = torch.load(hps_dir / "HPS_v2_compressed.pt")["state_dict"]
    ids = hps.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = open_clip_reference_score(sd, hpsv2_reference_preprocess(images, 28), ids)
    assert torch.allclose(hps.score(images, prompt), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(48, 64), (64, 40), (32, 32)])
def test_imagereward_score_equals_the_original_on_non_square_images(imagereward, ir_dir, hw):
    torch.manual_seed(6)
    images = torch.rand(2, 3, *hw)
    prompt = "a photo of a red cube"
    tok = imagereward.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    ref = blip_reference_score(torch.load(ir_dir / "ImageReward.pt"), blip_reference_preprocess(images, 32),
                               tok.input_ids, tok.attention_mask)
    assert torch.allclose(imagereward.score(images, prompt), ref, atol=1e-5, rtol=0)


def test_imagereward_loads_the_packages_state_dict(ir_dir, imagereward):
    """ImageReward.pt as the image-reward package saves it: with blip.text_encoder.embeddings.position_ids."""
    assert "blip.text_encoder.embeddings.position_ids" in torch.load(ir_dir / "ImageReward.pt")
    assert isinstance(imagereward, ImageRewardScorer)


def test_hps_port_matches_open_clip_maths(hps, hps_dir):
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 64)
    prompt = "a red cube on the table"
    sd = torch.load(hps_dir / "HPS_v2_compressed.pt")["state_dict"]
    ids = hps.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = open_clip_reference_score(sd, hps_preprocess(images, 28), ids)
    got = hps.score(images, prompt)
    assert got.shape == (3,) and torch.allclose(got, ref, atol=1e-5)
    assert got.abs().max() <= 1.0  # a raw cosine, not scaled by the logit scale (100 here)
    assert not torch.allclose(hps.score(images, "a blue sphere"), got, atol=1e-4)


def test_hps_port_matches_open_clip_itself(hps_dir, hps):
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": HPS["embed"],
           "vision_cfg": {"image_size": 28, "layers": HPS["v_layers"], "width": HPS["v_width"], "head_width": 80,
                          "patch_size": HPS["patch"], "mlp_ratio": 2},
           "text_cfg": {"context_length": 77, "vocab_size": len(hps.tokenizer), "width": HPS["t_width"], "heads": 1,
                        "layers": HPS["t_layers"], "mlp_ratio": 2}}
    model = open_clip.model.CLIP(**cfg).eval()
    model.load_state_dict(torch.load(hps_dir / "HPS_v2_compressed.pt")["state_dict"])
    images = torch.rand(2, 3, 64, 64)
    ids = hps.tokenizer("a red cube", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(hps_preprocess(images, 28), ids)
    ref = (out["image_features"] @ out["text_features"].T).squeeze(-1) if isinstance(out, dict) else \
        (out[0] @ out[1].T).squeeze(-1)
    assert torch.allclose(hps.score(images, "a red cube"), ref, atol=1e-5)


def test_imagereward_port_matches_blip_maths(imagereward, ir_dir):
    torch.manual_seed(2)
    images = torch.rand(3, 3, 48, 48)
    prompt = "a photo of a red cube"
    tok = imagereward.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok.input_ids.shape == (1, 35) and tok.input_ids[0, 0] == BERT_WORDS.index("[CLS]")
    ref = blip_reference_score(torch.load(ir_dir / "ImageReward.pt"), imagereward_preprocess(images, 32),
                               tok.input_ids, tok.attention_mask)
    got = imagereward.score(images, prompt)
    assert got.shape == (3,) and torch.allclose(got, ref, atol=1e-4)
    assert not torch.allclose(imagereward.score(images, "a blue sphere"), got, atol=1e-4)
    assert len(imagereward.tokenizer) == len(BERT_WORDS) + 2  # [DEC] and [ENC] added as BLIP does


class CountingScorer:
    def __init__(self, scorer):
        self.scorer, self.batches = scorer, []

    def score(self, images, prompt):
        self.batches.append(images.shape[0])
        return self.scorer.score(images, prompt)


@pytest.mark.parametrize("which", ["hps", "imagereward"])
def test_judgement_winner_and_gap(which, request):
    scorer = CountingScorer(request.getfixturevalue(which))
    judge = RewardJudge(scorer, which)
    torch.manual_seed(3)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    j = judge.compare(a, b, "a red cube")
    assert isinstance(j, Judgement) and scorer.batches == [4]  # both candidates, both views: one call
    sa, sb = scorer.scorer.score(a, "a red cube"), scorer.scorer.score(b, "a red cube")
    assert j.scores_a == pytest.approx(sa.tolist(), abs=1e-5) and j.scores_b == pytest.approx(sb.tolist(), abs=1e-5)
    assert j.winner == ("a" if sa.mean() >= sb.mean() else "b")
    assert j.gap == pytest.approx(abs(float(sa.mean() - sb.mean())), abs=1e-6) and j.judge == which
    swapped = judge.compare(b, a, "a red cube")
    assert swapped.winner != j.winner and swapped.gap == pytest.approx(j.gap, abs=1e-6)
    tie = judge.compare(a, a, "a red cube")
    assert tie.winner == "a" and tie.gap == 0.0


def test_load_judge_by_name(hps_dir, ir_dir):
    hps = load_judge("hpsv2", device="cpu", weights=str(hps_dir))
    ir = load_judge("imagereward", device="cpu", weights=str(ir_dir / "ImageReward.pt"))
    assert isinstance(hps, RewardJudge) and hps.name == "hpsv2" and ir.name == "imagereward"
    with pytest.raises(UserError, match="known: imagereward, hpsv2"):
        load_judge("pickscore", device="cpu")


def test_missing_or_bad_weights_are_one_line_errors(tmp_path, monkeypatch, hps_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    (no_tok / "HPS_v2_compressed.pt").write_bytes((hps_dir / "HPS_v2_compressed.pt").read_bytes())
    cases = {
        "xswu/HPSv2": lambda: load_judge("hpsv2", device="cpu"),
        "not found at": lambda: load_judge("hpsv2", device="cpu", weights=str(tmp_path / "nope.pt")),
        "cannot read": lambda: load_judge("hpsv2", device="cpu", weights=str(tmp_path / "garbage.pt")),
        "tokenizer": lambda: HPSv2Scorer.from_pretrained(str(no_tok), tokenizer=str(tmp_path / "nowhere")),
        "THUDM/ImageReward": lambda: ImageRewardScorer.from_pretrained(download_root=str(tmp_path)),
        "ImageReward weights not found": lambda: load_judge("imagereward", device="cpu", weights=str(tmp_path)),
    }
    for expected, case in cases.items():
        with pytest.raises(UserError, match=expected) as e:
            case()
        assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_half_precision_scores_match_cpu(hps_dir, ir_dir, hps, imagereward):
    torch.manual_seed(5)
    images = torch.rand(2, 3, 64, 64)
    for cpu_scorer, gpu_scorer, dtype in (
        (hps, HPSv2Scorer.from_pretrained(str(hps_dir), device="cuda"), torch.float16),  # hpsv2 runs under amp
        (imagereward, ImageRewardScorer.from_pretrained(str(ir_dir), device="cuda"), torch.float32),  # as the package
    ):
        assert gpu_scorer.dtype == dtype
        got = gpu_scorer.score(images.cuda(), "a red cube").cpu()
        assert torch.allclose(got, cpu_scorer.score(images, "a red cube"), atol=2e-2 if dtype == torch.float16 else 1e-4)

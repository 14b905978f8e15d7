"""A pairwise judge over a multimodal LLM: questions about the prompt, asked in both orders.

Why it looks like this (against the reference code's LMM mode, issue 14):
- questions are built for ANY prompt (a template over the nouns, attributes and counts it names),
  plus GPTEval3D's six criteria (selectable) and custom per-run questions; never a lookup table.
  Custom questions come from the run's config (lmm.questions, keys 'custom:N') and from an admin,
  who writes them in the app's Runs page while the run goes (db.runs.judge_questions, keys
  'admin:N'): the judge reads them from the log at its first judged step and then every
  lmm.questions_every steps, and asks them from then on, after the others. Each vote's raw answer
  names the questions asked and holds the text of the custom and admin ones;
- scores come from the model's probabilities of the answer options ("A"/"B", or "Yes"/"No") at
  the answer position, never from parsing generated text;
- each pair is asked in both orders (A/B then B/A); when the orders disagree the verdict is a tie
  with gap 0, and each order's vote is kept (logged as judge '<name>[ab]' / '<name>[ba]', so
  db.stats.order_disagreement and position bias read them like any judge's votes);
- keys come from the environment only and never reach the log, the outputs or an error message.

Two back-ends, one interface (`option_probs(content, options) -> (probs, raw)`):
- `LocalQwen`: Qwen2-VL / Qwen2.5-VL through transformers, from a cached hub id or a folder, never
  downloading. The tokenizer and the image processor are loaded on their own and the image tokens
  expanded here, because transformers' Qwen2-VL processor class needs torchvision (its video
  processor), which does not import beside CPU torch (shared/FINDINGS.md);
- `OpenAIChat`: any OpenAI-compatible /chat/completions endpoint ($DREAMDPO_LMM_BASE_URL,
  $DREAMDPO_LMM_MODEL, $DREAMDPO_LMM_API_KEY), images as base64 PNG data URLs, top logprobs of a
  one-token answer when offered, else the one-token answer itself (probability 1 on it); retries
  with exponential back-off on 429/5xx/time-outs, a per-request time-out and at most
  `concurrency` requests in flight.

Modes: 'pairwise' (default) shows both candidates and asks which one is better for each question;
'yesno' asks each question of each candidate alone and scores it by P(Yes) (no position, so no
order to swap). A candidate's views are tiled into one image (per_view=False) or judged one by one
(per_view=True, per-view scores). Scores are probabilities in [0, 1]; the gap is |score_a − score_b|.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from db.criteria import CRITERION_NAMES
from dreamdpo.errors import UserError
from dreamdpo.images import to_uint8
from dreamdpo.judges.base import Judge, JudgeContext, Judgement

ENV_BASE_URL, ENV_MODEL, ENV_KEY = "DREAMDPO_LMM_BASE_URL", "DREAMDPO_LMM_MODEL", "DREAMDPO_LMM_API_KEY"
MODES = ("pairwise", "yesno")

# GPTEval3D's six criteria: (pairwise question, yes/no question); {prompt} is filled in. The names
# are db/criteria.py's (people answer the same criteria beside an arena vote).
_QUESTIONS: dict[str, tuple[str, str]] = {
    "text_asset_alignment": ("Which object matches the description \"{prompt}\" better?",
                             "Does this object match the description \"{prompt}\"?"),
    "plausibility": ("Which object is more plausible as a real 3D object (no floating parts, no extra faces, "
                     "no distortions)?", "Is this a plausible 3D object (no floating parts, no extra faces, "
                                         "no distortions)?"),
    "text_geometry_alignment": ("Ignoring colour and texture, which object's shape matches \"{prompt}\" better?",
                                "Ignoring colour and texture, does this object's shape match \"{prompt}\"?"),
    "texture_details": ("Which object has sharper, more detailed and more realistic textures?",
                        "Does this object have sharp, detailed and realistic textures?"),
    "geometry_details": ("Which object has finer and more accurate geometric detail?",
                         "Does this object have fine and accurate geometric detail?"),
    "overall": ("Which object is better overall for the description \"{prompt}\"?",
                "Is this a good 3D object for the description \"{prompt}\"?"),
}
CRITERIA: dict[str, tuple[str, str]] = {name: _QUESTIONS[name] for name in CRITERION_NAMES}


@dataclass
class LMMConfig:
    """How the multimodal-LLM judge asks (RunConfig.lmm; dotted overrides `lmm.criteria=[overall]`)."""

    mode: str = "pairwise"  # pairwise (A/B, both orders) | yesno (P(Yes) per candidate)
    template: bool = True  # questions about each noun, attribute and count the prompt names
    criteria: list[str] = field(default_factory=lambda: ["overall"])  # any of CRITERIA
    questions: list[str] = field(default_factory=list)  # custom per-run questions (statements or questions)
    questions_every: int = 10  # steps between reads of an admin's questions from the log (first judged step: always)
    per_view: bool = False  # judge each view alone (per-view scores) instead of one tiled image
    image_size: int = 448  # images sent are shrunk to this longest side, in pixels (never enlarged)
    timeout_s: float = 60.0  # per request (HTTP back-end)
    retries: int = 3  # extra attempts on 429/5xx/time-outs (HTTP back-end)
    backoff_s: float = 1.0  # first back-off; doubles each retry, with jitter
    concurrency: int = 4  # HTTP requests in flight at most

    def check(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"lmm.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        unknown = [c for c in self.criteria if c not in CRITERIA]
        if unknown:
            raise UserError(f"unknown lmm criterion '{unknown[0]}'; choose from: {', '.join(CRITERIA)}")
        if not (self.template or self.criteria or self.questions):
            raise UserError("the LMM judge has no question: set lmm.template=true, lmm.criteria or lmm.questions")
        for key in ("image_size", "concurrency", "questions_every"):
            if getattr(self, key) < 1:
                raise UserError(f"lmm.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise UserError("lmm.timeout_s must be > 0, lmm.retries and lmm.backoff_s ≥ 0")


# ---------------------------------------------------------------- questions for any prompt


@dataclass(frozen=True)
class Question:
    key: str  # 'count:cubes', 'attribute:red cubes', 'criterion:overall', 'custom:0', 'admin:0', ...
    pairwise: str  # "Which image ...?"
    yesno: str  # "Does this image ...?"
    text: str | None = None  # a custom or admin question as written (kept with each answer's vote)


NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "ten": 10, "a pair of": 2, "a couple of": 2, "several": None}
RELATION_VERBS = ("sitting", "standing", "lying", "riding", "holding", "wearing", "eating", "drinking",
                  "playing", "reading", "carrying", "covered", "filled", "made")
SPLITTERS = (r"\b(?:on top of|to the left of|to the right of|in front of|next to|left of|right of|"
             r"and|with|on|in|of|at|by|beside|behind|under|over|above|below|near|inside|" + "|".join(RELATION_VERBS) +
             r")\b|,|;")
STOP = {"a", "an", "the", "some", "its", "their", "his", "her", "is", "are", "that", "which", "very"}
# words that describe the picture, not the object: no question about them
PICTURE = {"photo", "photograph", "picture", "image", "render", "rendering", "dslr", "3d", "model", "view",
           "zoomed", "out", "closeup", "close-up", "detailed", "highly", "high", "quality", "resolution",
           "realistic", "photorealistic", "hd", "4k", "8k", "style", "art", "illustration", "drawing", "shot"}


def prompt_questions(prompt: str) -> list[Question]:
    """Questions about each noun, attribute and count a prompt names, e.g. "two red cubes on a blue plate"
    → exactly two cubes; the cubes are red; a plate; the plate is blue. A plain rule-based parse
    (phrases split at prepositions and conjunctions; the last word of a phrase is its noun, the words
    before it its attributes): it never fails, and a prompt it cannot parse gets no template question."""
    text = re.sub(r"\s+", " ", prompt.lower().replace("-", " ")).strip(" .!?")
    out: list[Question] = []
    seen: set[str] = set()
    for phrase in re.split(SPLITTERS, text):
        words = [w for w in re.findall(r"[a-z0-9']+", phrase)]
        count = None
        joined = " ".join(words)
        for word, n in NUMBERS.items():
            if joined.startswith(word + " ") and n is not None:
                count, words = n, words[len(word.split()):]
                break
        if words and words[0].isdigit():
            count, words = int(words[0]), words[1:]
        words = [w for w in words if w not in STOP]
        if not words or words[-1] in PICTURE:
            continue
        noun, attributes = words[-1], [w for w in words[:-1] if w not in PICTURE]
        if noun in seen:
            continue
        seen.add(noun)
        if count is not None and count > 1:
            out.append(Question(f"count:{noun}", f"Which image shows exactly {count} {noun}?",
                                f"Does this image show exactly {count} {noun}?"))
        else:
            out.append(Question(f"noun:{noun}", f"Which image shows a {noun} more clearly?",
                                f"Does this image show a {noun}?"))
        for attr in attributes:
            out.append(Question(f"attribute:{attr} {noun}", f"In which image is the {noun} more clearly {attr}?",
                                f"Is the {noun} in this image {attr}?"))
    return out


def build_questions(prompt: str, cfg: LMMConfig, admin: list[str] | tuple[str, ...] = ()) -> list[Question]:
    """The run's questions: template (if on) + selected criteria + custom ones (the config's, then an
    admin's from the log), in that order."""
    qs = prompt_questions(prompt) if cfg.template else []
    for c in cfg.criteria:
        pair, yes = CRITERIA[c]
        qs.append(Question(f"criterion:{c}", pair.format(prompt=prompt), yes.format(prompt=prompt)))
    for kind, texts in (("custom", cfg.questions), ("admin", admin)):
        for i, text in enumerate(texts):
            q = text.strip().rstrip("?.")
            qs.append(Question(f"{kind}:{i}", f"Which image better satisfies this: {q}?",
                               f"Is this true of this image: {q}?", text=text))
    if not qs:  # template only, and the prompt named nothing it can ask about
        pair, yes = CRITERIA["overall"]
        qs.append(Question("criterion:overall", pair.format(prompt=prompt), yes.format(prompt=prompt)))
    return qs


def pairwise_content(prompt: str, q: Question, first: Image.Image, second: Image.Image) -> list:
    return [("text", f"Two renders of 3D objects made for the description \"{prompt}\".\nImage A:"),
            ("image", first), ("text", "\nImage B:"), ("image", second),
            ("text", f"\n{q.pairwise} Answer with one letter, A or B.")]


def yesno_content(prompt: str, q: Question, image: Image.Image) -> list:
    return [("text", f"A render of a 3D object made for the description \"{prompt}\".\n"), ("image", image),
            ("text", f"\n{q.yesno} Answer Yes or No.")]


def to_pil(views: Tensor, size: int) -> Image.Image:
    """[V,3,H,W] in [0,1] → one RGB image: a single view, or the views tiled in a near-square grid,
    shrunk so that its longest side is at most `size` (never enlarged: more pixels, same content, more tokens)."""
    arr = to_uint8(views)
    v, h, w, _ = arr.shape
    cols = math.ceil(math.sqrt(v))
    rows = math.ceil(v / cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(v):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    img = Image.fromarray(grid)
    scale = size / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)


def normalise(logps: dict[str, float]) -> dict[str, float]:
    """Log-probabilities (or logits) of the options → probabilities over the options only."""
    m = max(logps.values())
    e = {k: math.exp(v - m) for k, v in logps.items()}
    s = sum(e.values())
    return {k: v / s for k, v in e.items()}


class JudgeUnavailable(UserError):
    """The judge's model cannot answer now (end-point down after retries); a fallback judge may step in."""


# ---------------------------------------------------------------- back-end 1: local Qwen2-VL


QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class LocalQwen:
    """Qwen2-VL / Qwen2.5-VL on this machine; P(option) = softmax over the options' first-token logits
    at the answer position (the first token the assistant would write)."""

    image_token = "<|image_pad|>"

    def __init__(self, model, tokenizer, image_processor, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.merge = int(getattr(image_processor, "merge_size", 2))
        if not tokenizer.chat_template:
            tokenizer.chat_template = QWEN_TEMPLATE
        self.calls = 0
        self.label = getattr(model.config, "_name_or_path", "local model")

    @classmethod
    def from_pretrained(cls, source: str, device=None, dtype=None) -> LocalQwen:
        """source: a hub id already in the local Hugging Face cache, or a folder (never downloads)."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        how = (f"download it on a connected machine (`hf download {source}`) and pass its id, "
               "or save the model to a folder and pass the path: --judge lmm:PATH")
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=True, use_fast=False)
            model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserError(f"multimodal model '{source}' cannot be loaded from the local cache or folder "
                            f"({first}); {how}") from None
        if tokenizer.convert_tokens_to_ids(cls.image_token) in (None, tokenizer.unk_token_id):
            raise UserError(f"'{source}' is not a Qwen2-VL-style model (its tokenizer has no {cls.image_token})")
        return cls(model, tokenizer, image_processor, device)

    def option_ids(self, options: tuple[str, ...]) -> list[int]:
        ids = [self.tokenizer.encode(o, add_special_tokens=False)[0] for o in options]
        if len(set(ids)) != len(ids):
            raise UserError(f"the answer options {options} share a first token in this tokenizer")
        return ids

    @torch.no_grad()
    def option_logits(self, content: list, options: tuple[str, ...]) -> Tensor:
        """The logits of each option's first token at the answer position (1-D tensor, options' order)."""
        images = [x for kind, x in content if kind == "image"]
        messages = [{"role": "user", "content": [{"type": "image"} if kind == "image" else
                                                 {"type": "text", "text": x} for kind, x in content]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        vis = self.image_processor(images=images, return_tensors="pt")
        grid = vis["image_grid_thw"]
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(images):
            raise UserError(f"the chat template placed {len(parts) - 1} image slots for {len(images)} images")
        n = [int(g.prod()) // self.merge ** 2 for g in grid]
        text = parts[0] + "".join(self.image_token * k + p for k, p in zip(n, parts[1:], strict=True))
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        ids = enc.input_ids.to(self.device)
        out = self.model(input_ids=ids, attention_mask=enc.attention_mask.to(self.device),
                         mm_token_type_ids=(ids == self.image_token_id).int(),
                         pixel_values=vis["pixel_values"].to(self.device, self.model.dtype),
                         image_grid_thw=grid.to(self.device))
        self.calls += 1
        return out.logits[0, -1, self.option_ids(options)].float().cpu()

    def option_probs(self, content: list, options: tuple[str, ...]) -> tuple[dict[str, float], dict]:
        logits = self.option_logits(content, options)
        probs = normalise(dict(zip(options, logits.tolist(), strict=True)))
        return probs, {"logits": {o: round(float(v), 4) for o, v in zip(options, logits, strict=True)}}

    def map(self, jobs: list[tuple[list, tuple[str, ...]]]) -> list[tuple[dict, dict]]:
        return [self.option_probs(c, o) for c, o in jobs]


# ---------------------------------------------------------------- back-end 2: OpenAI-compatible HTTP


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
IMAGE_WORDS = ("image", "vision", "multimodal", "multi-modal", "image_url")


class OpenAIChat:
    """One OpenAI-compatible /chat/completions endpoint. The key lives in this object only: it is never
    put in a message, a log row or a repr."""

    def __init__(self, base_url: str, model: str, api_key: str, cfg: LMMConfig | None = None):
        self.base_url, self.model = base_url.rstrip("/"), model
        self._key = api_key
        self.cfg = cfg or LMMConfig()
        self.logprobs = True  # switched off when the endpoint does not offer them
        self.calls = 0
        self.label = f"{model} at {self.base_url}"
        self._pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="lmm-http")

    def __repr__(self) -> str:
        return f"OpenAIChat({self.base_url!r}, {self.model!r})"

    @classmethod
    def from_env(cls, model: str | None = None, cfg: LMMConfig | None = None) -> OpenAIChat:
        base_url = os.environ.get(ENV_BASE_URL, "").strip()
        model = model or os.environ.get(ENV_MODEL, "").strip()
        key = os.environ.get(ENV_KEY, "").strip()
        if not base_url:
            raise UserError(f"set {ENV_BASE_URL} to the endpoint's base URL (e.g. http://localhost:8000/v1) "
                            "for --judge lmm-api")
        if not model:
            raise UserError(f"name the endpoint's model: --judge lmm-api:MODEL or set {ENV_MODEL}")
        if not key:
            raise UserError(f"set {ENV_KEY} to the endpoint's API key (any non-empty value for a server "
                            "without keys); keys are read from the environment only")
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"{ENV_BASE_URL}={base_url!r} is not an http(s) URL")
        return cls(base_url, model, key, cfg)

    # --- one request
    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + "/chat/completions", data=data, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self._key}"})
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            wait = self.cfg.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = json.loads(resp.read().decode() or "{}")
                self.calls += 1
                return payload
            except urllib.error.HTTPError as e:
                self.calls += 1
                message = _error_message(e)
                if e.code in RETRY_STATUS:
                    last = f"HTTP {e.code} {message}".strip()
                    retry_after = e.headers.get("Retry-After") if e.headers else None
                    if retry_after and retry_after.strip().isdigit():
                        wait = min(float(retry_after), 30.0)
                elif e.code in (401, 403):
                    raise UserError(f"the endpoint {self.base_url} refused the key in {ENV_KEY} (HTTP {e.code}); "
                                    "check the key") from None
                elif e.code == 404:
                    raise UserError(f"no OpenAI-compatible chat endpoint at {self.base_url}/chat/completions "
                                    f"(HTTP 404{': ' + message if message else ''}); check {ENV_BASE_URL} "
                                    "(it usually ends in /v1) and the model name") from None
                elif "logprob" in message.lower() and body.get("logprobs"):
                    raise _NoLogprobs() from None
                elif any(w in message.lower() for w in IMAGE_WORDS):
                    raise UserError(f"model '{self.model}' at {self.base_url} does not accept images "
                                    f"(HTTP {e.code}: {message}); choose a vision-language model") from None
                else:
                    raise UserError(f"the endpoint {self.base_url} rejected the request (HTTP {e.code}: "
                                    f"{message})") from None
            except TimeoutError:
                last = f"no answer within {self.cfg.timeout_s:g} s (lmm.timeout_s)"
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.cfg.timeout_s:g} s (lmm.timeout_s)"
                else:
                    last = f"cannot connect ({type(reason).__name__ if not isinstance(reason, str) else reason})"
            except (ConnectionError, http.client.HTTPException) as e:
                last = f"connection failed ({type(e).__name__})"
            if attempt + 1 < attempts:
                time.sleep(wait)
        raise JudgeUnavailable(f"the LMM endpoint {self.base_url} failed after {attempts} attempts: {last}; "
                               f"check {ENV_BASE_URL} and that the server is up")

    def option_probs(self, content: list, options: tuple[str, ...]) -> tuple[dict[str, float], dict]:
        parts = []
        for kind, x in content:
            if kind == "image":
                buf = io.BytesIO()
                x.save(buf, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append({"type": "text", "text": x})
        body = {"model": self.model, "messages": [{"role": "user", "content": parts}], "max_tokens": 1,
                "temperature": 0}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=10)
        try:
            payload = self._post(body)
        except _NoLogprobs:
            self.logprobs = False
            return self.option_probs(content, options)
        return parse_choice(payload, options, self)

    def map(self, jobs: list[tuple[list, tuple[str, ...]]]) -> list[tuple[dict, dict]]:
        return list(self._pool.map(lambda job: self.option_probs(*job), jobs))


class _NoLogprobs(Exception):
    pass


def _error_message(e: urllib.error.HTTPError) -> str:
    """The endpoint's error message, one line, short (never the request: it holds no key, but stay lean)."""
    try:
        body = e.read().decode(errors="replace")
        data = json.loads(body)
        msg = data.get("error", data)
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
        text = str(msg)
    except Exception:
        text = ""
    return " ".join(text.split())[:200]


def parse_choice(payload: dict, options: tuple[str, ...], backend=None) -> tuple[dict[str, float], dict]:
    """Option probabilities from a chat completion: the first token's top logprobs when present (an option
    missing from them gets the lowest listed logprob: it is at most that likely); otherwise the one-token
    answer (probability 1 on the option it names; uniform if it names none)."""
    try:
        choice = payload["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise JudgeUnavailable("the LMM endpoint returned no choices; is it an OpenAI-compatible chat "
                               "endpoint?") from None
    text = ((choice.get("message") or {}).get("content") or "").strip()
    tops = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs") or []
    raw: dict = {"text": text[:20]}
    found: dict[str, float] = {}
    for t in tops:
        tok = str(t.get("token", "")).strip().lower()
        for o in options:
            if tok == o.lower() and o not in found:
                found[o] = float(t["logprob"])
    if found:
        floor = min(float(t["logprob"]) for t in tops)
        logps = {o: found.get(o, floor) for o in options}
        raw["logprobs"] = {o: round(v, 4) for o, v in logps.items()}
        return normalise(logps), raw
    if tops == [] and backend is not None and backend.logprobs and choice.get("logprobs") is None:
        backend.logprobs = False  # this endpoint does not offer logprobs: stop asking
    named = [o for o in options if text.lower().startswith(o.lower())]
    if named:
        return {o: float(o == named[0]) for o in options}, raw
    return {o: 1.0 / len(options) for o in options}, {**raw, "invalid": True}


# ---------------------------------------------------------------- the judge


class LMMJudge(Judge):
    """Pairwise verdicts of a multimodal LLM over the run's questions (see the module docstring)."""

    def __init__(self, backend, config: LMMConfig | None = None, name: str = "lmm"):
        self.backend, self.cfg, self.name = backend, config or LMMConfig(), name
        self.cfg.check()
        self._questions: tuple[str, tuple[str, ...], list[Question]] | None = None
        # an admin's questions: read_questions(run_id) → list, or None when the log cannot be read now
        # (set by judges.read_questions_from; no log, no admin questions)
        self.read_questions: Callable[[int], list[str] | None] | None = None
        self.admin_questions: tuple[str, ...] = ()
        self._read_at: tuple[int, int] | None = None  # (run, step) of the last read

    @classmethod
    def local(cls, source: str, device=None, config: LMMConfig | None = None, name: str | None = None):
        return cls(LocalQwen.from_pretrained(source, device=device), config, name or f"lmm:{source}")

    @classmethod
    def api(cls, model: str | None = None, config: LMMConfig | None = None, name: str | None = None,
            probe: bool = True):
        """probe: one small request now, so a wrong URL, key or a text-only model fails before the run."""
        backend = OpenAIChat.from_env(model, config)
        judge = cls(backend, config, name or f"lmm-api:{backend.model}")
        if probe:
            judge.probe()
        return judge

    @property
    def calls(self) -> int:
        return self.backend.calls

    def probe(self) -> None:
        img = Image.new("RGB", (28, 28), (200, 40, 40))
        try:
            self.backend.option_probs(yesno_content("a red square", Question("probe", "", "Is it red?"), img),
                                      ("Yes", "No"))
        except JudgeUnavailable as e:
            raise UserError(str(e)) from None

    def questions(self, prompt: str) -> list[Question]:
        if self._questions is None or self._questions[:2] != (prompt, self.admin_questions):
            self._questions = (prompt, self.admin_questions, build_questions(prompt, self.cfg, self.admin_questions))
        return self._questions[2]

    def sync(self, context: JudgeContext | None) -> None:
        """Read the admin's questions from the log at the first judged step of a run, then once every
        lmm.questions_every steps (camera groups of one step share one read). A log that cannot be
        read now keeps the questions last read; the next step tries again."""
        if self.read_questions is None or context is None or context.run_id is None:
            return
        last = self._read_at
        if last is not None and last[0] == context.run_id and 0 <= context.step - last[1] < self.cfg.questions_every:
            return
        questions = self.read_questions(context.run_id)
        if questions is None:
            return
        self._read_at = (context.run_id, context.step)
        self.admin_questions = tuple(questions)

    def units(self, images: Tensor) -> list[Image.Image]:
        views = [images[i:i + 1] for i in range(images.shape[0])] if self.cfg.per_view else [images]
        return [to_pil(v, self.cfg.image_size) for v in views]

    def calls_per_compare(self, prompt: str, n_views: int) -> int:
        """Model calls one compare() makes (2 orders or 2 candidates × questions × judged units)."""
        return 2 * (n_views if self.cfg.per_view else 1) * len(self.questions(prompt))

    def estimate(self, prompt: str, n_compares: int, n_views: int, resolution: int) -> dict:
        """Calls and tokens of a run, before it starts (tokens: Qwen2-VL's one per 28×28 patch of each
        image sent, plus about 4 characters per text token, plus one answer token)."""
        qs = self.questions(prompt)
        units = n_views if self.cfg.per_view else 1
        tiles = 1 if self.cfg.per_view else n_views
        cols = math.ceil(math.sqrt(tiles))
        w, h = cols * resolution, math.ceil(tiles / cols) * resolution
        scale = min(1.0, self.cfg.image_size / max(w, h))
        img_tokens = max(1, round(w * scale / 28)) * max(1, round(h * scale / 28))
        n_img = 2 if self.cfg.mode == "pairwise" else 1
        per_q = [n_img * img_tokens + len(q.pairwise if n_img == 2 else q.yesno) // 4 + 40 + 1 for q in qs]
        calls = n_compares * units * 2 * len(qs)
        return {"calls": calls, "tokens": n_compares * units * 2 * sum(per_q), "questions": len(qs)}

    def compare(self, images_a: Tensor, images_b: Tensor, prompt: str,
                context: JudgeContext | None = None) -> Judgement:
        self.sync(context)
        qs = self.questions(prompt)
        ua, ub = self.units(images_a), self.units(images_b)
        if self.cfg.mode == "yesno":
            return self._yesno(prompt, qs, ua, ub)
        jobs, keys = [], []
        for u, (a, b) in enumerate(zip(ua, ub, strict=True)):
            for q in qs:
                jobs.append((pairwise_content(prompt, q, a, b), ("A", "B")))
                keys.append((u, q.key, "ab"))
                jobs.append((pairwise_content(prompt, q, b, a), ("A", "B")))
                keys.append((u, q.key, "ba"))
        answers = self.backend.map(jobs)
        # P(a is better) per (unit, order), averaged over questions
        p: dict[tuple[int, str], list[float]] = {}
        log = []
        for (u, qk, order), (probs, raw) in zip(keys, answers, strict=True):
            pa = probs["A"] if order == "ab" else probs["B"]
            p.setdefault((u, order), []).append(pa)
            log.append({"unit": u, "q": qk, "order": order, "p_a": round(pa, 4), **raw})
        n = len(ua)
        per_order = {o: [float(np.mean(p[(u, o)])) for u in range(n)] for o in ("ab", "ba")}
        scores_a = [(per_order["ab"][u] + per_order["ba"][u]) / 2 for u in range(n)]
        scores_b = [1.0 - s for s in scores_a]
        votes = [_order_vote(self.name, o, per_order[o]) for o in ("ab", "ba")]
        agree = votes[0].winner == votes[1].winner and votes[0].winner != "tie"
        mean_a = float(np.mean(scores_a))
        raw = json.dumps({"mode": "pairwise", "questions": [q.key for q in qs], **_texts(qs), "orders_agree": agree,
                          "answers": log}, separators=(",", ":"))
        return Judgement(winner=votes[0].winner if agree else "tie", gap=abs(2 * mean_a - 1) if agree else 0.0,
                         judge=self.name, scores_a=scores_a, scores_b=scores_b, raw=raw,
                         extra={"votes": votes})

    def _yesno(self, prompt, qs, ua, ub) -> Judgement:
        jobs, keys = [], []
        for u, (a, b) in enumerate(zip(ua, ub, strict=True)):
            for q in qs:
                for side, img in (("a", a), ("b", b)):
                    jobs.append((yesno_content(prompt, q, img), ("Yes", "No")))
                    keys.append((u, q.key, side))
        answers = self.backend.map(jobs)
        p: dict[tuple[int, str], list[float]] = {}
        log = []
        for (u, qk, side), (probs, raw) in zip(keys, answers, strict=True):
            p.setdefault((u, side), []).append(probs["Yes"])
            log.append({"unit": u, "q": qk, "side": side, "p_yes": round(probs["Yes"], 4), **raw})
        n = len(ua)
        scores_a = [float(np.mean(p[(u, "a")])) for u in range(n)]
        scores_b = [float(np.mean(p[(u, "b")])) for u in range(n)]
        sa, sb = float(np.mean(scores_a)), float(np.mean(scores_b))
        raw = json.dumps({"mode": "yesno", "questions": [q.key for q in qs], **_texts(qs), "answers": log},
                         separators=(",", ":"))
        winner = "a" if sa > sb else "b" if sb > sa else "tie"
        return Judgement(winner=winner, gap=abs(sa - sb), judge=self.name, scores_a=scores_a, scores_b=scores_b,
                         raw=raw)


def _texts(qs: list[Question]) -> dict:
    """{"texts": {key: text}} for the custom and admin questions asked ({} when none was)."""
    texts = {q.key: q.text for q in qs if q.text is not None}
    return {"texts": texts} if texts else {}


def _order_vote(name: str, order: str, p_a: list[float]) -> Judgement:
    """One order's verdict, logged as its own judge vote '<name>[ab]' or '<name>[ba]'."""
    m = float(np.mean(p_a))
    winner = "a" if m > 0.5 else "b" if m < 0.5 else "tie"
    return Judgement(winner=winner, gap=abs(2 * m - 1), judge=f"{name}[{order}]", scores_a=p_a,
                     scores_b=[1.0 - x for x in p_a], raw=None)

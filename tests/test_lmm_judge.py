"""The multimodal-LLM judge: questions for any prompt, the HTTP back-end against a fake
OpenAI-compatible server on 127.0.0.1, and the local back-end on a tiny random-weight Qwen2-VL
built here from a config (no download), saved and loaded through the users' loader."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamdpo import judges
from dreamdpo.errors import UserError
from dreamdpo.judges.lmm import (
    CRITERIA,
    ENV_BASE_URL,
    ENV_KEY,
    ENV_MODEL,
    JudgeUnavailable,
    LMMConfig,
    LMMJudge,
    LocalQwen,
    build_questions,
    pairwise_content,
    parse_choice,
    prompt_questions,
)
from fake_openai import FakeOpenAI

KEY = "sk-test-7f3a9c-never-logged"
RED = torch.zeros(1, 3, 32, 32)
RED[:, 0] = 0.9
BLUE = torch.zeros(1, 3, 32, 32)
BLUE[:, 2] = 0.9
FAST = dict(backoff_s=0.01, timeout_s=5.0)


# ---------------------------------------------------------------- questions


@pytest.mark.parametrize("prompt, keys", [
    ("two red cubes on a blue plate", ["count:cubes", "attribute:red cubes", "noun:plate", "attribute:blue plate"]),
    ("a DSLR photo of a hamburger", ["noun:hamburger"]),
    ("3 green apples", ["count:apples", "attribute:green apples"]),
    ("a cat wearing a red hat", ["noun:cat", "noun:hat", "attribute:red hat"]),
])
def test_template_asks_about_each_noun_attribute_and_count(prompt, keys):
    assert [q.key for q in prompt_questions(prompt)] == keys


@pytest.mark.parametrize("prompt", ["", "!!!", "a photo", "a zoomed out DSLR photo of", "ßü 3d 4k", "x" * 500])
def test_any_prompt_gets_questions_and_never_fails(prompt):
    qs = build_questions(prompt, LMMConfig(criteria=[]))
    assert qs and all(q.pairwise and q.yesno for q in qs)


def test_criteria_are_selectable_and_custom_questions_come_last():
    cfg = LMMConfig(template=False, criteria=["texture_details", "plausibility"],
                    questions=["The cube has rounded edges"])
    qs = build_questions("a red cube", cfg)
    assert [q.key for q in qs] == ["criterion:texture_details", "criterion:plausibility", "custom:0"]
    assert "rounded edges" in qs[-1].pairwise
    assert set(CRITERIA) == {"text_asset_alignment", "plausibility", "text_geometry_alignment", "texture_details",
                             "geometry_details", "overall"}


@pytest.mark.parametrize("cfg, words", [
    (LMMConfig(criteria=["beauty"]), "unknown lmm criterion 'beauty'"),
    (LMMConfig(mode="ranking"), "lmm.mode"),
    (LMMConfig(template=False, criteria=[], questions=[]), "no question"),
    (LMMConfig(concurrency=0), "lmm.concurrency"),
])
def test_bad_lmm_settings_are_one_line_errors(cfg, words):
    with pytest.raises(UserError, match=words) as e:
        cfg.check()
    assert "\n" not in str(e.value)


def test_config_carries_lmm_settings_through_overrides():
    from dreamdpo.config import load_config

    cfg = load_config(None, {"judge": "lmm-api:gpt-x"}, ["lmm.criteria=[overall,geometry_details]",
                                                         "lmm.questions=['Is it shiny?']", "judge_max_calls=100"])
    assert cfg.lmm.criteria == ["overall", "geometry_details"] and cfg.lmm.questions == ["Is it shiny?"]
    with pytest.raises(UserError, match="unknown lmm criterion"):
        load_config(None, {}, ["lmm.criteria=[nope]"])


# ---------------------------------------------------------------- parsing an answer


def test_option_probabilities_come_from_logprobs_not_text():
    payload = {"choices": [{"message": {"content": "B"}, "logprobs": {"content": [{"top_logprobs": [
        {"token": "A", "logprob": math.log(0.6)}, {"token": " B", "logprob": math.log(0.3)}]}]}}]}
    probs, raw = parse_choice(payload, ("A", "B"))
    assert probs["A"] == pytest.approx(2 / 3) and raw["logprobs"]["A"] == pytest.approx(math.log(0.6), abs=1e-3)
    # an option missing from the top list counts as at most as likely as the least likely listed token
    payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [
        {"token": "A", "logprob": math.log(0.9)}, {"token": "Sure", "logprob": math.log(0.05)}]
    probs, _ = parse_choice(payload, ("A", "B"))
    assert probs["A"] == pytest.approx(0.9 / 0.95)
    # no logprobs offered: the constrained one-token answer; an answer naming no option is uniform
    probs, _ = parse_choice({"choices": [{"message": {"content": "Yes"}, "logprobs": None}]}, ("Yes", "No"))
    assert probs == {"Yes": 1.0, "No": 0.0}
    probs, raw = parse_choice({"choices": [{"message": {"content": "Maybe"}}]}, ("Yes", "No"))
    assert probs == {"Yes": 0.5, "No": 0.5} and raw["invalid"]


# ---------------------------------------------------------------- the HTTP back-end


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


@pytest.fixture
def endpoint(server, monkeypatch):
    monkeypatch.setenv(ENV_BASE_URL, server.url)
    monkeypatch.setenv(ENV_MODEL, "fake-vl")
    monkeypatch.setenv(ENV_KEY, KEY)
    return server


def api_judge(**cfg):
    return LMMJudge.api(config=LMMConfig(**{"template": False, "criteria": ["overall"], **FAST, **cfg}))


def test_http_judge_asks_both_orders_and_prefers_the_better_image(endpoint):
    judge = api_judge()
    assert judge.name == "lmm-api:fake-vl"
    endpoint.requests.clear()
    v = judge.compare(RED, BLUE, "a red cube")
    assert v.winner == "a" and 0 < v.gap <= 1 and v.scores_a[0] > 0.5 > v.scores_b[0]
    assert len(endpoint.requests) == 2  # one question, two orders
    first_shown = [[p for p in r["body"]["messages"][0]["content"] if p["type"] == "image_url"][0]
                   for r in endpoint.requests]
    from fake_openai import redness

    assert sorted(redness(p["image_url"]["url"]) > 0 for p in first_shown) == [False, True]  # red first once
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in first_shown)
    assert all(r["body"]["max_tokens"] == 1 and r["body"]["logprobs"] for r in endpoint.requests)
    raw = json.loads(v.raw)
    assert raw["orders_agree"] and {a["order"] for a in raw["answers"]} == {"ab", "ba"}
    assert [o.judge for o in v.extra["votes"]] == ["lmm-api:fake-vl[ab]", "lmm-api:fake-vl[ba]"]
    assert all(o.winner == "a" for o in v.extra["votes"])
    assert judge.compare(BLUE, RED, "a red cube").winner == "b"


def test_orders_that_disagree_make_a_tie_with_gap_zero(endpoint):
    endpoint.mode = "always-A"  # a judge that always picks the first image shown
    v = api_judge().compare(RED, BLUE, "a red cube")
    assert v.winner == "tie" and v.gap == 0.0
    assert [o.winner for o in v.extra["votes"]] == ["a", "b"]
    assert json.loads(v.raw)["orders_agree"] is False


def test_retries_on_500_then_answers(endpoint):
    judge = api_judge(retries=3)
    endpoint.fail_next = 2
    v = judge.compare(RED, BLUE, "a red cube")
    assert v.winner == "a"
    assert endpoint.fail_next == 0 and len(endpoint.requests) == 1 + 2 + 2  # probe, 2 failures, 2 orders


def test_gives_up_after_retries_with_a_one_line_error(endpoint):
    judge = api_judge(retries=1)
    endpoint.fail_next = 100
    with pytest.raises(JudgeUnavailable, match="after 2 attempts: HTTP 500") as e:
        judge.compare(RED, BLUE, "a red cube")
    assert "\n" not in str(e.value) and KEY not in str(e.value)


def test_a_request_that_times_out_is_retried(endpoint):
    judge = api_judge(timeout_s=0.5, retries=2, concurrency=1)
    endpoint.requests.clear()
    endpoint.hang_next = 1  # the next request hangs past the time-out; its retry answers
    v = judge.compare(RED, BLUE, "a red cube")
    assert v.winner == "a"
    assert len(endpoint.requests) == 3  # the timed-out one, its retry, the other order


def test_an_endpoint_that_never_answers_in_time_is_a_one_line_error(endpoint):
    judge = api_judge(timeout_s=0.3, retries=1, concurrency=1)
    endpoint.delay_s = 2.0
    with pytest.raises(JudgeUnavailable, match="no answer within 0.3 s") as e:
        judge.compare(RED, BLUE, "a red cube")
    assert "\n" not in str(e.value)


def test_concurrency_is_limited(endpoint):
    judge = api_judge(template=True, criteria=list(CRITERIA), concurrency=2)
    endpoint.delay_s = 0.05
    endpoint.max_in_flight = 0
    judge.compare(RED, BLUE, "two red cubes on a blue plate")
    assert len(endpoint.requests) > 8 and 1 <= endpoint.max_in_flight <= 2


@pytest.mark.parametrize("mode", ["text", "no-logprobs-param"])
def test_endpoint_without_logprobs_uses_the_one_token_answer(endpoint, mode):
    endpoint.mode = mode
    judge = api_judge()
    v = judge.compare(RED, BLUE, "a red cube")
    assert v.winner == "a" and v.gap == pytest.approx(1.0)
    assert judge.backend.logprobs is False
    assert "logprobs" not in endpoint.requests[-1]["body"]


def test_yesno_mode_scores_each_candidate_alone(endpoint):
    v = api_judge(mode="yesno").compare(RED, BLUE, "a red cube")
    assert v.winner == "a" and v.scores_a[0] > 0.5 > v.scores_b[0]
    assert all(sum(p["type"] == "image_url" for p in r["body"]["messages"][0]["content"]) == 1
               for r in endpoint.requests)


def test_per_view_verdicts(endpoint):
    a = torch.cat([RED, BLUE])  # view 0 red, view 1 blue
    b = torch.cat([BLUE, RED])
    v = api_judge(per_view=True).compare(a, b, "a red cube")
    assert len(v.scores_a) == 2 and v.scores_a[0] > 0.5 > v.scores_a[1]


def test_raw_answers_are_kept(endpoint):
    v = api_judge(template=True, criteria=["overall"]).compare(RED, BLUE, "two red cubes")
    raw = json.loads(v.raw)
    assert raw["questions"] == ["count:cubes", "attribute:red cubes", "criterion:overall"]
    assert len(raw["answers"]) == 6 and all("logprobs" in a and "text" in a for a in raw["answers"])


# ---------------------------------------------------------------- one-line errors


def test_missing_key_is_a_one_line_error(endpoint, monkeypatch):
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(UserError, match=ENV_KEY) as e:
        judges.load("lmm-api")
    assert "\n" not in str(e.value)


def test_missing_url_and_model_are_one_line_errors(monkeypatch):
    for var in (ENV_BASE_URL, ENV_MODEL, ENV_KEY):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match=ENV_BASE_URL):
        judges.load("lmm-api:m")
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match="lmm-api:MODEL"):
        judges.load("lmm-api")


def test_unreachable_url_is_a_one_line_error_before_the_run(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ENV_BASE_URL, f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv(ENV_KEY, KEY)
    with pytest.raises(UserError, match=f"127.0.0.1:{port}.*cannot connect") as e:
        judges.load("lmm-api:m", lmm=LMMConfig(retries=1, backoff_s=0.01))
    assert "\n" not in str(e.value) and KEY not in str(e.value)


def test_wrong_path_is_a_one_line_error(endpoint, monkeypatch):
    monkeypatch.setenv(ENV_BASE_URL, endpoint.url.removesuffix("/v1"))  # forgot /v1
    with pytest.raises(UserError, match="no OpenAI-compatible chat endpoint.*ends in /v1") as e:
        judges.load("lmm-api", lmm=LMMConfig(**FAST))
    assert "\n" not in str(e.value)


def test_model_that_refuses_images_is_a_one_line_error(endpoint):
    endpoint.mode = "refuse-images"
    with pytest.raises(UserError, match="'fake-vl' .* does not accept images") as e:
        judges.load("lmm-api", lmm=LMMConfig(**FAST))
    assert "\n" not in str(e.value)


def test_key_is_sent_as_bearer_and_never_shown(endpoint):
    judge = api_judge()
    assert all(r["auth"] == f"Bearer {KEY}" for r in endpoint.requests)
    assert KEY not in repr(judge.backend) and KEY not in repr(vars(judge)) and KEY not in judge.compare(
        RED, BLUE, "a red cube").raw


# ---------------------------------------------------------------- the local back-end: a tiny Qwen2-VL

CHAT_TEMPLATE = (  # Qwen2-VL's chat format (images as <|vision_start|><|image_pad|><|vision_end|>)
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_qwen2vl(path: Path) -> Path:
    """A random-weight Qwen2-VL (1 vision block, 2 text layers, width 32) with a byte-level BPE tokenizer
    and Qwen2-VL's image processor, saved with save_pretrained like a hub snapshot."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(path)
    ids = {s: fast.convert_tokens_to_ids(s) for s in specials}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return make_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl"))


@pytest.mark.slow
def test_tiny_qwen2vl_answers_a_pair_end_to_end_from_option_logits(tiny_qwen, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    judge = judges.load(f"lmm:{tiny_qwen}", "cpu", lmm=LMMConfig(template=False, criteria=["overall"]))
    assert isinstance(judge, LMMJudge) and isinstance(judge.backend, LocalQwen)
    assert judge.name == f"lmm:{tiny_qwen}"
    a, b = RED.expand(4, -1, -1, -1), BLUE.expand(4, -1, -1, -1)  # 4 views, tiled into one image each
    v = judge.compare(a, b, "a red cube")
    assert v.winner in ("a", "b", "tie") and 0.0 <= v.gap <= 1.0 and judge.calls == 2
    # the scores are the softmax over the 'A'/'B' logits at the answer position, averaged over both orders
    q = judge.questions("a red cube")[0]
    ia, ib = judge.units(a)[0], judge.units(b)[0]
    l_ab = judge.backend.option_logits(pairwise_content("a red cube", q, ia, ib), ("A", "B"))
    l_ba = judge.backend.option_logits(pairwise_content("a red cube", q, ib, ia), ("A", "B"))
    p_ab, p_ba = torch.softmax(l_ab, 0)[0].item(), torch.softmax(l_ba, 0)[1].item()
    assert v.scores_a[0] == pytest.approx((p_ab + p_ba) / 2, abs=1e-5)
    assert v.extra["votes"][0].scores_a[0] == pytest.approx(p_ab, abs=1e-5)
    raw = json.loads(v.raw)
    assert set(raw["answers"][0]["logits"]) == {"A", "B"}
    # Yes/No questions read the 'Yes'/'No' logits the same way
    yes = judges.load(f"lmm:{tiny_qwen}", "cpu", lmm=LMMConfig(mode="yesno")).compare(a, b, "two red cubes")
    assert all(0.0 < s < 1.0 for s in yes.scores_a + yes.scores_b)


def test_missing_local_model_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="cannot be loaded from the local cache or folder.*hf download") as e:
        judges.load(f"lmm:{tmp_path / 'nope'}", "cpu")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_tiny_qwen2vl_by_hub_id_from_the_local_cache(tiny_qwen, tmp_path):
    """Users pass the hub id: the model is found in the Hugging Face cache, offline."""
    snap = tmp_path / "hub" / "models--tiny--qwen2vl" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in tiny_qwen.iterdir():
        (snap / f.name).symlink_to(f)
    (tmp_path / "hub" / "models--tiny--qwen2vl" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--qwen2vl" / "refs" / "main").write_text("0" * 40)
    code = ("import torch; from dreamdpo import judges; from dreamdpo.judges.lmm import LMMConfig;"
            "j = judges.load('lmm:tiny/qwen2vl', 'cpu', lmm=LMMConfig(template=False));"
            "v = j.compare(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), 'a cube');"
            "print('OK', j.name, v.winner)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK lmm:tiny/qwen2vl" in out.stdout


def test_cost_estimate_counts_calls_and_tokens(endpoint):
    judge = api_judge()  # one question (overall), pairwise: 2 calls per comparison
    est = judge.estimate("a red cube", n_compares=100, n_views=4, resolution=256)
    # 4 views tile into 512×512, shrunk to 448 → 16×16 = 256 tokens per image, 2 images per call
    assert est["calls"] == 200 and est["questions"] == 1 and est["tokens"] > 200 * 512
    per_view = api_judge(per_view=True).estimate("a red cube", n_compares=100, n_views=4, resolution=256)
    assert per_view["calls"] == 800
    assert judge.calls_per_compare("a red cube", 4) == 2

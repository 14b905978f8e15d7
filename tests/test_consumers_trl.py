"""The TRL export as TRL itself takes it: `load_dataset(DIR)` and one unchanged `trl.DPOTrainer` training
step of a tiny random-weight LLaVA (CLIP vision tower + Llama), built and saved here, loaded by path as a
user would (TRL builds the reference model from that path). No network: the tokenizer is a word-level
one written in code, the image processor a CLIPImageProcessor at 28 px."""
from __future__ import annotations

import math

import pytest
import torch

from db import export
from test_dataset_export import synthetic_comparisons

pytestmark = pytest.mark.slow  # imports TRL and trains (tens of seconds on 2 cores)

IMAGE_TOKENS = 4  # (28 px / 14 px patches)², CLS dropped by vision_feature_select_strategy="default"


def tiny_llava(path) -> None:
    """A LLaVA model folder (config, weights, processor with a chat template) written to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "user", "assistant", ":", "Which", "image", "matches",
             "the", "prompt", "better", "?", "Prompt", '"', "Answer", "First", "or", "Second", ".", "Tie", "Both", "bad"]
    word_level = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
                "{% endfor %}{% endif %}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)


def test_dpo_trainer_takes_one_step_on_the_export(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset
    from transformers import AutoProcessor
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "trl"
    export.write_comparisons(iter(synthetic_comparisons(n_live=8)), "trl", out,
                             export.ExportFilters(include_ties=True))
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {"train", "ties", "both_bad", "skips"} <= set(ds)
    model_dir = tmp_path / "tiny-llava"
    tiny_llava(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1, use_cpu=True,
                     report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-2, bf16=False)
    trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=ds["train"], processing_class=processor)

    batch = trainer.data_collator([ds["train"][i] for i in range(2)])  # 2 rows × (chosen, rejected) × 2 images
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert batch["pixel_values"].shape[0] == 8
    assert int((batch["input_ids"] == image_token).sum()) == 8 * IMAGE_TOKENS

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("language_model" in n for n in changed) and any("vision" in n for n in changed)

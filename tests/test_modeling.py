"""Models built from a config (model.init: scratch): any AutoModelForQuestionAnswering architecture."""

from __future__ import annotations

import pytest
from conftest import demo_tiny_params

from uqa.params.overrides import deep_merge
from uqa.params.validation import params_from_dict


@pytest.fixture(scope="module")
def tokenizer():
    from uqa.text.tokenizer import train_tokenizer

    return train_tokenizer(["لاہور پاکستان کا ایک شہر ہے جو 1906 میں بڑا ہوا۔ لاہور کہاں ہے؟"] * 3, vocab_size=80)


@pytest.mark.parametrize("model_type", ["xlm-roberta", "modernbert"])
def test_a_scratch_model_takes_its_special_token_ids_from_the_tokenizer(tokenizer, model_type):
    """ModernBERT's config names cls/sep ids from its own 50k vocabulary: a model built on a 80-piece
    tokenizer must carry the tokenizer's ids, and answer a question pair."""
    import torch

    from uqa.model.modeling import build_model, scratch_config

    model = params_from_dict(deep_merge(demo_tiny_params(), {"model": {"config": {"model_type": model_type}}})).model
    config = scratch_config(model, len(tokenizer), tokenizer)
    assert config.model_type == model_type and config.vocab_size == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id
    if model_type == "modernbert":
        assert (config.cls_token_id, config.sep_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    else:  # not a field of this architecture: not added to its config
        assert "cls_token_id" not in config.to_dict()

    qa = build_model(model, tokenizer, "sdpa")
    batch = tokenizer(["لاہور کہاں ہے؟"], ["لاہور پاکستان کا ایک شہر ہے۔"], return_tensors="pt")
    with torch.no_grad():
        out = qa(**batch)
    assert out.start_logits.shape == out.end_logits.shape == batch["input_ids"].shape

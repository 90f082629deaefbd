"""Model construction: a pretrained checkpoint (hub id or directory) or a model built from a config."""

from __future__ import annotations

from typing import Any

from uqa.errors import UserError
from uqa.ops.hub import hub_error
from uqa.params.schema import ModelParams

HARD_CAP = 512  # the seed's cap; BERT/XLM-R position tables stop there too


def scratch_config(model: ModelParams, vocab_size: int, tokenizer=None):
    from transformers import AutoConfig

    cfg: dict[str, Any] = dict(model.config or {})
    model_type = cfg.pop("model_type")
    cfg["vocab_size"] = vocab_size  # always the tokenizer's: a mismatch would index out of the table
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
        if tokenizer.bos_token_id is not None:
            cfg.setdefault("bos_token_id", tokenizer.bos_token_id)
        if tokenizer.eos_token_id is not None:
            cfg.setdefault("eos_token_id", tokenizer.eos_token_id)
        # architectures that name them (ModernBERT) otherwise keep ids from their own vocabulary
        from transformers import CONFIG_MAPPING

        config_class = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None
        for name in ("cls", "sep"):
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is not None and hasattr(config_class, f"{name}_token_id"):
                cfg.setdefault(f"{name}_token_id", token_id)
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"model.config: {exc}") from None


def pretrained_config(model: ModelParams):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model.name, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise hub_error("model", model.name, exc, "model.name") from None


def position_limit(config) -> int:
    """Longest input the model's position table takes (RoBERTa-style models reserve pad+1 slots)."""
    limit = getattr(config, "max_position_embeddings", None) or HARD_CAP
    if "roberta" in getattr(config, "model_type", "") or getattr(config, "model_type", "") == "camembert":
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return int(limit)


def sequence_limit(model: ModelParams, tokenizer) -> int:
    """min(512, the model's position limit, the tokenizer's model_max_length).

    Tokenizing needs only the model's config, not its weights; when even that cannot be fetched
    (offline, no local copy) the tokenizer's own limit is used, with a warning."""
    import logging

    tok_max = getattr(tokenizer, "model_max_length", None)
    tok_limit = tok_max if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else None
    try:
        config = scratch_config(model, len(tokenizer), tokenizer) if model.init == "scratch" else pretrained_config(model)
    except UserError as exc:
        if model.init == "scratch" or tok_limit is None:
            raise
        logging.getLogger("uqa").warning(
            "could not read the config of %s (%s); using the tokenizer's limit of %d tokens",
            model.name, str(exc).split(" (")[0], tok_limit)
        return min(HARD_CAP, tok_limit)
    limit = min(HARD_CAP, position_limit(config))
    if tok_limit is not None:
        limit = min(limit, tok_limit)
    return limit


def build_model(model: ModelParams, tokenizer, attn_implementation: str | None = None):
    """AutoModelForQuestionAnswering: from model.name (pretrained) or from model.config (scratch)."""
    from transformers import AutoModelForQuestionAnswering

    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if model.init == "scratch":
        config = scratch_config(model, len(tokenizer), tokenizer)
        try:
            return AutoModelForQuestionAnswering.from_config(config, **kwargs)
        except ValueError:  # the architecture does not support the requested attention
            return AutoModelForQuestionAnswering.from_config(config)
    try:
        qa = AutoModelForQuestionAnswering.from_pretrained(
            model.name, trust_remote_code=model.trust_remote_code, **kwargs
        )
    except ValueError as exc:
        if attn_implementation and "attn" in str(exc).lower():
            return build_model(model, tokenizer, None)
        raise hub_error("model", model.name, exc, "model.name") from None
    except OSError as exc:
        raise hub_error("model", model.name, exc, "model.name") from None
    if qa.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(
            f"model.tokenizer has {len(tokenizer)} tokens but {model.name} embeds only "
            f"{qa.get_input_embeddings().num_embeddings}: use the model's own tokenizer"
        )
    return qa

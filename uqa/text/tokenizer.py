"""Load the (fast) tokenizer a model needs, or train a small one for a model built from scratch."""

from __future__ import annotations

from collections.abc import Iterable

from uqa.errors import UserError
from uqa.ops.hub import hub_error

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's order: ids 0..4


def load_tokenizer(source: str, trust_remote_code: bool = False, revision: str | None = None):
    """AutoTokenizer for a hub id or a local directory; requires a fast (Rust) tokenizer."""
    from transformers import AutoTokenizer

    from uqa.ops.procs import raise_if_interrupted

    raise_if_interrupted()  # a Ctrl-C during that import (it imports torch) may have been swallowed there
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise hub_error("tokenizer", source, exc, "model.tokenizer") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"tokenizer {source!r} is a slow (Python) tokenizer ({type(tokenizer).__name__}); "
            "sliding windows need offsets from a fast tokenizer. Use a model that ships tokenizer.json "
            "or set model.tokenizer to one that does."
        )
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """An XLM-R-shaped tokenizer (NFKC + Metaspace, XLM-R's specials, <s> A </s></s> B </s>) trained on `texts`.

    BPE rather than XLM-R's Unigram: on a corpus of a few thousand sentences the Unigram trainer
    stops at a few hundred pieces and cuts common Urdu words into letters (3x longer inputs),
    while BPE learns whole words. Wrapped as PreTrainedTokenizerFast: wrapping it as
    XLMRobertaTokenizer and reloading it with AutoTokenizer silently drops the normalizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    # digits one by one: a number the train split never shows is then still made of known pieces
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )

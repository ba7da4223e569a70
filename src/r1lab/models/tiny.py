"""A tiny from-scratch model and tokenizer that take the same code path as a real 1.5B model.

The tokenizer is character level (`tokenizers` WordLevel over single characters) wrapped in a
`PreTrainedTokenizerFast`, with the R1 tags `<think>`, `</think>`, `<answer>`, `</answer>` as
single tokens. The model is an ordinary `LlamaForCausalLM` with small dimensions. Both save with
`save_pretrained` and load back with `AutoTokenizer` / `AutoModelForCausalLM`, in safetensors.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from r1lab.config import TinyModelConfig

R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
# printable ASCII plus newline: enough for arithmetic, the R1 templates and English prose
CHARS = sorted(set(string.printable) - set("\r\x0b\x0c\t")) + ["\n"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with the R1 tags as single tokens.

    >>> tok = build_char_tokenizer()
    >>> ids = tok("<think>1+2</think>", add_special_tokens=False)["input_ids"]
    >>> len(ids), tok.decode(ids)
    (5, '<think>1+2</think>')
    """
    specials = [PAD, EOS, UNK]
    chars = list(dict.fromkeys(CHARS))
    vocab = {tok: i for i, tok in enumerate(specials + list(R1_TAGS) + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # every character is its own "word"; the R1 tags are matched first as added tokens
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    tok.add_tokens(list(R1_TAGS))
    tok.model_max_length = 1 << 30
    return tok


def build_tiny_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM sized by `cfg` (about 0.8M parameters by default)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attention_bias=False,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model

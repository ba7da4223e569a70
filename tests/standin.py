"""A local stand-in for a real Hugging Face chat model (nothing downloaded): a Qwen2 built from a
config, a byte-level BPE tokenizer trained here with the `tokenizers` library, and a Qwen2.5-style
chat template (`<|im_start|>role ... <|im_end|>`). Used by the example-config and serve tests."""

from __future__ import annotations

from pathlib import Path

# Qwen2.5's own template, cut to what r1lab uses (no tools): a default system message when the
# conversation has none, then each message, then the assistant's turn opened
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
R1_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? 48 / 2 = 24. 48 + 24 = 72. #### 72",
    "Find the value of x such that 2x + 3 = 11. Subtract 3: 2x = 8, so x = \\boxed{4}.",
    "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n",
    "def below_zero(operations):\n    total = 0\n    for op in operations:\n        total += op\n",
    "import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())))\n",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
    "Think about the problem inside <think> </think> tags, then give the final answer.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 + - * / = ( ) [ ] { } < > : ; , . ! ? ' \" #",
]


def build_standin(path: str | Path, hidden: int = 32, layers: int = 2, context: int = 1024,
                  vocab: int = 400, seed: int = 0) -> Path:
    """Write a stand-in model directory (config, safetensors, tokenizer files with the chat
    template) to `path`; returns it. Deterministic for a given seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.add_tokens(R1_TAGS)
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = context
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=context, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab.config import ModelConfig
from r1lab.models import load_policy, load_reference
from r1lab.models.tiny import R1_TAGS


def test_r1_tags_are_single_tokens_and_text_round_trips(tokenizer):
    for tag in R1_TAGS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    text = "Q:12 + 30\nA:<think>2+0=2; wait, 1+3=4</think><answer> 42 </answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text) - sum(len(t) - 1 for t in R1_TAGS)


def test_save_and_load_with_auto_classes(tmp_path: Path, micro_model, tokenizer):
    micro_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    text = "<think>7+9=16</think><answer>16</answer>"
    assert tok2.decode(tok2(text)["input_ids"]) == text
    ids = torch.tensor([tok2(text)["input_ids"]])
    torch.testing.assert_close(model2(ids).logits, micro_model(ids).logits)


def test_load_policy_from_path_and_reference_is_frozen_copy(tmp_path: Path, micro_model, tokenizer):
    micro_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_policy(ModelConfig(path=str(tmp_path), device="cpu"))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    ref = load_reference(model)
    assert all(not p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(ref.parameters()))


def test_load_policy_rejects_a_non_model_directory(tmp_path: Path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(ModelConfig(path=str(tmp_path)))

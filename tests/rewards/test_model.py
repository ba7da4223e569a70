import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_reward_model_from_local_path(tmp_path):
    from r1lab.rewards.model import reward_model

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    tok_dir = tmp_path / "rm"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(tok_dir / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16, num_labels=1)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(tok_dir)
    tokenizer.save_pretrained(tok_dir)
    batch = tokenizer("ab", return_tensors="pt")
    with torch.no_grad():
        want = float(model(**batch).logits[0, 0])
    got = reward_model("b", {"prompt": "a"}, path=str(tok_dir)).value
    assert got == pytest.approx(want, abs=1e-5)

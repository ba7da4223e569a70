"""LoRA via peft: only the adapter trains, the reference is the base with the adapter off (no
copy), and the merged checkpoint loads in plain transformers with the policy's exact outputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from tests.conftest import MICRO  # noqa: E402

from r1lab.config import LoraConfig, ModelConfig  # noqa: E402
from r1lab.models import load_policy, load_reference  # noqa: E402
from r1lab.models.lora import (  # noqa: E402
    AdapterDisabled,
    is_lora,
    load_adapter,
    merged_state_dict,
    save_merged,
)  # noqa: E402

IDS = torch.tensor([[5, 17, 30, 44, 9, 12]])  # [1, 6]


def lora_policy(**kw):
    cfg = ModelConfig(tiny=MICRO, device="cpu", lora=LoraConfig(r=4, alpha=8, **kw))
    return load_policy(cfg, seed=0)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits  # [1, 6, V]


def train_adapter(model, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=IDS).logits[0, :-1], IDS[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_only_the_adapter_trains_and_starts_as_the_base():
    model, _ = lora_policy(target_modules=["q_proj", "v_proj"])
    assert is_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x (q, v) x (A, B)
    assert len(trainable) == 8 and all(".lora_" in n for n in trainable)
    # r=4 adapters on hidden 32: A [4, 32] + B [32, 4] per linear
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 * 4 * 32
    base, _ = load_policy(ModelConfig(tiny=MICRO, device="cpu"), seed=0)
    assert torch.equal(logits(model), logits(base))  # B = 0 at the start


def test_reference_is_the_base_with_adapter_disabled_no_copy():
    model, _ = lora_policy()
    ref = load_reference(model)
    assert isinstance(ref, AdapterDisabled) and list(ref.parameters()) == []
    before = logits(model)
    train_adapter(model)
    after = logits(model)
    assert (after - before).abs().max() > 1e-2  # the adapter moved the policy
    assert torch.equal(logits(ref), before)  # the reference did not move
    assert (logits(model) - after).abs().max() == 0  # and the adapter is back on afterwards
    # the frozen base weights alone (what vLLM loads once before adapters follow) are unchanged
    base, _ = load_policy(ModelConfig(tiny=MICRO, device="cpu"), seed=0)
    frozen = merged_state_dict(model, merge=False)
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items())


def test_merged_checkpoint_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = lora_policy()
    train_adapter(model)
    save_merged(model, tok, tmp_path / "final")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not is_lora(plain)
    assert type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert (logits(plain) - logits(model)).abs().max() < 1e-5
    # the adapter alone resumes a LoRA run: a fresh adapter loaded from it gives the same policy
    fresh, _ = lora_policy()
    load_adapter(fresh, tmp_path / "final")
    assert torch.equal(logits(fresh), logits(model))


def test_unknown_target_module_names_the_key():
    with pytest.raises(ValueError, match="model.lora.target_modules: qproj not in the model"):
        lora_policy(target_modules=["qproj"])


def test_a_lora_grpo_run_saves_merged_weights_and_its_adapter(tmp_path):
    """`train grpo` with `model.lora`: `final/` (and every checkpoint) is the merged policy as a
    plain transformers directory, with the trained peft model's outputs, and the adapter in
    `adapter/`, which `resume` loads back exactly."""
    from tests.train.test_grpo import _LengthReward
    from transformers import AutoModelForCausalLM

    from r1lab.config import RunConfig
    from r1lab.data.tasks import generate
    from r1lab.train.grpo import GRPOTrainer

    rows = [p.row() for p in generate("addition", 8, seed=0, split="train")]
    cfg = RunConfig.model_validate({
        "model": {"tiny": MICRO.model_dump(), "lora": {"r": 4, "alpha": 8}},
        "rollout": {"group_size": 4, "max_new_tokens": 8},
        "train": {"steps": 2, "batch_size": 2, "micro_batch_size": 8, "seed": 0, "save_every": 1},
        "optim": {"lr": 5e-2}, "log": {"progress": False}})

    model, tok = load_policy(cfg.model, seed=0)
    tr = GRPOTrainer(cfg, model, tok, rows, tmp_path / "a")
    tr.rewards = _LengthReward()  # varies within every group of random completions
    tr.fit()
    final = tr.save(tmp_path / "a" / "final")
    plain = AutoModelForCausalLM.from_pretrained(final)
    assert not is_lora(plain) and (final / "adapter" / "adapter_model.safetensors").is_file()
    assert (logits(plain) - logits(model)).abs().max() < 1e-5
    assert (logits(plain) - logits(lora_policy()[0])).abs().max() > 1e-4  # it trained
    fresh, _ = load_policy(cfg.model, seed=0)
    last = sorted((tmp_path / "a" / "checkpoints").iterdir())[-1]  # step 2: the final weights
    assert not is_lora(AutoModelForCausalLM.from_pretrained(last))
    GRPOTrainer(cfg, fresh, tr.tokenizer, rows, tmp_path / "b").resume(last)
    assert torch.equal(logits(fresh), logits(model))


def test_a_lora_run_resumed_mid_way_ends_as_the_uninterrupted_one(tmp_path):
    """3 steps straight vs 1 step + `--resume` for 2 more: the adapter (and its AdamW moments,
    RNGs and data position) comes back exactly, so every later checkpoint is bitwise equal."""
    import io
    import json

    from rich.console import Console
    from safetensors.torch import load_file
    from tests.train.survival import tiny_config

    from r1lab.pipeline.run import run_grpo

    def cfg(steps):
        return tiny_config(model={"lora": {"r": 4, "alpha": 8}},
                           train={"steps": steps, "save_every": 1, "keep_last": 5})

    quiet = lambda: Console(file=io.StringIO(), width=300)  # noqa: E731
    run_grpo(cfg(3), tmp_path / "a", console=quiet())
    run_grpo(cfg(1), tmp_path / "b", console=quiet())
    run_grpo(cfg(3), tmp_path / "b", console=quiet(), resume="latest")
    rewards = {}
    for run in ("a", "b"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        rewards[run] = [json.loads(x)["reward"] for x in lines]
    assert rewards["a"] == rewards["b"] and len(set(rewards["a"])) > 1  # the same, and moving
    first = load_file(tmp_path / "a" / "checkpoints" / "step-1" / "adapter" / "adapter_model.safetensors")
    for step in (2, 3):
        a, b = (load_file(tmp_path / run / "checkpoints" / f"step-{step}" / "adapter" /
                          "adapter_model.safetensors") for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert max((a[k] - first[k]).abs().max().item() for k in a) > 1e-4  # it trained on

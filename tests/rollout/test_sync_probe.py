"""The log-prob probe after a weight sync: quiet when the engine follows the trainer, loud when
the engine's weights were left stale (a broken sync), whatever the engine (here the native
sampler on its own copy of the weights, as vLLM or an FSDP2 rank's replica has)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import MICRO

from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.rollout import SamplingParams
from r1lab.rollout.sync import MismatchProbe, ReplicaEngine, RolloutMismatchWarning

PARAMS = SamplingParams(n=2, max_new_tokens=12, temperature=1.0, seed=5)


def setup(sync_weights: bool):
    tok = build_char_tokenizer()
    policy = build_tiny_model(MICRO, tok, seed=0)
    engine = ReplicaEngine(policy, tok, sync_weights=sync_weights)
    probe = MismatchProbe(completions=4, warn_kl=1e-3, pad_id=engine.pad_id)
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"],
               tok("7+8=", add_special_tokens=False)["input_ids"]]
    return policy, engine, probe, prompts


def optimiser_step(policy) -> None:
    """One real update: AdamW at lr 3e-2 on next-token loss (moves every weight by ~lr)."""
    ids = torch.randint(10, 60, (4, 10), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    loss = torch.nn.functional.cross_entropy(policy(input_ids=ids).logits[:, :-1].flatten(0, 1),
                                             ids[:, 1:].flatten())
    loss.backward()
    opt.step()


def test_synced_engine_agrees_with_the_trainer():
    policy, engine, probe, prompts = setup(sync_weights=True)
    optimiser_step(policy)
    engine.policy_updated()
    rollout = engine.generate(prompts, PARAMS)
    assert engine.syncs == 1 and engine.engine.last_backend == "native"
    m = probe(policy, rollout)
    assert m["rollout/mismatch_kl"] < 1e-6 and m["rollout/mismatch_max"] < 1e-4
    assert probe.warned == 0


def test_stale_engine_weights_trip_the_probe():
    policy, engine, probe, prompts = setup(sync_weights=False)
    before = probe(policy, engine.generate(prompts, PARAMS))
    assert before["rollout/mismatch_kl"] < 1e-6  # same weights so far: in agreement
    optimiser_step(policy)
    engine.policy_updated()  # the sync is called, and silently loads nothing
    rollout = engine.generate(prompts, PARAMS)
    with pytest.warns(RolloutMismatchWarning, match="a weight sync may have failed"):
        m = probe(policy, rollout)
    assert m["rollout/mismatch_kl"] > 1e-2  # ten times the warning threshold at least
    assert m["rollout/mismatch_max"] > 0.1
    assert probe.warned == 1

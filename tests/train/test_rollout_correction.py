"""TIS / MIS reach the policy loss, and the step logs the weight-sync probe."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import MICRO
from tests.train.survival import tiny_config

from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.train.grpo import GRPOTrainer


def one_step(tmp_path, **rollout) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    cfg = tiny_config(rollout={"group_size": 4, "max_new_tokens": 8, **rollout},
                      train={"steps": 1, "batch_size": 2, "micro_batch_size": 8, "seed": 3})
    tok = build_char_tokenizer()
    model = build_tiny_model(MICRO, tok, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(10, 15)]
    m = GRPOTrainer(cfg, model, tok, rows, tmp_path).step()
    return m, start, model.state_dict()


def moved(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_tis_with_an_engine_in_sync_is_the_plain_update(tmp_path):
    plain, start, w_plain = one_step(tmp_path / "a")
    tis, _, w_tis = one_step(tmp_path / "b", correction="tis", correction_cap=2.0)
    # the native sampler and the trainer agree (ratio 1 to float error): weight 1 everywhere
    assert plain["rollout/mismatch_kl"] < 1e-8 and tis["rollout/mismatch_max"] < 1e-5
    assert tis["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    # AdamW's first step is ~lr x sign(gradient): 1e-2 moves; float-level ratios move 1e-5
    assert moved(start, w_plain) > 1e-3 and moved(w_plain, w_tis) < 1e-4


def test_mis_below_ratio_one_masks_every_token(tmp_path):
    m, start, after = one_step(tmp_path, correction="mis", correction_cap=0.5)
    # every ratio is ~1 > 0.5: every token is masked, so no gradient and no update
    assert m["loss"] == 0.0 and m["grad_norm"] == 0.0
    assert moved(start, after) == 0.0


def test_unknown_correction_lists_the_names(tmp_path):
    with pytest.raises(KeyError, match="tis"):
        one_step(tmp_path, correction="tiss")


# ---------------------------------------------------------------- the probe, from the update's forward
def stale_trainer(tmp_path, prepare=lambda model: None, **algorithm):
    """A trainer whose engine samples from a copy of the weights that is never refreshed (a
    broken sync), and the rollouts it draws."""
    from r1lab.rollout.sync import ReplicaEngine

    cfg = tiny_config(rollout={"group_size": 4, "max_new_tokens": 8},
                      train={"steps": 2, "batch_size": 2, "micro_batch_size": 8, "seed": 3},
                      optim={"lr": 3e-2}, algorithm=algorithm)
    tok = build_char_tokenizer()
    model = build_tiny_model(MICRO, tok, seed=0)
    prepare(model)
    rows = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(10, 15)]
    trainer = GRPOTrainer(cfg, model, tok, rows, tmp_path)
    engine = ReplicaEngine(model, tok, sync_weights=False)
    trainer.engine = trainer.sampler.engine = engine
    drawn = []
    generate = engine.generate
    engine.generate = lambda *a, **k: drawn.append(generate(*a, **k)) or drawn[-1]
    return trainer, drawn


def separate_probe(trainer, rollout) -> dict[str, float]:
    from r1lab.rollout.sync import MismatchProbe

    return MismatchProbe(4, warn_kl=1e9, temperature=1.0, pad_id=trainer.engine.pad_id,
                         logprobs_fn=trainer.forward_logprobs)(trainer.model, rollout)


def refuse(*args, **kwargs):
    raise AssertionError("the probe ran a forward of its own")


def test_probe_from_the_update_forward_equals_a_separate_probe(tmp_path):
    from r1lab.rollout.sync import RolloutMismatchWarning

    trainer, drawn = stale_trainer(tmp_path)
    trainer.probe.logprobs_fn = refuse  # the step's probe must not run a forward of its own
    calls = []
    update = trainer.update

    def spy(tokens, adv, logp, probe_rows):
        calls.append(probe_rows)
        separate.append(separate_probe(trainer, drawn[-1]))  # before the weights move
        return update(tokens, adv, logp, probe_rows)

    separate: list[dict] = []
    trainer.update = spy
    first = trainer.step()  # the copy still equals the policy
    with pytest.warns(RolloutMismatchWarning, match="a weight sync may have failed"):
        second = trainer.step()  # the policy moved, the engine's copy did not
    assert calls == [4, 4] and trainer.probe.warned == 1
    assert first["rollout/mismatch_kl"] < 1e-8 and separate[0]["rollout/mismatch_kl"] < 1e-8
    assert second["rollout/mismatch_kl"] > 1e-2  # ten times the threshold at least
    for key in ("rollout/mismatch_kl", "rollout/mismatch_max"):
        assert second[key] == pytest.approx(separate[1][key], rel=1e-4), key
    assert first["probe_s"] < 1e-3  # no forward of its own


def test_a_model_with_dropout_gets_a_probe_forward_of_its_own(tmp_path):
    # training-mode forwards with dropout are random: the probe must not reuse them
    def attention_dropout(model):
        model.config.attention_dropout = 0.1
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.1

    trainer, drawn = stale_trainer(tmp_path, attention_dropout)
    assert trainer.updater.dropout
    own = []
    fn = trainer.probe.logprobs_fn
    trainer.probe.logprobs_fn = lambda *a: own.append(1) or fn(*a)
    m = trainer.step()
    assert own == [1] and m["rollout/mismatch_kl"] < 1e-8  # eval mode: deterministic, in sync

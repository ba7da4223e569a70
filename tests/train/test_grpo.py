import json
from pathlib import Path

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.data.tasks import generate
from r1lab.train.common import thinks
from r1lab.train.grpo import GRPOTrainer

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


def _cfg(**sections) -> RunConfig:
    base = {
        "model": {"tiny": MICRO},
        "rollout": {"group_size": 4, "max_new_tokens": 12},
        "train": {"steps": 2, "batch_size": 2, "micro_batch_size": 4, "seed": 0},
        "optim": {"lr": 1e-2},
        "log": {"progress": False, "samples_per_step": 2},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return RunConfig.model_validate(base)


def _rows():
    return [p.row() for p in generate("addition", 20, seed=0, split="train")]


def test_two_grpo_steps_finite_loss_changed_weights(tmp_path: Path, micro_model, tokenizer):
    cfg = _cfg()
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    trainer = GRPOTrainer(cfg, micro_model, tokenizer, _rows(), tmp_path)
    assert trainer.ref_model is None  # beta == 0 loads no reference
    # random weights give all-zero rewards; a reward that varies within a group gives signal
    trainer.rewards = _LengthReward()
    history = trainer.fit()
    assert len(history) == 2
    for m in history:
        assert torch.isfinite(torch.tensor(m["loss"]))
        assert m["grad_norm"] > 0
    changed = sum(not torch.equal(before[k], v) for k, v in micro_model.state_dict().items())
    assert changed > 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert {"reward", "think_rate", "completion_len", "step_s", "clip_frac"} <= set(json.loads(lines[0]))
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"prompt", "completion", "reward"} <= set(samples[0])


def test_kl_term_loads_a_reference_and_is_logged(tmp_path: Path, micro_model, tokenizer):
    cfg = _cfg(algorithm={"beta": 0.1}, train={"steps": 1})
    trainer = GRPOTrainer(cfg, micro_model, tokenizer, _rows(), tmp_path)
    assert trainer.ref_model is not None
    trainer.rewards = _LengthReward()
    (m,) = trainer.fit()
    # the first step's policy equals the reference, so the k3 KL is exactly 0
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)


def test_unknown_component_names_fail_before_any_work(micro_model, tokenizer, tmp_path):
    from r1lab.registry import UnknownComponentError

    with pytest.raises(UnknownComponentError, match="valid: .*grpo"):
        GRPOTrainer(_cfg(algorithm={"advantage": "gpro"}), micro_model, tokenizer, _rows(), tmp_path)
    with pytest.raises(UnknownComponentError, match="unknown reward 'acuracy'"):
        GRPOTrainer(_cfg(rewards={"components": [{"name": "acuracy"}]}), micro_model, tokenizer,
                    _rows(), tmp_path)


def test_thinks_needs_a_nonempty_think_block():
    assert thinks("<think>3+4=7</think><answer>7</answer>")
    assert not thinks("<think> </think><answer>7</answer>")
    assert not thinks("<answer>7</answer>") and not thinks("<think>3+4=7")


class _LengthReward:
    """Reward = completion length / 10: varies within every group of random completions."""

    def __call__(self, texts, rows):
        from r1lab.rewards import RewardBatch

        total = [len(t) / 10 for t in texts]
        return RewardBatch(total=total, components={"length": total}, metrics={}, errors=0)


def test_eval_every_logs_heldout_pass1_on_those_steps(tmp_path: Path, micro_model, tokenizer):
    from r1lab.evaluation import evaluate, paper_protocols

    heldout = [p.row() for p in generate("addition", 6, seed=0, split="heldout")]
    cfg = _cfg(train={"steps": 4}, eval={"every": 2, "num_problems": 5, "k": 2,
                                         "temperatures": [0.6], "greedy": True})
    trainer = GRPOTrainer(cfg, micro_model, tokenizer, _rows(), tmp_path, eval_rows=heldout)
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "eval/pass1" in m] == [2, 4]
    # the logged number is the paper's protocol (first sampled one: T=0.6, top-p 0.95, k=2) on
    # the first eval.num_problems held-out rows, as `evaluate` computes it on these weights
    proto = paper_protocols(cfg.eval)[1]
    assert (proto.temperature, proto.top_p, proto.k) == (0.6, 0.95, 2)
    want = evaluate(micro_model, tokenizer, heldout[:5], lambda r: trainer.template(r["question"], tokenizer),
                    [proto], max_new_tokens=12, seed=0)[proto.name]
    assert lines[-1]["eval/pass1"] == want["pass1"] and lines[-1]["eval/mean_len"] == want["mean_len"]
    assert want["mean_len"] > 0 and len(want["samples"]) == 5


@pytest.mark.parametrize("algorithm,critic,key", [
    ({"scale_rewards": "batch"}, None, "algorithm.scale_rewards"),
    ({"advantage": "normalize_then_sum"}, None, "algorithm.advantage"),
    ({"advantage": "gae"}, {}, "critic.whiten"),
])
def test_batch_wide_statistics_are_refused_across_processes(tmp_path, micro_model, tokenizer,
                                                            algorithm, critic, key):
    from r1lab.config import ConfigError
    from r1lab.train.distributed import World

    cfg = _cfg(algorithm=algorithm, **({"critic": critic} if critic is not None else {}))
    GRPOTrainer(cfg, micro_model, tokenizer, _rows(), tmp_path)  # one process: fine
    with pytest.raises(ConfigError, match=key):
        GRPOTrainer(cfg, micro_model, tokenizer, _rows(), tmp_path, world=World(0, 2))


def test_the_resolved_backend_is_in_config_yaml_and_the_first_metrics_line(tmp_path):
    import io

    import yaml
    from rich.console import Console

    from r1lab.pipeline.run import run_grpo

    from .survival import tiny_config

    out = tmp_path / "run"
    run_grpo(tiny_config(train={"steps": 2}), out, console=Console(file=io.StringIO()))
    backend = yaml.safe_load((out / "config.yaml").read_text())["backend"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert backend["kernels"] in ("on", "off") and backend["onednn_wgrad"] in ("mkl", "onednn")
    first = {k.removeprefix("backend/"): v for k, v in lines[0].items() if k.startswith("backend/")}
    assert first["kernels"] == backend["kernels"] and first["onednn"] == backend["onednn"]
    assert first["onednn_wgrad"] == backend["onednn_wgrad"]
    assert {k.split("/", 1)[1] for k in first if k.startswith("chosen_by/")} == set(backend["chosen_by"])
    assert not any(k.startswith("backend/") for k in lines[1])  # recorded once

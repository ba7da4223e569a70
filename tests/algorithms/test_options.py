"""resolve_algorithm: config options bound to the chosen functions, checked at config validation."""

import pytest
import torch

from r1lab.algorithms import ADVANTAGES, OptionError, choose, resolve_algorithm
from r1lab.config import AlgorithmConfig, ConfigError, CriticConfig, RunConfig, load_config


def test_option_the_loss_does_not_take_fails_config_validation_naming_the_key():
    with pytest.raises(ConfigError) as err:
        RunConfig.model_validate({"algorithm": {"loss": "gspo", "dual_clip_c": 3.0}})
    assert str(err.value) == ("algorithm.dual_clip_c: the loss 'gspo' does not take this option "
                              "(it takes: eps_high, eps_low)")


def test_option_error_from_a_yaml_file_and_an_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  advantage: dr_grpo\n  scale_rewards: batch\n")
    with pytest.raises(ConfigError, match=r"^algorithm\.scale_rewards: the advantage estimator "
                                          r"'dr_grpo' does not take this option \(it takes: none\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^algorithm\.eps_low: the loss 'pg'"):
        load_config(None, ["algorithm.loss=pg", "algorithm.eps_low=0.3"])


def test_defaults_the_user_did_not_set_go_only_to_functions_that_take_them():
    alg = resolve_algorithm(AlgorithmConfig(loss="pg", advantage="dr_grpo"))
    assert dict(alg.loss.options) == {} and dict(alg.advantage.options) == {}
    alg = resolve_algorithm(AlgorithmConfig(loss="gspo"))
    assert dict(alg.loss.options) == {"eps_low": 0.2, "eps_high": 0.2}  # config defaults
    assert dict(alg.advantage.options) == {"eps": 1e-4, "ddof": 1, "scale": "group"}


def test_chosen_passes_named_inputs_and_its_options():
    alg = resolve_algorithm(AlgorithmConfig(adv_eps=0.5, adv_ddof=0))
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    adv = alg.advantage(rewards=rewards, component_rewards=rewards[:, None],
                        component_weights=torch.ones(1), group_size=2,
                        mask=torch.ones(4, 1), values=None)  # extra inputs are dropped
    # group [1, 0]: population std 0.5 -> +-0.5 / (0.5 + 0.5); group [2, 2]: 0
    assert adv.squeeze(-1).tolist() == [0.5, -0.5, 0.0, 0.0]


def test_loss_and_aggregation_through_resolve():
    alg = resolve_algorithm(AlgorithmConfig(eps_low=0.1, eps_high=0.3, aggregation="seq_mean_token_sum"))
    logp = torch.log(torch.tensor([[2.0, 0.5]]))  # ratios 2, 0.5 against old_logp = 0
    per_token, metrics = alg.loss(logp=logp, old_logp=torch.zeros(1, 2),
                                  advantages=torch.tensor([[1.0, -1.0]]), mask=torch.ones(1, 2))
    assert torch.allclose(per_token, torch.tensor([[-1.3, 0.9]]))  # -min(2, 1.3), -min(-.5, -.9)
    loss = alg.aggregation(per_token=per_token, mask=torch.ones(1, 2), num_tokens=None,
                           num_seqs=2.0, norm_len=8)
    assert loss.item() == pytest.approx(-0.2)  # (-1.3 + 0.9) / 2 sequences


def test_kl_is_none_at_beta_zero_and_bound_above():
    assert resolve_algorithm(AlgorithmConfig()).kl is None
    kl = resolve_algorithm(AlgorithmConfig(beta=0.1, kl_estimator="k1")).kl
    assert kl is not None and kl.name == "k1"
    out = kl(logp=torch.tensor([[-1.0]]), ref_logp=torch.tensor([[-3.0]]),
             old_logp=torch.tensor([[-1.0]]), mask=torch.ones(1, 1))
    assert out.tolist() == [[2.0]]


def test_critic_constants_reach_gae_only():
    critic = CriticConfig(gamma=0.5, lam=0.25, whiten=False)
    alg = resolve_algorithm(AlgorithmConfig(advantage="gae"), critic)
    assert {k: alg.advantage.options[k] for k in ("gamma", "lam", "whiten")} == {
        "gamma": 0.5, "lam": 0.25, "whiten": False}
    assert "gamma" not in resolve_algorithm(AlgorithmConfig(), critic).advantage.options


def test_unknown_names_are_left_to_check_config():
    cfg = RunConfig.model_validate({"algorithm": {"loss": "no_such_loss", "dual_clip_c": 3.0}})
    assert cfg.algorithm.loss == "no_such_loss"


def test_a_function_needing_an_input_no_one_offers_is_refused():
    def needs_values_twice(rewards, *, group_size, mask, baseline):
        return rewards

    ADVANTAGES.register("_test_needs_baseline", needs_values_twice)
    try:
        with pytest.raises(OptionError, match="needs baseline"):
            choose("advantage", "_test_needs_baseline", {})
    finally:
        ADVANTAGES._items.pop("_test_needs_baseline")


def test_an_option_written_at_its_default_is_not_an_error():
    """A saved config.yaml writes every field; dr_grpo's run must load it again."""
    cfg = RunConfig.model_validate({"algorithm": {"advantage": "dr_grpo", "adv_eps": 1e-4,
                                                  "loss": "pg", "eps_low": 0.2}})
    assert dict(resolve_algorithm(cfg.algorithm).advantage.options) == {}
    with pytest.raises(ConfigError, match=r"^algorithm\.adv_eps: the advantage estimator 'dr_grpo'"):
        RunConfig.model_validate({"algorithm": {"advantage": "dr_grpo", "adv_eps": 1e-3}})


@pytest.mark.parametrize("name", ["dr_grpo", "ppo", "grpo_paper", "trl_grpo", "verl_grpo", "dapo"])
def test_saved_preset_configs_load_again(name, tmp_path):
    from pathlib import Path

    from r1lab.config import save_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.algorithm == cfg.algorithm


def test_kl_options_are_checked_against_the_kl_estimator():
    with pytest.raises(ConfigError, match=r"^algorithm\.kl_bias_correction: the KL estimator 'k1' "
                                          r"does not take this option \(it takes: none\)"):
        RunConfig.model_validate({"algorithm": {"kl_estimator": "k1", "beta": 0.1,
                                                "kl_bias_correction": True}})
    with pytest.raises(ConfigError, match=r"^algorithm\.clip_delta: the loss 'dual_clip'"):
        RunConfig.model_validate({"algorithm": {"loss": "dual_clip", "clip_delta": 2.0}})

"""TRL 1.16 and verl parity for the newer objectives, on fixed tensors (values and gradients).

The ``trl_*`` / ``verl_*`` functions are written from the published code: TRL 1.16.0
``GRPOTrainer._compute_loss`` (``use_bias_correction_kl``, ``delta``, ``loss_type="cispo"``,
``importance_sampling_level="sequence"`` clip metrics) and the advantage block of
``_generate_and_score_completions`` (``multi_objective_aggregation="normalize_then_sum"``, with
``trl.trainer.utils.nanstd``); verl ``core_algos.compute_policy_loss_cispo``. Ours are composed
as a user configures them, through ``resolve_algorithm``.
"""

from pathlib import Path

import pytest
import torch

from r1lab.algorithms import resolve_algorithm
from r1lab.config import AlgorithmConfig, load_config

G = 4
TRL_PRESET = Path(__file__).parents[2] / "configs" / "trl_grpo.yaml"


def fixed_batch() -> dict[str, torch.Tensor]:
    """Two prompts x four completions, right padding, T = 5; row 5 has no completion token;
    token (0, 0) is far from the reference (k3 = e^3 - 4 > 10: any clamp shows)."""
    gen = torch.Generator().manual_seed(99)
    lengths = torch.tensor([5, 3, 1, 4, 2, 0, 5, 3])
    mask = (torch.arange(5) < lengths[:, None]).long()  # [8, 5]
    old = -torch.rand(8, 5, generator=gen) * 2  # [8, 5]
    logp = old + 0.3 * torch.randn(8, 5, generator=gen)  # ratios well outside [0.8, 1.2]
    ref = old + 0.1 * torch.randn(8, 5, generator=gen)
    ref[0, 0] = logp[0, 0] + 3.0
    return {"rewards": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0]),
            "components": torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0],
                                        [1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),
            "mask": mask, "old": old, "logp": logp, "ref": ref}


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


# ---- TRL 1.16, from the published code --------------------------------------------------------


def trl_nanstd(x: torch.Tensor, dim=None, keepdim=False) -> torch.Tensor:
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count / 1.0, float("nan")))
    variance = variance * correction
    return torch.sqrt(variance if keepdim or dim is None else variance.squeeze(dim))


def trl_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """sum_then_normalize, scale_rewards="group" (one reward function)."""
    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    if num_generations > 1:
        std = trl_nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    else:
        std = torch.zeros_like(rewards)
    return torch.nan_to_num((rewards - mean) / (std + 1e-4), nan=0.0)


def trl_normalize_then_sum(rewards_per_func, reward_weights, num_generations):
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = trl_nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.shape[1])
    rewards = (reward_k * reward_weights.unsqueeze(0)).nansum(dim=1)
    std = trl_nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    return (rewards - torch.nanmean(rewards)) / (std + 1e-4)


def trl_compute_loss(b, per_token_logps, advantages, *, loss_type="dapo", epsilon=0.2,
                     epsilon_high=None, delta=None, beta=0.0, use_bias_correction_kl=True,
                     importance_sampling_level="token"):
    """(loss, metrics) of GRPOTrainer._compute_loss, one process, one accumulation step."""
    mask, old = b["mask"], b["old"]
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old
    if importance_sampling_level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if beta != 0.0:
        ref = b["ref"]
        per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=eps_high).detach()
        per_token_loss = -clamped_ratios * advantages * per_token_logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    else:  # dapo, cispo: num_items_in_batch over one process
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)

    def global_masked_mean(x):
        if x.shape[1] == 1:
            return x.sum() / x.shape[0]
        return (x * mask).sum() / mask.sum().float().clamp(min=1.0)

    metrics = {}
    if beta != 0.0:
        metrics["kl"] = global_masked_mean(per_token_kl)
    if loss_type == "cispo":
        metrics["cispo_clip_ratio"] = global_masked_mean(((coef_1 > eps_high) & (advantages > 0)).float())
    else:
        low = (coef_1 < 1 - eps_low) & (advantages < 0)
        high = (coef_1 > 1 + eps_high) & (advantages > 0)
        metrics["clip_ratio/low_mean"] = global_masked_mean(low.float())
        metrics["clip_ratio/high_mean"] = global_masked_mean(high.float())
        metrics["clip_ratio/region_mean"] = global_masked_mean((low | high).float())
    return loss, metrics


# ---- verl, from the published code ------------------------------------------------------------


def verl_cispo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    clipped_ratio = torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high).detach()
    pg_losses = -clipped_ratio * advantages * log_prob
    return (pg_losses * response_mask).sum() / response_mask.sum()  # token-mean


# ---- ours, composed through resolve_algorithm ------------------------------------------------


def ours(alg_cfg, b, logp, beta=0.0, group_size=G, old=None):
    alg = resolve_algorithm(alg_cfg)
    mask = b["mask"]
    adv = alg.advantage(rewards=b["rewards"], component_rewards=b["components"],
                        component_weights=torch.tensor([1.0, 0.5]), group_size=group_size,
                        mask=mask, values=None)  # [N, T]
    old = b["old"] if old is None else old
    per_token, metrics = alg.loss(logp=logp, old_logp=old, advantages=adv, mask=mask)
    if alg.kl is not None:
        kl = alg.kl(logp=logp, ref_logp=b["ref"], old_logp=old, mask=mask)
        per_token = per_token + beta * kl
        metrics["kl"] = (kl * mask).sum() / mask.sum()
    loss = alg.aggregation(per_token=per_token, mask=mask, num_tokens=mask.sum(),
                           num_seqs=float(len(mask)), norm_len=8)
    return loss, metrics, adv


def assert_same_loss_and_grad(trl_fn, ours_fn, b) -> None:
    a, o = leaf(b["logp"]), leaf(b["logp"])
    expected, got = trl_fn(a), ours_fn(o)
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    torch.testing.assert_close(o.grad, a.grad)


@pytest.mark.parametrize(("on_policy", "group_size"), [(False, G), (True, G), (False, 1)])
def test_trl_preset_at_beta_above_zero(on_policy: bool, group_size: int) -> None:
    """configs/trl_grpo.yaml + beta: TRL 1.16's defaults (dapo loss, bias-corrected unclamped k3);
    with groups of one every advantage is 0 in both, and only the KL term trains."""
    cfg = load_config(TRL_PRESET, ["algorithm.beta=0.04"]).algorithm
    b = fixed_batch()
    if on_policy:  # num_iterations = 1: old = logp.detach(); the ratio is 1 but has a gradient
        b["old"] = b["logp"].clone()
    adv = trl_advantages(b["rewards"], group_size)

    def trl(lp):
        return trl_compute_loss({**b, "old": lp.detach() if on_policy else b["old"]}, lp, adv,
                                beta=0.04)[0]

    def mine(lp):
        return ours(cfg, b, lp, beta=0.04, group_size=group_size,
                    old=lp.detach() if on_policy else None)[0]

    assert_same_loss_and_grad(trl, mine, b)
    _, trl_metrics = trl_compute_loss(b, b["logp"], adv, beta=0.04)
    _, metrics, our_adv = ours(cfg, b, b["logp"], beta=0.04, group_size=group_size)
    assert bool((our_adv == 0).all()) == (group_size == 1)
    torch.testing.assert_close(metrics["kl"], trl_metrics["kl"])
    assert trl_metrics["kl"] > 10 / b["mask"].sum()  # the big token is in: a clamp would show


def test_bias_correction_changes_the_on_policy_gradient() -> None:
    """At ratio 1 the corrected KL has the same value but a gradient of k3 * d log pi more."""
    b = fixed_batch()
    logp = leaf(b["logp"])
    plain = resolve_algorithm(AlgorithmConfig(beta=0.1, kl_clamp=None)).kl
    fixed = resolve_algorithm(AlgorithmConfig(beta=0.1, kl_clamp=None, kl_bias_correction=True)).kl
    kl_plain = plain(logp=logp, ref_logp=b["ref"], old_logp=logp.detach(), mask=b["mask"])
    kl_fixed = fixed(logp=logp, ref_logp=b["ref"], old_logp=logp.detach(), mask=b["mask"])
    torch.testing.assert_close(kl_fixed, kl_plain)
    (g_plain,) = torch.autograd.grad(kl_plain.sum(), logp)
    (g_fixed,) = torch.autograd.grad(kl_fixed.sum(), logp)
    torch.testing.assert_close(g_fixed - g_plain, kl_plain.detach())  # d(k3 * r) = dk3 + k3 dr


def test_kl_clamp_option() -> None:
    b = fixed_batch()
    kl = resolve_algorithm(AlgorithmConfig(beta=0.1, kl_clamp=2.0)).kl
    out = kl(logp=b["logp"], ref_logp=b["ref"], old_logp=b["old"], mask=b["mask"])
    assert out[0, 0].item() == 2.0  # e^3 - 4 = 16.09, clamped
    log_r = b["ref"][1, 0] - b["logp"][1, 0]
    assert out[1, 0].item() == pytest.approx((log_r.exp() - log_r - 1).item())


@pytest.mark.parametrize("delta", [1.1, 1.3])  # 1.1 < 1 + eps: metrics on the capped ratio
def test_trl_two_sided_delta(delta: float) -> None:
    b = fixed_batch()
    cfg = AlgorithmConfig(clip_delta=delta)
    adv = trl_advantages(b["rewards"], G)
    assert_same_loss_and_grad(lambda lp: trl_compute_loss(b, lp, adv, delta=delta)[0],
                              lambda lp: ours(cfg, b, lp)[0], b)
    _, trl_metrics = trl_compute_loss(b, b["logp"], adv, delta=delta)
    _, metrics, our_adv = ours(cfg, b, b["logp"])
    for trl_key, key in [("clip_ratio/low_mean", "clip_frac_low"),
                         ("clip_ratio/high_mean", "clip_frac_high"),
                         ("clip_ratio/region_mean", "clip_frac")]:
        torch.testing.assert_close(metrics[key], trl_metrics[trl_key])
    ratio = (b["logp"] - b["old"]).exp()
    bound = ((ratio > delta) & (our_adv < 0) & b["mask"].bool()).sum() / b["mask"].sum()
    assert bound > 0 and metrics["delta_clip_frac"].item() == pytest.approx(bound.item())


def test_delta_equals_dual_clip_above_one_plus_eps() -> None:
    b = fixed_batch()
    adv = trl_advantages(b["rewards"], G)[:, None] * b["mask"]
    with_delta = resolve_algorithm(AlgorithmConfig(clip_delta=1.5)).loss
    dual = resolve_algorithm(AlgorithmConfig(dual_clip_c=1.5)).loss
    inputs = {"logp": b["logp"], "old_logp": b["old"], "advantages": adv, "mask": b["mask"]}
    torch.testing.assert_close(with_delta(**inputs)[0], dual(**inputs)[0])


@pytest.mark.parametrize("epsilon_high", [1.5, 5.0])
def test_trl_cispo(epsilon_high: float) -> None:
    """TRL's weight min(ratio, epsilon_high) is cispo with eps_low=1, eps_high=epsilon_high-1."""
    b = fixed_batch()
    cfg = AlgorithmConfig(loss="cispo", eps_low=1.0, eps_high=epsilon_high - 1)
    adv = trl_advantages(b["rewards"], G)
    assert_same_loss_and_grad(
        lambda lp: trl_compute_loss(b, lp, adv, loss_type="cispo", epsilon_high=epsilon_high)[0],
        lambda lp: ours(cfg, b, lp)[0], b)
    _, trl_metrics = trl_compute_loss(b, b["logp"], adv, loss_type="cispo", epsilon_high=epsilon_high)
    _, metrics, _ = ours(cfg, b, b["logp"])
    torch.testing.assert_close(metrics["cispo_clip_frac"], trl_metrics["cispo_clip_ratio"])
    if epsilon_high == 1.5:
        assert trl_metrics["cispo_clip_ratio"] > 0


def test_verl_cispo() -> None:
    b = fixed_batch()
    cfg = AlgorithmConfig(loss="cispo", eps_low=0.2, eps_high=0.28)
    verl_adv = trl_advantages(b["rewards"], G)[:, None] * b["mask"]  # same grpo advantage
    assert_same_loss_and_grad(
        lambda lp: verl_cispo(b["old"], lp, verl_adv, b["mask"], 0.2, 0.28),
        lambda lp: ours(cfg, b, lp)[0], b)
    _, metrics, _ = ours(cfg, b, b["logp"])
    ratio = (b["logp"] - b["old"]).exp()
    clipped = ((ratio < 0.8) | (ratio > 1.28)) & b["mask"].bool()
    assert metrics["clip_frac"].item() == pytest.approx((clipped.sum() / b["mask"].sum()).item())


def test_trl_gspo_clip_fractions_count_sequences() -> None:
    """importance_sampling_level="sequence": one clip decision per sequence, over all rows."""
    b = fixed_batch()
    cfg = AlgorithmConfig(loss="gspo", eps_low=0.03, eps_high=0.04, aggregation="seq_mean_token_mean")
    adv = trl_advantages(b["rewards"], G)
    _, trl_metrics = trl_compute_loss(b, b["logp"], adv, loss_type="grpo", epsilon=0.03,
                                      epsilon_high=0.04, importance_sampling_level="sequence")
    assert_same_loss_and_grad(
        lambda lp: trl_compute_loss(b, lp, adv, loss_type="grpo", epsilon=0.03, epsilon_high=0.04,
                                    importance_sampling_level="sequence")[0],
        lambda lp: ours(cfg, b, lp)[0], b)
    _, metrics, _ = ours(cfg, b, b["logp"])
    for trl_key, key in [("clip_ratio/low_mean", "clip_frac_low"),
                         ("clip_ratio/high_mean", "clip_frac_high"),
                         ("clip_ratio/region_mean", "clip_frac")]:
        torch.testing.assert_close(metrics[key], trl_metrics[trl_key])
    # by hand: eighths, since every one of the 8 rows (the empty one too) counts once
    assert (metrics["clip_frac"] * 8).item() == pytest.approx(round((metrics["clip_frac"] * 8).item()))
    assert 0 < metrics["clip_frac"].item() < 1


@pytest.mark.parametrize("group_size", [G, 2, 1])
def test_trl_normalize_then_sum(group_size: int) -> None:
    b = fixed_batch()
    cfg = AlgorithmConfig(advantage="normalize_then_sum")
    _, _, adv = ours(cfg, b, b["logp"], group_size=group_size)
    expected = trl_normalize_then_sum(b["components"], torch.tensor([1.0, 0.5]), group_size)
    torch.testing.assert_close(adv, expected[:, None] * b["mask"])
    if group_size == 1:  # no peers: every advantage 0, never NaN
        assert adv.abs().sum().item() == 0.0


def test_normalize_then_sum_by_hand() -> None:
    """One group of two, two components: [1, 0] and [0, 4] normalise to +-1 each (ddof 1,
    std = 0.7071 and 2.828, eps aside); weights (1, 1) sum them to [0, 0]."""
    cfg = AlgorithmConfig(advantage="normalize_then_sum", adv_eps=1e-12)
    adv = resolve_algorithm(cfg).advantage(
        component_rewards=torch.tensor([[1.0, 0.0], [0.0, 4.0]]), component_weights=torch.ones(2),
        group_size=2, mask=torch.ones(2, 1), rewards=None, values=None)
    assert adv.squeeze(-1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    adv = resolve_algorithm(cfg).advantage(
        component_rewards=torch.tensor([[1.0, 0.0], [0.0, 4.0]]),
        component_weights=torch.tensor([1.0, 0.0]), group_size=2, mask=torch.tensor([[1, 0], [1, 1]]))
    # sums [1, -1]: batch mean 0, std 1.4142 -> +-0.7071; padding 0
    torch.testing.assert_close(adv, torch.tensor([[0.70711, 0.0], [-0.70711, -0.70711]]))


def test_normalize_then_sum_refuses_scale_rewards() -> None:
    from r1lab.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match=r"^algorithm\.scale_rewards: the advantage estimator "
                                          r"'normalize_then_sum' does not take this option"):
        RunConfig.model_validate({"algorithm": {"advantage": "normalize_then_sum",
                                                "scale_rewards": "batch"}})


def test_normalize_then_sum_without_components_says_so() -> None:
    adv = resolve_algorithm(AlgorithmConfig(advantage="normalize_then_sum")).advantage
    with pytest.raises(ValueError, match="needs component_rewards"):
        adv(rewards=torch.ones(2), component_rewards=None, component_weights=None, group_size=2,
            mask=torch.ones(2, 1), values=None)


def verl_actor_loss(b, log_prob, kl_coef, clip_ratio=0.2, clip_ratio_c=3.0):
    """verl dp_actor: vanilla dual-clip pg loss + kl_coef * low_var_kl, both token-mean."""
    mask = b["mask"].float()
    scores, index = b["rewards"].clone(), [0] * G + [1] * G
    for idx in set(index):
        rows = [i for i in range(len(index)) if index[i] == idx]
        scores[rows] = (scores[rows] - scores[rows].mean()) / (scores[rows].std() + 1e-6)
    adv = scores.unsqueeze(-1) * mask

    def masked_mean(x):
        return (x * mask).sum() / (mask.sum() + 1e-8)

    ratio = torch.exp(torch.clamp(log_prob - b["old"], min=-20.0, max=20.0))
    pg1, pg2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    clip1 = torch.maximum(pg1, pg2)
    pg = torch.where(adv < 0, torch.min(-adv * clip_ratio_c, clip1), clip1)
    kl = torch.clamp(b["ref"] - log_prob, min=-20, max=20)
    low_var_kl = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    return masked_mean(pg) + kl_coef * masked_mean(low_var_kl)


def test_verl_preset_at_beta_above_zero() -> None:
    """configs/verl_grpo.yaml + beta = verl's GRPO examples (use_kl_loss, low_var_kl, 0.001)."""
    cfg = load_config(Path(__file__).parents[2] / "configs" / "verl_grpo.yaml",
                      ["algorithm.beta=0.5"]).algorithm  # a large beta: the KL term shows
    b = fixed_batch()
    assert_same_loss_and_grad(lambda lp: verl_actor_loss(b, lp, 0.5),
                              lambda lp: ours(cfg, b, lp, beta=0.5)[0], b)

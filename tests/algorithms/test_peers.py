"""r1lab settings reproduce TRL's and verl's GRPO numbers on fixed tensors.

The ``trl_*`` and ``verl_*`` functions below are written from the published definitions
(TRL ``GRPOTrainer._compute_loss`` and advantage computation; verl ``trainer/ppo/core_algos.py``
and ``utils/torch_functional.py``), as plain reference formulas: the tests compare our registry
components, composed as a user would configure them, with those formulas -- loss values and
gradients.
"""

import pytest
import torch

from r1lab.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, value_loss

G = 4
MAX_COMPLETION_LENGTH = 8


def fixed_batch() -> dict[str, torch.Tensor]:
    """Two prompts x four completions, right padding, T = 5."""
    gen = torch.Generator().manual_seed(1234)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 5, 3])
    mask = (torch.arange(5) < lengths[:, None]).long()  # [8, 5]
    old = -torch.rand(8, 5, generator=gen) * 2  # [8, 5]
    return {
        "rewards": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0]),
        "mask": mask,
        "old": old,
        "logp": old + 0.3 * torch.randn(8, 5, generator=gen),  # ratios well outside [0.8, 1.2]
        "ref": old + 0.1 * torch.randn(8, 5, generator=gen),
    }


# ---- TRL, from the published GRPOTrainer ------------------------------------------------------


def trl_advantages(rewards: torch.Tensor, scale_rewards: str = "group") -> torch.Tensor:
    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    if scale_rewards == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        std = rewards.view(-1, G).std(dim=1).repeat_interleave(G)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return advantages  # [N]


def trl_loss(b, logp, advantages, loss_type, eps_low, eps_high, beta, num_items=None, n_proc=1):
    mask = b["mask"]
    per_token_kl = torch.exp(b["ref"] - logp) - (b["ref"] - logp) - 1
    coef_1 = torch.exp(logp - b["old"])
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * advantages.unsqueeze(1), coef_2 * advantages.unsqueeze(1))
    per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * MAX_COMPLETION_LENGTH)
    if loss_type == "dapo":
        return (per_token_loss * mask).sum() / (num_items / n_proc)
    raise ValueError(loss_type)


TRL_AGGREGATION = {
    "grpo": ("seq_mean_token_mean", {}),
    "bnpo": ("token_mean", {}),
    "dr_grpo": ("seq_mean_token_sum_norm", {"norm_len": MAX_COMPLETION_LENGTH}),
}


def ours(b, logp, advantages, loss, aggregation, beta, loss_opts=None, agg_opts=None):
    per_token, _ = POLICY_LOSSES.get(loss)(
        logp, b["old"], advantages, b["mask"], **(loss_opts or {})
    )
    per_token = per_token + beta * KL_ESTIMATORS.get("k3")(logp, b["ref"], clamp=None)
    return AGGREGATIONS.get(aggregation)(per_token, b["mask"], **(agg_opts or {}))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_trl_advantages(scale: str) -> None:
    b = fixed_batch()
    adv = ADVANTAGES.get("grpo")(
        b["rewards"], group_size=G, mask=b["mask"], eps=1e-4, ddof=1, scale=scale
    )
    expected = trl_advantages(b["rewards"], scale)[:, None] * b["mask"]
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.2), (0.2, 0.28)])
def test_trl_loss_types(loss_type: str, eps_low: float, eps_high: float) -> None:
    b = fixed_batch()
    adv = ADVANTAGES.get("grpo")(b["rewards"], group_size=G, mask=b["mask"], eps=1e-4)
    logp_a = b["logp"].clone().requires_grad_(True)
    logp_b = b["logp"].clone().requires_grad_(True)
    expected = trl_loss(b, logp_a, trl_advantages(b["rewards"]), loss_type, eps_low, eps_high, 0.04)
    aggregation, agg_opts = TRL_AGGREGATION[loss_type]
    opts = {"eps_low": eps_low, "eps_high": eps_high}
    got = ours(b, logp_b, adv, "clip", aggregation, 0.04, opts, agg_opts)
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)


def test_trl_dapo_on_two_processes() -> None:
    """``dapo`` divides each rank's token sum by (global tokens / processes)."""
    b = fixed_batch()
    adv = ADVANTAGES.get("grpo")(b["rewards"], group_size=G, mask=b["mask"], eps=1e-4)
    trl_adv = trl_advantages(b["rewards"])
    num_items = b["mask"].sum()
    for rank in (slice(0, 4), slice(4, 8)):  # each rank holds one prompt's group
        part = {k: v[rank] for k, v in b.items()}
        expected = trl_loss(part, part["logp"], trl_adv[rank], "dapo", 0.2, 0.28, 0.0, num_items, 2)
        got = ours(part, part["logp"], adv[rank], "clip", "token_mean", 0.0,
                   {"eps_high": 0.28}, {"num_tokens": num_items / 2})  # fmt: skip
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_trl_gspo_sequence_level(loss_type: str) -> None:
    """TRL ``importance_sampling_level="sequence"``: one ratio per sequence, ``[N, 1]``.

    Our GSPO-token form gives the same value and gradient under any aggregation.
    """
    b = fixed_batch()
    adv = trl_advantages(b["rewards"])
    mask = b["mask"]
    logp_a = b["logp"].clone().requires_grad_(True)
    log_w = ((logp_a - b["old"]) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    coef_1 = torch.exp(log_w).unsqueeze(-1)  # [N, 1]
    coef_2 = coef_1.clamp(1 - 3e-4, 1 + 4e-4)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])  # [N, 1]
    if loss_type == "grpo":
        expected = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    else:
        expected = (per_token * mask).sum() / mask.sum()
    logp_b = b["logp"].clone().requires_grad_(True)
    ours_adv = ADVANTAGES.get("grpo")(b["rewards"], group_size=G, mask=mask, eps=1e-4)
    got = ours(b, logp_b, ours_adv, "gspo", TRL_AGGREGATION[loss_type][0], 0.0)
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)


# ---- verl, from the published core_algos.py ---------------------------------------------------


def verl_masked_mean(x, mask):
    return (x * mask).sum() / (mask.sum() + 1e-8)


def verl_masked_whiten(x, mask):
    mean = verl_masked_mean(x, mask)
    var = verl_masked_mean((x - mean) ** 2, mask)
    var = var * mask.sum() / (mask.sum() - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def verl_grpo_advantages(scores, index, mask, epsilon=1e-6):
    scores = scores.clone()
    for idx in set(index):
        rows = [i for i in range(len(index)) if index[i] == idx]
        group = scores[rows]
        mean, std = (group.mean(), group.std()) if len(rows) > 1 else (0.0, 1.0)
        scores[rows] = (group - mean) / (std + epsilon)
    return scores.unsqueeze(-1) * mask


def verl_vanilla_policy_loss(old, logp, adv, mask, clip_low, clip_high, clip_ratio_c=3.0):
    neg_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = verl_masked_mean(torch.gt(pg_losses2, pg_losses1).float(), mask)
    pg_losses3 = -adv * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = verl_masked_mean(
        torch.gt(clip_pg_losses1, pg_losses3) * (adv < 0).float(), mask
    )
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    return verl_masked_mean(pg_losses, mask), pg_clipfrac, pg_clipfrac_lower  # token-mean


def verl_low_var_kl(logp, ref):
    kl = torch.clamp(ref - logp, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def test_verl_grpo_advantages() -> None:
    b = fixed_batch()
    index = [0] * G + [1] * G
    adv = ADVANTAGES.get("grpo")(b["rewards"], group_size=G, mask=b["mask"], eps=1e-6)
    torch.testing.assert_close(adv, verl_grpo_advantages(b["rewards"], index, b["mask"]))


def test_verl_size_one_groups_differ_as_documented() -> None:
    """verl gives a lone sample its raw reward (mean 0, std 1); r1lab gives it 0."""
    rewards, mask = torch.tensor([0.7, 0.2]), torch.ones(2, 3)
    assert verl_grpo_advantages(rewards, [0, 1], mask)[0, 0].item() == pytest.approx(0.7)
    assert ADVANTAGES.get("grpo")(rewards, group_size=1, mask=mask).eq(0).all()


@pytest.mark.parametrize(("clip_low", "clip_high"), [(0.2, 0.2), (0.2, 0.28)])
def test_verl_dual_clip_token_mean(clip_low: float, clip_high: float) -> None:
    b = fixed_batch()
    mask = b["mask"].float()
    adv = verl_grpo_advantages(b["rewards"], [0] * G + [1] * G, mask)
    old = b["old"]
    logp = b["logp"].clone()
    logp[1, 0] = old[1, 0] + 1.5  # row 1 has a negative advantage: ratio 4.5 > c = 3
    logp_a, logp_b = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    expected, clipfrac, clipfrac_lower = verl_vanilla_policy_loss(
        old, logp_a, adv, mask, clip_low, clip_high
    )
    per_token, metrics = POLICY_LOSSES.get("dual_clip")(
        logp_b, old, adv, b["mask"], eps_low=clip_low, eps_high=clip_high
    )
    got = AGGREGATIONS.get("token_mean")(per_token, b["mask"])
    torch.testing.assert_close(got, expected)
    assert clipfrac_lower > 0  # the dual clip is exercised
    torch.testing.assert_close(metrics["clip_frac"], clipfrac)
    torch.testing.assert_close(metrics["dual_clip_frac"], clipfrac_lower)
    expected.backward()
    got.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)


def test_verl_low_var_kl() -> None:
    b = fixed_batch()
    logp = b["logp"].clone()
    logp[0, 0] = -40.0  # exercises both clamps
    torch.testing.assert_close(
        KL_ESTIMATORS.get("k3")(logp, b["ref"]), verl_low_var_kl(logp, b["ref"])
    )


def test_verl_gspo() -> None:
    b = fixed_batch()
    mask = b["mask"].float()
    adv = verl_grpo_advantages(b["rewards"], [0] * G + [1] * G, mask)
    logp_a = b["logp"].clone().requires_grad_(True)
    neg_kl = logp_a - b["old"]
    neg_kl_seq = (neg_kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    log_ratio = logp_a - logp_a.detach() + neg_kl_seq.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - 3e-4, 1 + 4e-4))
    expected = ((pg * mask).sum(-1) / mask.sum(-1)).mean()  # seq-mean-token-mean
    logp_b = b["logp"].clone().requires_grad_(True)
    per_token, _ = POLICY_LOSSES.get("gspo")(logp_b, b["old"], adv, b["mask"])
    got = AGGREGATIONS.get("seq_mean_token_mean")(per_token, b["mask"])
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)


def test_verl_gae_and_reinforce_pp() -> None:
    b = fixed_batch()
    mask = b["mask"].float()
    token_rewards = torch.zeros(8, 5)
    token_rewards[torch.arange(8), b["mask"].sum(-1) - 1] = b["rewards"]
    values = b["ref"].exp()  # any fixed critic values
    gamma, lam = 0.99, 0.95
    # verl compute_gae_advantage_return
    nextvalues, lastgaelam, reversed_adv = 0, 0, []
    for t in reversed(range(5)):
        delta = token_rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        reversed_adv.append(lastgaelam)
    verl_adv = verl_masked_whiten(torch.stack(reversed_adv[::-1], dim=1), mask) * mask
    got = ADVANTAGES.get("gae")(b["rewards"], group_size=G, mask=b["mask"], values=values,
                                gamma=gamma, lam=lam)  # fmt: skip
    torch.testing.assert_close(got, verl_adv)
    # verl compute_reinforce_plus_plus_outcome_advantage
    returns, running = torch.zeros(8, 5), 0
    for t in reversed(range(5)):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    verl_rpp = verl_masked_whiten(returns, mask) * mask
    got = ADVANTAGES.get("reinforce_pp")(b["rewards"], group_size=G, mask=b["mask"], gamma=gamma)
    torch.testing.assert_close(got, verl_rpp)


def test_verl_value_loss() -> None:
    b = fixed_batch()
    mask = b["mask"].float()
    vpreds, values, returns = b["logp"].exp(), b["old"].exp(), b["ref"].exp()
    vpredclipped = torch.clamp(vpreds, values - 0.2, values + 0.2)
    vf1, vf2 = (vpreds - returns) ** 2, (vpredclipped - returns) ** 2
    expected = 0.5 * verl_masked_mean(torch.max(vf1, vf2), mask)
    per_token, m = value_loss(vpreds, values, returns, b["mask"], clip_range=0.2)
    torch.testing.assert_close(AGGREGATIONS.get("token_mean")(per_token, b["mask"]), expected)
    torch.testing.assert_close(
        m["vf_clip_frac"], verl_masked_mean(torch.gt(vf2, vf1).float(), mask)
    )

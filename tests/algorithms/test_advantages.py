"""Advantage estimators against hand-computed values (padding masks, groups of size 1)."""

import math

import pytest
import torch

from r1lab.algorithms import ADVANTAGES, compute_gae, discounted_returns, masked_whiten

MASK4 = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])


def seq(adv: torch.Tensor) -> torch.Tensor:
    """The sequence-level value of a broadcast advantage: its first token."""
    return adv[:, 0]


def test_grpo_group_std_ddof1_hand_values() -> None:
    # group [1, 0, 0, 0]: mean 0.25, sample std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, mask=MASK4)
    assert adv.shape == (4, 3)
    torch.testing.assert_close(seq(adv), torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)
    # broadcast over the completion tokens, exactly 0 on padding
    torch.testing.assert_close(adv[0], torch.tensor([1.5, 1.5, 0.0]), atol=1e-5, rtol=0)
    assert adv[MASK4 == 0].eq(0).all()


def test_grpo_ddof0_and_eps_are_parameters() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = ADVANTAGES.get("grpo")(r, group_size=4, mask=torch.ones(4, 1), ddof=0, eps=0.0)
    s3 = math.sqrt(3.0)  # population std sqrt(0.1875): 0.75 / 0.4330 = sqrt(3)
    torch.testing.assert_close(seq(adv), torch.tensor([s3, -1 / s3, -1 / s3, -1 / s3]))
    adv = ADVANTAGES.get("grpo")(r, group_size=4, mask=torch.ones(4, 1), eps=0.5)
    torch.testing.assert_close(seq(adv), torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_grpo_equal_rewards_give_zero_not_nan() -> None:
    adv = ADVANTAGES.get("grpo")(torch.tensor([2.0, 2.0, 0.0, 0.0]), group_size=2, mask=MASK4)
    assert adv.eq(0).all()


def test_grpo_batch_and_none_scale() -> None:
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])  # group means 0.5, 2; centred [0.5, -0.5, 1, -1]
    batch_std = math.sqrt(4.75 / 3)  # sample std of all four rewards
    adv = ADVANTAGES.get("grpo")(r, group_size=2, mask=torch.ones(4, 1), scale="batch", eps=0.0)
    expected = torch.tensor([0.5, -0.5, 1.0, -1.0]) / batch_std
    torch.testing.assert_close(seq(adv), expected)
    none = ADVANTAGES.get("grpo")(r, group_size=2, mask=torch.ones(4, 1), scale="none")
    torch.testing.assert_close(seq(none), torch.tensor([0.5, -0.5, 1.0, -1.0]))
    dr = ADVANTAGES.get("dr_grpo")(r, group_size=2, mask=torch.ones(4, 1))
    torch.testing.assert_close(dr, none)


@pytest.mark.parametrize(
    ("name", "opts"),
    [("grpo", {}), ("grpo", {"ddof": 0}), ("grpo", {"scale": "batch"}), ("dr_grpo", {}),
     ("rloo", {}), ("reinforce_pp_baseline", {})],
)  # fmt: skip
def test_groups_of_size_one_give_zero(name: str, opts: dict) -> None:
    adv = ADVANTAGES.get(name)(
        torch.tensor([1.0, 0.0, 3.0]), group_size=1, mask=torch.ones(3, 2), **opts
    )
    assert not adv.isnan().any()
    if name != "grpo" or opts.get("scale") != "batch":
        assert adv.eq(0).all()


def test_grpo_batch_scale_single_reward_is_finite() -> None:
    adv = ADVANTAGES.get("grpo")(
        torch.tensor([1.0]), group_size=1, mask=torch.ones(1, 2), scale="batch"
    )
    assert adv.eq(0).all()


def test_grpo_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        ADVANTAGES.get("grpo")(torch.zeros(4), group_size=3, mask=torch.ones(4, 1))
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        ADVANTAGES.get("grpo")(torch.zeros(4), group_size=2, mask=torch.ones(4, 1), scale="std")
    with pytest.raises(ValueError, match=r"must be \[N\]"):
        ADVANTAGES.get("grpo")(torch.zeros(4, 1), group_size=2, mask=torch.ones(4, 1))
    with pytest.raises(TypeError):  # an option the estimator does not take is an error
        ADVANTAGES.get("rloo")(torch.zeros(4), group_size=2, mask=torch.ones(4, 1), eps=1e-4)


def test_rloo_leave_one_out_hand_values() -> None:
    # baselines: mean of the others = 0, 1/3, 1/3, 1/3; second group [2, 4]: baselines 4, 2
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 2.0, 4.0])
    adv = ADVANTAGES.get("rloo")(r, group_size=4, mask=torch.ones(8, 1))
    third = 1 / 3
    expected = torch.tensor([1.0, -third, -third, -third, -4 / 3, 4 / 3, -4 / 3, 4 / 3])
    torch.testing.assert_close(seq(adv), expected)


def test_reinforce_pp_whitens_token_returns_over_batch() -> None:
    mask = torch.tensor([[1, 1, 1, 0]])
    adv = ADVANTAGES.get("reinforce_pp")(torch.tensor([1.0]), group_size=1, mask=mask, gamma=0.5)
    # returns [0.25, 0.5, 1]; mean 0.58333, unbiased std sqrt(0.291667 / 2) = 0.381881
    expected = torch.tensor([[-0.872872, -0.218218, 1.091089, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_reinforce_pp_accepts_token_level_rewards() -> None:
    mask = torch.tensor([[1, 1], [1, 0]])
    seq_level = ADVANTAGES.get("reinforce_pp")(torch.tensor([1.0, 0.0]), group_size=2, mask=mask)
    token_level = torch.tensor([[0.0, 1.0], [0.0, 5.0]])  # the 5 is padding: ignored
    tok = ADVANTAGES.get("reinforce_pp")(token_level, group_size=2, mask=mask)
    torch.testing.assert_close(tok, seq_level)


def test_reinforce_pp_baseline_with_padding() -> None:
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0]])
    r = torch.tensor([1.0, 0.0, 5.0, 5.0])  # centred 0.5, -0.5, 0, 0 -> tokens .5 .5 -.5 0 0
    adv = ADVANTAGES.get("reinforce_pp_baseline")(r, group_size=2, mask=mask)
    std = math.sqrt((2 * 0.4**2 + 0.6**2 + 2 * 0.1**2) / 4)  # token mean 0.1, unbiased
    expected = torch.tensor([[0.4, 0.4], [-0.6, 0.0], [-0.1, 0.0], [-0.1, 0.0]]) / std
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_gae_hand_values_with_padding() -> None:
    mask = torch.tensor([[1, 1, 0]])
    values = torch.tensor([[0.5, 0.8, 9.0]])  # the 9 is padding and never read
    # t=1: delta = 1 - 0.8 = 0.2; t=0: delta = 0.9 * 0.8 - 0.5 = 0.22, A = 0.22 + 0.45 * 0.2
    raw = ADVANTAGES.get("gae")(
        torch.tensor([1.0]),
        group_size=1,
        mask=mask,
        values=values,
        gamma=0.9,
        lam=0.5,
        whiten=False,
    )
    torch.testing.assert_close(raw, torch.tensor([[0.31, 0.2, 0.0]]))
    adv, returns = compute_gae(torch.tensor([[0.0, 1.0, 0.0]]), values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(returns, torch.tensor([[0.81, 1.0, 0.0]]))
    whitened = ADVANTAGES.get("gae")(
        torch.tensor([1.0]), group_size=1, mask=mask, values=values, gamma=0.9, lam=0.5
    )
    s = 1 / math.sqrt(2)  # two tokens whiten to +-1/sqrt(2) with the unbiased variance
    torch.testing.assert_close(whitened, torch.tensor([[s, -s, 0.0]]), atol=1e-4, rtol=0)


def test_gae_lambda_one_gamma_one_is_return_minus_value() -> None:
    values = torch.tensor([[0.1, 0.2, 0.3]])
    adv, _ = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3))
    torch.testing.assert_close(adv, 1.0 - values)


def test_gae_needs_values() -> None:
    with pytest.raises(ValueError, match="needs critic values"):
        ADVANTAGES.get("gae")(torch.zeros(2), group_size=2, mask=torch.ones(2, 1))


def test_helpers_zero_padding_and_single_token() -> None:
    out = discounted_returns(torch.tensor([[1.0, 1.0, 7.0]]), torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0, 0.0]]))
    one = masked_whiten(torch.tensor([[3.0, 4.0]]), torch.tensor([[1, 0]]))
    assert one.eq(0).all()

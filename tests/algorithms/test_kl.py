"""KL estimators: hand values, signs, exact expectations, and the reward-side helper."""

import math

import pytest
import torch

from r1lab.algorithms import KL_ESTIMATORS, kl_penalized_rewards, last_token_rewards

LOGP = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-2.0, -1.0, -0.5]])


def test_hand_values() -> None:
    torch.testing.assert_close(KL_ESTIMATORS.get("k1")(LOGP, REF), torch.tensor([[1.0, -1.0, 0.0]]))
    torch.testing.assert_close(KL_ESTIMATORS.get("k2")(LOGP, REF), torch.tensor([[0.5, 0.5, 0.0]]))
    # log r = ref - logp = -1, 1, 0: e^-1 + 1 - 1, e - 1 - 1, 0
    expected = torch.tensor([[math.exp(-1), math.e - 2, 0.0]])
    torch.testing.assert_close(KL_ESTIMATORS.get("k3")(LOGP, REF), expected)


def test_k3_clamps_like_verl_and_unclamped_like_trl() -> None:
    logp, ref = torch.tensor([[-15.0]]), torch.tensor([[0.0]])  # k3 = e^15 - 16
    assert KL_ESTIMATORS.get("k3")(logp, ref).item() == 10.0
    unclamped = KL_ESTIMATORS.get("k3")(logp, ref, clamp=None)
    assert unclamped.item() == pytest.approx(math.exp(15) - 16, rel=1e-5)


@pytest.mark.parametrize("name", ["k2", "k3"])
def test_nonnegative(name: str) -> None:
    torch.manual_seed(0)
    logp, ref = -torch.rand(8, 16) * 5, -torch.rand(8, 16) * 5
    assert (KL_ESTIMATORS.get(name)(logp, ref) >= 0).all()


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_in_exact_expectation(name: str) -> None:
    # E_{x ~ p}[k(x)] summed exactly over a 3-outcome distribution equals KL(p || q)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    kl = (p * (p / q).log()).sum()
    estimate = (p * KL_ESTIMATORS.get(name)(p.log(), q.log())).sum()
    torch.testing.assert_close(estimate, kl)


def test_kl_penalized_rewards_sequence_and_token_level() -> None:
    kl = torch.tensor([[0.5, 1.0, 9.0], [2.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    seq = kl_penalized_rewards(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1)
    torch.testing.assert_close(seq, torch.tensor([0.85, -0.2]))
    tok = kl_penalized_rewards(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1, token_level=True)
    torch.testing.assert_close(tok, torch.tensor([[-0.05, 0.9, 0.0], [-0.2, 0.0, 0.0]]))
    assert not seq.requires_grad and not tok.requires_grad  # a reward is a constant


def test_last_token_rewards_left_padding_and_empty_rows() -> None:
    out = last_token_rewards(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    )
    torch.testing.assert_close(
        out, torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    )

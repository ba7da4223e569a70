"""DAPO helpers and step metrics."""

import pytest
import torch

from r1lab.algorithms import approx_kl, clip_fractions, entropy_from_logits, zero_signal_groups


def test_zero_signal_groups() -> None:
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])
    expected = torch.tensor([True] * 3 + [False] * 3 + [True] * 3)
    torch.testing.assert_close(zero_signal_groups(r, group_size=3), expected)
    near = torch.tensor([1.0, 1.0 + 1e-7])
    assert not zero_signal_groups(near, group_size=2).any()
    assert zero_signal_groups(near, group_size=2, atol=1e-6).all()
    assert zero_signal_groups(torch.tensor([0.0, 1.0]), group_size=1).all()
    with pytest.raises(ValueError, match="groups of 2"):
        zero_signal_groups(torch.zeros(3), group_size=2)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_entropy_matches_categorical_for_any_chunk(chunk_size: int) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), expected)


def test_entropy_upcasts_low_precision_and_carries_no_grad() -> None:
    logits = torch.zeros(1, 2, 8, dtype=torch.bfloat16, requires_grad=True)
    out = entropy_from_logits(logits)
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, torch.full((1, 2), 8.0).log())


def test_clip_fractions_ignore_padding() -> None:
    ratio = torch.tensor([[0.5, 1.5, 1.5, 9.0]])
    adv = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    m = clip_fractions(ratio, adv, torch.tensor([[1, 1, 1, 0]]), eps_low=0.2, eps_high=0.2)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac"].item() == pytest.approx(2 / 3)


def test_approx_kl_zero_on_policy_and_positive_off() -> None:
    logp = torch.tensor([[-1.0, -2.0]])
    assert approx_kl(logp, logp, torch.ones(1, 2)).item() == 0.0
    assert approx_kl(logp, logp + 0.3, torch.ones(1, 2)).item() > 0

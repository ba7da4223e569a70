"""Policy and value losses against hand-computed values and gradients."""

import math

import pytest
import torch

from r1lab.algorithms import AGGREGATIONS, POLICY_LOSSES, value_loss

LN = math.log


def leaf(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values).requires_grad_(True)


def test_clip_symmetric_values_and_gradients() -> None:
    # ratios 1.5, 0.5, 1.1, 0.5 (old_logp = 0); eps 0.2 both sides
    logp = leaf([[LN(1.5), LN(0.5), LN(1.1), LN(0.5)]])
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    loss, metrics = POLICY_LOSSES.get("clip")(logp, torch.zeros(1, 4), adv, torch.ones(1, 4))
    # -min(1.5, 1.2); -min(0.5, 0.8); -min(-2.2, -2.2); -min(-0.5, -0.8)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.2, -0.5, 2.2, 0.8]]))
    loss.sum().backward()
    # clipped tokens (1st: high, 4th: low) get no gradient; others d(-A r)/dlogp = -A r
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5, 2.2, 0.0]]))
    assert metrics["clip_frac_high"].item() == pytest.approx(0.25)
    assert metrics["clip_frac_low"].item() == pytest.approx(0.25)
    assert metrics["clip_frac"].item() == pytest.approx(0.5)


def test_clip_higher_dapo() -> None:
    logp = torch.tensor([[LN(1.25), LN(1.5), LN(0.7)]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, m = POLICY_LOSSES.get("clip")(
        logp, torch.zeros(1, 3), adv, torch.ones(1, 3), eps_low=0.2, eps_high=0.28
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28, 0.8]]))
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3)


def test_clip_metrics_ignore_padding() -> None:
    logp = torch.tensor([[LN(2.0), LN(2.0)]])
    loss, m = POLICY_LOSSES.get("clip")(
        logp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1, 0]])
    )
    assert m["clip_frac_high"].item() == 1.0


def test_dual_clip_caps_negative_advantage_tokens() -> None:
    logp = leaf([[LN(5.0), LN(2.0), LN(5.0)]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, m = POLICY_LOSSES.get("dual_clip")(logp, torch.zeros(1, 3), adv, torch.ones(1, 3))
    # ratio 5 > c = 3 with A < 0: capped at 3 |A|, no gradient; ratio 2 < c: |A| * 2;
    # a positive advantage is untouched by the dual clip (clipped at 1.2 as usual)
    torch.testing.assert_close(loss.detach(), torch.tensor([[3.0, 2.0, -1.2]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 2.0, 0.0]]))
    assert m["dual_clip_frac"].item() == pytest.approx(1 / 3)
    same, _ = POLICY_LOSSES.get("clip")(
        logp.detach(), torch.zeros(1, 3), adv, torch.ones(1, 3), dual_clip_c=3.0
    )
    torch.testing.assert_close(same, loss.detach())


def test_dual_clip_c_must_exceed_one() -> None:
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        POLICY_LOSSES.get("clip")(
            torch.zeros(1, 1),
            torch.zeros(1, 1),
            -torch.ones(1, 1),
            torch.ones(1, 1),
            dual_clip_c=1.0,
        )


def test_huge_log_ratio_stays_finite() -> None:
    loss, _ = POLICY_LOSSES.get("clip")(
        torch.tensor([[500.0]]), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1)
    )
    assert torch.isfinite(loss).all()


def test_gspo_sequence_ratio_hand_values() -> None:
    # log ratios 0.1, 0.3 (padding 5.0 ignored): s = exp(0.2) = 1.2214
    logp = leaf([[0.1, 0.3, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    loss, m = POLICY_LOSSES.get("gspo")(logp, torch.zeros(2, 3), adv, mask)
    s = math.exp(0.2)
    torch.testing.assert_close(loss[0, :2].detach(), torch.tensor([s, s]))
    torch.testing.assert_close(loss[1].detach(), torch.tensor([-1.0, -1.0, -1.0]))
    AGGREGATIONS.get("seq_mean_token_mean")(loss, mask).backward()
    # d/dlogp_t of mean_i(-A_i s_i) = |A| s / |o| / N for the unclipped row 0 (A < 0)
    torch.testing.assert_close(logp.grad[0], torch.tensor([s / 4, s / 4, 0.0]))
    assert m["clip_frac_low"].item() == 0.0  # A < 0 and s > 1: the clip does not bind


def test_gspo_matches_the_sequence_objective_gradient() -> None:
    torch.manual_seed(0)
    logp = (0.05 * torch.randn(3, 5)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv_seq = torch.tensor([1.0, -0.5, 2.0])
    loss, _ = POLICY_LOSSES.get("gspo")(
        logp, torch.zeros(3, 5), adv_seq[:, None] * mask, mask, eps_low=0.01, eps_high=0.02
    )
    ours = AGGREGATIONS.get("seq_mean_token_mean")(loss, mask)
    (g_ours,) = torch.autograd.grad(ours, logp)
    # GSPO as written in the paper: a clipped objective over sequences with s_i(theta)
    s = torch.exp((logp * mask).sum(-1) / mask.sum(-1))
    paper = -torch.minimum(s * adv_seq, s.clamp(0.99, 1.02) * adv_seq).mean()
    (g_paper,) = torch.autograd.grad(paper, logp)
    torch.testing.assert_close(ours, paper)
    torch.testing.assert_close(g_ours, g_paper)


def test_pg_is_minus_advantage_times_logp() -> None:
    logp = leaf([[-1.0, -2.0]])
    adv = torch.tensor([[1.0, -0.5]])
    loss, m = POLICY_LOSSES.get("pg")(logp, torch.zeros(1, 2), adv, torch.ones(1, 2))
    torch.testing.assert_close(loss.detach(), torch.tensor([[1.0, -1.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)
    assert "approx_kl" in m


def test_pg_gradient_equals_clip_gradient_on_policy() -> None:
    logp = leaf([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -0.5, 2.0]])
    mask = torch.tensor([[1, 1, 0]])
    grads = []
    for name in ("pg", "clip"):
        loss, _ = POLICY_LOSSES.get(name)(logp, logp.detach(), adv, mask)
        (g,) = torch.autograd.grad(AGGREGATIONS.get("token_mean")(loss, mask), logp)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])


def test_value_loss_clipped_and_plain() -> None:
    values = leaf([[1.0, 0.3, 2.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    # token 0: max(0, (0.2 - 1)^2) = 0.64; token 1: max(0.49, 0.64) = 0.64 (clipped to 0.2)
    torch.testing.assert_close(loss[0, :2].detach(), torch.tensor([0.32, 0.32]))
    assert m["vf_clip_frac"].item() == 1.0
    plain, _ = value_loss(values, old, returns, torch.ones(1, 3), clip_range=None)
    torch.testing.assert_close(plain.detach(), torch.tensor([[0.0, 0.245, 2.0]]))


@pytest.mark.parametrize("name", ["clip", "dual_clip", "gspo", "cispo", "pg"])
def test_every_loss_keeps_the_contract(name: str) -> None:
    torch.manual_seed(1)
    logp = (-torch.rand(4, 6)).requires_grad_(True)
    mask = (torch.arange(6) < torch.tensor([[6], [3], [1], [0]])).long()
    loss, metrics = POLICY_LOSSES.get(name)(logp, logp.detach() - 0.1, torch.randn(4, 6), mask)
    assert loss.shape == (4, 6)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    assert "approx_kl" in metrics
    AGGREGATIONS.get("token_mean")(loss, mask).backward()
    assert torch.isfinite(logp.grad).all()


def test_cispo_keeps_the_gradient_of_clipped_tokens() -> None:
    """Ratios 2 and 0.5 with A = +1 / -1: PPO's clip zeroes both tokens' gradients, CISPO scales
    them by the clipped weight: d/dlogp of -sg[w] * A * logp = -w * A (w = 1.2 and 0.8)."""
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    for name, expected in [("clip", [0.0, 0.0]), ("cispo", [-1.2, 0.8])]:
        logp = torch.log(torch.tensor([[2.0, 0.5]])).requires_grad_(True)
        loss, _ = POLICY_LOSSES.get(name)(logp, old, adv, torch.ones(1, 2))
        loss.sum().backward()
        assert logp.grad[0].tolist() == pytest.approx(expected, abs=1e-6), name

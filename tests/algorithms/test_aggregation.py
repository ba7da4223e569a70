"""Loss aggregations: hand values, padding, and exact gradient accumulation with global counts."""

import pytest
import torch

from r1lab.algorithms import AGGREGATIONS, masked_mean

LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [0.5, 0.5, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])  # the 9s are padding


@pytest.mark.parametrize(
    ("name", "opts", "expected"),
    [
        ("token_mean", {}, 11.0 / 6),  # (6 + 4 + 1) / 6 tokens
        ("seq_mean_token_mean", {}, (2.0 + 4.0 + 0.5) / 3),
        ("seq_mean_token_sum", {}, 11.0 / 3),
        ("seq_mean_token_sum_norm", {"norm_len": 8}, 11.0 / (3 * 8)),
        ("seq_mean_token_sum_norm", {}, 11.0 / (3 * 4)),  # defaults to the padded length T
        ("token_mean", {"num_tokens": 22}, 0.5),
        ("seq_mean_token_mean", {"num_seqs": 13}, 6.5 / 13),
        ("seq_mean_token_sum", {"num_seqs": 11}, 1.0),
        ("seq_mean_token_sum_norm", {"num_seqs": 11, "norm_len": 2}, 0.5),
    ],
)
def test_hand_values(name: str, opts: dict, expected: float) -> None:
    assert AGGREGATIONS.get(name)(LOSS, MASK, **opts).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_empty_rows_and_empty_batches_give_no_nan(name: str) -> None:
    mask = torch.tensor([[1, 0], [0, 0]])
    loss = torch.tensor([[2.0, float("nan")], [5.0, 5.0]]).nan_to_num(7.0)
    assert torch.isfinite(AGGREGATIONS.get(name)(loss, mask))
    assert AGGREGATIONS.get(name)(loss, torch.zeros(2, 2)).item() == 0.0


@pytest.mark.parametrize(
    ("name", "opts"),
    [("token_mean", {}), ("seq_mean_token_mean", {}), ("seq_mean_token_sum", {}),
     ("seq_mean_token_sum_norm", {"norm_len": 4})],
)  # fmt: skip
def test_micro_batches_with_global_counts_sum_to_the_full_batch(name: str, opts: dict) -> None:
    torch.manual_seed(0)
    weights = torch.randn(6, 4, requires_grad=True)
    mask = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    )
    agg = AGGREGATIONS.get(name)
    full = agg(weights.square(), mask, **opts)
    (g_full,) = torch.autograd.grad(full, weights)
    counts = {"num_tokens": mask.sum(), "num_seqs": mask.shape[0]}
    # uneven micro-batches (4 + 2 rows), as the last one of an epoch can be
    parts = [
        agg(weights[rows].square(), mask[rows], **counts, **opts)
        for rows in (slice(0, 4), slice(4, 6))
    ]
    total = sum(parts)
    (g_acc,) = torch.autograd.grad(total, weights)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_acc, g_full)


def test_masked_mean_over_a_dim() -> None:
    out = masked_mean(LOSS, MASK, dim=-1)
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0, 0.5]))

"""One registry per kind: duplicates refused, unknown names list the valid ones."""

import pytest

from r1lab.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from r1lab.registry import UnknownComponentError

EXPECTED = {
    "advantage_estimator": (
        ADVANTAGES,
        {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae",
         "normalize_then_sum"},
    ),
    "policy_loss": (POLICY_LOSSES, {"clip", "dual_clip", "gspo", "cispo", "pg"}),
    "loss_aggregation": (
        AGGREGATIONS,
        {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"},
    ),
    "kl_estimator": (KL_ESTIMATORS, {"k1", "k2", "k3"}),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_registered_names(kind: str) -> None:
    registry, names = EXPECTED[kind]
    assert registry.kind == kind
    assert names <= set(registry.names())


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_duplicate_name_is_refused(kind: str) -> None:
    registry, names = EXPECTED[kind]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(sorted(names)[0])(lambda *a, **k: None)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_unknown_name_lists_valid_names(kind: str) -> None:
    registry, names = EXPECTED[kind]
    with pytest.raises(UnknownComponentError) as err:
        registry.get("no_such_thing")
    assert all(name in str(err.value) for name in names)

"""pass@k and majority voting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

    pass@k = 1 - C(n - c, k) / C(n, k): the chance that k samples drawn without replacement
    from the n contain at least one correct one.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 4)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(4, 0, 3), pass_at_k(4, 2, 3)
    (0.0, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """cons@k: is the most frequent extracted answer a correct one? Missing answers do not vote.

    Ties go to the answer seen first, so the result does not depend on hash order.

    >>> majority_vote(["4", "5", "4", None], [True, False, True, False])
    True
    >>> majority_vote([None, None], [False, False])
    False
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct) if a == winner)

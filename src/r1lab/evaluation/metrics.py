"""pass@k, majority voting, bootstrap confidence intervals and n-gram contamination."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
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


def bootstrap_ci(scores: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem `scores` (problems resampled with
    replacement, `resamples` times, seeded), as evaluation harnesses report pass@1 intervals.

    With scores (0, 0, 0, 1) the resampled mean is Binomial(4, 1/4) / 4: P(0) = 0.316,
    P(0.25) = 0.422, P(0.5) = 0.211, P(0.75) = 0.047, P(1) = 0.004, so the 2.5% point is 0 and
    the 97.5% point 0.75 (the cumulative passes 0.975 there: 0.949 -> 0.996).

    >>> bootstrap_ci([0, 0, 0, 1], resamples=5000)
    (0.0, 0.75)
    >>> bootstrap_ci([0.5, 0.5, 0.5])
    (0.5, 0.5)
    """
    if not scores:
        raise ValueError("bootstrap_ci needs at least one score")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    lo = means[min(resamples - 1, int(tail * resamples))]
    hi = means[min(resamples - 1, int((1 - tail) * resamples))]
    return round(lo, 12), round(hi, 12)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text` (a text shorter than n words is one gram).

    >>> sorted(ngrams("What is 2 + 3?", 4))
    [('is', '2', '+', '3?'), ('what', 'is', '2', '+')]
    """
    words = text.lower().split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contamination(train_prompts: Iterable[str], eval_prompts: Sequence[str], n: int = 13) -> dict:
    """Which evaluation prompts share a word n-gram with a training prompt (the n-gram overlap
    check of GPT-3 / Llama reports; 13 words by default). A prompt shorter than n words counts
    when all of it appears among a training prompt's words in order.

    >>> contamination(["the cat sat on the mat today"], ["a cat sat on the mat", "dogs bark"], n=4)
    {'n': 4, 'problems': 2, 'contaminated': 1, 'rate': 0.5, 'examples': [0]}
    """
    train = [" ".join(p.lower().split()) for p in train_prompts]
    grams: set[tuple[str, ...]] = set()
    for p in train:
        grams |= ngrams(p, n)
    hits = []
    for i, prompt in enumerate(eval_prompts):
        words = prompt.lower().split()
        if len(words) < n:
            joined = " ".join(words)
            found = bool(words) and any(f" {joined} " in f" {t} " for t in train)
        else:
            found = not grams.isdisjoint(ngrams(prompt, n))
        if found:
            hits.append(i)
    total = len(eval_prompts)
    return {"n": n, "problems": total, "contaminated": len(hits),
            "rate": len(hits) / total if total else 0.0, "examples": hits[:10]}

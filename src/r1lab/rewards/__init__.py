"""Rewards: the teacher in R1. One module per family, all registered in `REWARDS`.

    from r1lab.rewards import REWARDS, Score, RewardComposer, RewardBatch

Every reward is `fn(completion: str, row: dict, **kwargs) -> Score`; a name of the form
`package.module:function` loads a user function with that signature.
"""

from r1lab.rewards import code, format, judge, language, length, math, model, reflection  # noqa: F401  (registers)
from r1lab.rewards.base import REWARDS, Score, get_reward, load_user_function
from r1lab.rewards.compose import RewardBatch, RewardComposer

__all__ = ["REWARDS", "RewardBatch", "RewardComposer", "Score", "get_reward", "load_user_function"]

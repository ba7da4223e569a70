"""Rewards: the teacher in R1. One module per family, all registered in `REWARDS`.

from r1lab.rewards import REWARDS, Score, RewardComposer, RewardBatch
"""

from r1lab.rewards import code as _code  # noqa: F401  (registers "code")
from r1lab.rewards import math as _math  # noqa: F401  (registers "accuracy")
from r1lab.rewards.base import REWARDS, Score, get_reward, load_user_function

__all__ = ["REWARDS", "Score", "get_reward", "load_user_function"]

"""Reward functions: built-in rule checkers, a custom function by Python path, a remote HTTP
reward. `make_reward(spec)` gives one async callable `(prompt, response, label) -> float`;
whatever goes wrong inside it is raised as RewardError with a message naming the cause.
"""

from rlpost_rollout.rewards.base import RewardError, RewardFn, make_reward

__all__ = ["RewardError", "RewardFn", "make_reward"]

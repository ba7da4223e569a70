"""r1lab: reasoning trained into causal language models by RL with rule-based rewards (DeepSeek-R1)."""

__version__ = "0.1.0"

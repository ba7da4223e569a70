"""Policy and reference models: any local Hugging Face causal LM, or the tiny from-scratch one."""

from r1lab.models.loading import load_policy, load_reference, pick_device

__all__ = ["load_policy", "load_reference", "pick_device"]

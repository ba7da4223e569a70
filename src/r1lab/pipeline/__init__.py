"""Recipes: R1-Zero (the demo), and later R1's four stages and distillation, as sequences of stages."""

"""Prompt and SFT data: synthetic task generators, file loaders with line-numbered errors, templates."""

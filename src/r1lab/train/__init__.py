"""Training loops: one SFT loop and one GRPO loop; recipes are sequences of these."""

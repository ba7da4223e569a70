"""Shared fixtures: tiny models built locally (nothing is downloaded)."""

from __future__ import annotations

import os

# nothing in the tests may reach a model or data hub: fail loudly instead of downloading
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from r1lab.config import TinyModelConfig  # noqa: E402
from r1lab.models.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402

MICRO = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                        intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture()
def micro_tiny() -> TinyModelConfig:
    """The smallest model config worth testing with (~30k parameters)."""
    return MICRO


@pytest.fixture()
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture()
def micro_model(tokenizer):
    return build_tiny_model(MICRO, tokenizer, seed=0)

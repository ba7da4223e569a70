"""Fixtures for the training tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)

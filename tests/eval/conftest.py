"""Shared fixtures of the eval tests: the offline byte tokenizer and the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from sparsetune.models.tiny import byte_tokenizer, tiny_preset


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(2)
    return tiny_preset("llama", random_biases=False)

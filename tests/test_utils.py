"""Seeding, device choice, argument checks and model cloning."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

import companion as cp
from companion.utils import (
    check_in_range,
    check_positive_int,
    clone_model,
    get_device,
    seed_everything,
)


def test_seed_everything_repeats_every_generator():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002 (the legacy global generator is what is seeded)
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002 (the legacy global generator is what is seeded)
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize(
    "bad, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_seed_everything_rejects_bad_seeds(bad, error):
    with pytest.raises(error, match="seed"):
        seed_everything(bad)


def test_get_device_follows_cuda_availability(monkeypatch):
    assert cp.get_device is get_device  # the name every notebook calls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")
    assert get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda"):
        get_device("cuda")
    with pytest.raises(ValueError, match="prefer"):
        get_device("tpu")


def test_check_helpers():
    assert check_in_range("x", 1, 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"x must be in \(0, 1\], got 0.0"):
        check_in_range("x", 0.0, 0, 1, low_inclusive=False)
    with pytest.raises(ValueError, match="x must be in"):
        check_in_range("x", float("nan"), 0, 1)
    with pytest.raises(TypeError, match="x must be a real number"):
        check_in_range("x", "0.5", 0, 1)
    assert check_positive_int("n", 3) == 3
    assert check_positive_int("n", 0, allow_zero=True) == 0
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        check_positive_int("n", 0)
    with pytest.raises(TypeError, match="n must be an int"):
        check_positive_int("n", 2.0)


def test_clone_model_copies_a_pruned_model_independently():
    layer = torch.nn.Linear(6, 3)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    twin = clone_model(layer)
    assert torch.equal(twin.weight, layer.weight)
    with torch.no_grad():
        twin.weight_orig.add_(1.0)
    assert not torch.equal(twin.weight_orig, layer.weight_orig)
    # The clone's own hook computes its output: (weight_orig + 1) * mask adds x @ mask.T.
    x = torch.rand(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(twin(x) - layer(x), x @ layer.weight_mask.T)
    assert torch.equal(twin.weight_mask, layer.weight_mask)
    with pytest.raises(TypeError, match="model"):
        clone_model("model")

"""Shared fixtures: real MNIST (provisioned by `make data`) and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import companion as cp

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("COMPANION_DATA", str(REPO / "data"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mnist() -> tuple[TensorDataset, TensorDataset]:
    """The real MNIST split on the CPU; fails with the fetch command if it is missing."""
    return cp.load_mnist()


@pytest.fixture(scope="session")
def mnist_small(mnist) -> tuple[TensorDataset, TensorDataset]:
    """The first 6,000 training and 1,000 test images: enough to train in a second."""
    train, test = mnist
    return (
        TensorDataset(*(t[:6000] for t in train.tensors)),
        TensorDataset(*(t[:1000] for t in test.tensors)),
    )


@pytest.fixture
def toy_data() -> TensorDataset:
    """A linearly separable 2-class problem with 8 features (CPU, seeded)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)

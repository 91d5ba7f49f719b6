"""Shared fixtures: real MNIST (provisioned by `make data`), small synthetic data, devices."""

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


@pytest.fixture(autouse=True)
def _book_seeds(monkeypatch) -> None:
    """Unit tests use the book's own seeds, whatever COMPANION_SEED_BASE the shell sets."""
    monkeypatch.delenv(cp.utils.SEED_BASE_ENV, raising=False)


@pytest.fixture(scope="session")
def mnist() -> tuple[TensorDataset, TensorDataset]:
    """The real MNIST split on the CPU; fails with the fetch command if it is missing."""
    return cp.load_mnist()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ]
)
def device(request) -> str:
    """A test that takes ``device`` runs on the CPU, and on CUDA too (skipped without a GPU)."""
    return request.param


@pytest.fixture
def toy_data() -> TensorDataset:
    """A linearly separable 2-class problem with 8 features (CPU, seeded)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)

"""Measuring a model never changes it: parameters, buffers (BatchNorm statistics) and mode stay as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion import metrics


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 28 * 28, 10),
    )


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, before) -> None:
    state, modes = before
    now = model.state_dict()
    assert state.keys() == now.keys()
    for key, value in state.items():
        assert torch.equal(value, now[key]), f"{key} changed"
    assert [m.training for m in model.modules()] == modes


MEASUREMENTS = {
    "flops": lambda m: metrics.flops(m, batch_size=8),
    "latency": lambda m: metrics.latency(m, 8, min_run_time=0.01, warmup=1),
    "latencies": lambda m: metrics.latencies({"m": m}, 8, min_run_time=0.01, rounds=1),
    "latency_by_batch": lambda m: metrics.latency_by_batch({"m": m}, [2], min_run_time=0.01),
    "compare_models": lambda m: metrics.compare_models(
        {"m": m},
        TensorDataset(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))),
        batch_size=8,
        min_run_time=0.01,
    ),
}


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_measurement_leaves_batchnorm_and_mode_bit_identical(name, training):
    model = small_cnn().train(training)
    if training:  # give the running statistics non-default values first
        with torch.no_grad():
            model(torch.rand(8, 1, 28, 28))
    before = snapshot(model)
    MEASUREMENTS[name](model)
    assert_unchanged(model, before)


def test_flops_counts_the_same_in_either_mode():
    model = small_cnn()
    assert metrics.flops(model.train()) == metrics.flops(model.eval())
